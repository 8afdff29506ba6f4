"""Self-distillation: the KL term is 0 for the untouched base and grows as the model moves from it, only the
general rows' answer tokens count, the base comes from the disabled adapter (LoRA) or a frozen copy (full),
gradients reach only what trains, and the spec refuses what it cannot work with, naming the field."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forgetless.api.schema import ModelSpec, parse_job  # noqa: E402
from forgetless_trainer.methods.full import Full  # noqa: E402
from forgetless_trainer.methods.lora import Lora  # noqa: E402
from forgetless_trainer.mitigations import build  # noqa: E402
from forgetless_trainer.mitigations.base import TrainContext  # noqa: E402
from forgetless_trainer.mitigations.self_distillation import SelfDistillation, answer_kl  # noqa: E402
from forgetless_trainer.modeling import load_model_and_tokenizer  # noqa: E402


def test_answer_kl_counts_only_labelled_positions_and_is_zero_for_equal_logits():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    assert float(answer_kl(base, base.clone(), labels)) == pytest.approx(0.0, abs=1e-7)
    moved = base.clone()
    moved[0, 0] += 5.0  # position 0 predicts token 1, which is a prompt token: not counted
    assert float(answer_kl(base, moved, labels)) == pytest.approx(0.0, abs=1e-7)
    moved[0, 2] += torch.randn(7, generator=g) * 3  # predicts labels[0, 3]: counted
    lp0, lp = torch.log_softmax(base[0, 2], -1), torch.log_softmax(moved[0, 2], -1)
    expected = float((lp0.exp() * (lp0 - lp)).sum()) / 5  # 5 labelled next-token positions in all (3 + 2)
    assert float(answer_kl(base, moved, labels)) == pytest.approx(expected, rel=1e-5)


def batch(general: list[bool]) -> dict:
    ids = torch.randint(4, 40, (len(general), 9), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "general": torch.tensor(general)}


def job(manifest, method: dict):
    return parse_job(manifest(spec={"method": method, "mitigation": {"selfDistillation": {"weight": 2.0}}}))


def test_lora_base_is_the_disabled_adapter_and_only_the_adapter_gets_gradients(tiny_model_dir, manifest):
    torch.manual_seed(0)
    ftj = job(manifest, {"type": "lora", "lora": {"r": 2, "targetModules": ["q_proj", "v_proj"]}})
    (mitigation,) = [m for m in build(ftj.spec) if m.name == "self_distillation"]
    assert mitigation.weight == 2.0 and mitigation.wants_sources
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    ctx = TrainContext(job=ftj, workdir=None)
    model = mitigation.configure_model(Lora().configure_model(model, ctx), ctx)
    assert mitigation.reference is None  # nothing stored: the adapter is switched off for the base
    model.train()
    rows = batch([True, False, True])
    fresh = mitigation.batch_loss_term(model, rows, model(input_ids=rows["input_ids"]).logits)
    assert float(fresh.detach()) == pytest.approx(0.0, abs=1e-6)  # LoRA starts at B = 0: the model is its base
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    term = mitigation.batch_loss_term(model, rows, model(input_ids=rows["input_ids"]).logits)
    assert float(term) > 1e-4 and model.training  # the reference forward left training mode on
    term.backward()
    graded = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert graded and all("lora_" in n for n in graded)
    assert mitigation.batch_loss_term(model, batch([False, False, False]), None) is None  # no general rows
    assert mitigation.summary()["selfDistillation"]["batches"] == 2


def test_full_fine_tuning_distils_from_a_frozen_copy(tiny_model_dir, manifest):
    torch.manual_seed(0)
    ftj = job(manifest, {"type": "full"})
    mitigation = SelfDistillation(1.0)
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    ctx = TrainContext(job=ftj, workdir=None)
    model = mitigation.configure_model(Full().configure_model(model, ctx), ctx)
    assert mitigation.reference is not None
    assert not any(p.requires_grad for p in mitigation.reference.parameters())
    rows = batch([True, True])
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.add_(torch.randn_like(p) * 0.3)
    term = mitigation.batch_loss_term(model, rows, model(input_ids=rows["input_ids"]).logits)
    assert float(term) > 1e-4
    term.backward()
    assert all(p.grad is None for p in mitigation.reference.parameters())  # the base stays where it was


def test_the_spec_refuses_distillation_without_general_rows_or_with_packing(manifest):
    with pytest.raises(ValueError, match=r"selfDistillation.*dataMixing.generalFraction above 0"):
        parse_job(manifest(spec={"mitigation": {"dataMixing": {"generalFraction": 0.0}, "selfDistillation": {}}}))
    with pytest.raises(ValueError, match=r"mitigation.selfDistillation needs training.packing: false"):
        parse_job(manifest(spec={"mitigation": {"selfDistillation": {}}, "training": {"packing": True}}))
    with pytest.raises(ValueError, match="weight"):
        parse_job(manifest(spec={"mitigation": {"selfDistillation": {"weight": 0}}}))
