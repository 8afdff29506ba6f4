"""LoRA via peft: target modules (names or all-linear), base weights bit-identical after training."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forgetless.api.schema import ModelSpec, parse_job  # noqa: E402
from forgetless_trainer.mitigations.base import TrainContext  # noqa: E402
from forgetless_trainer.methods.full import Full  # noqa: E402
from forgetless_trainer.methods.lora import Lora  # noqa: E402
from forgetless_trainer.modeling import load_model_and_tokenizer  # noqa: E402
from forgetless.errors import StageError  # noqa: E402


def ctx(manifest, **method) -> TrainContext:
    return TrainContext(job=parse_job(manifest(spec={"method": {"type": "lora", **method}})), workdir=None)


def base_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_trains_only_adapters_and_base_weights_stay_identical(tiny_model_dir, manifest):
    torch.manual_seed(0)
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    before = base_state(model)
    lora = Lora()
    wrapped = lora.configure_model(model, ctx(manifest, lora={"r": 2, "targetModules": ["q_proj", "v_proj"]}))
    trainable = [n for n, p in wrapped.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(4, 40, (4, 10))
    wrapped.train()
    for _ in range(5):
        opt.zero_grad()
        wrapped(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    after = {k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in wrapped.state_dict().items() if "lora_" not in k}
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)  # bit-identical
    assert any(torch.count_nonzero(p) for n, p in wrapped.named_parameters() if "lora_B" in n)  # the adapter learned
    assert lora.summary()["trainableParameters"] == sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad)


def test_all_linear_adapts_every_linear_layer_but_the_head(tiny_model_dir, manifest):
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    wrapped = Lora().configure_model(model, ctx(manifest))
    adapted = {n.split(".")[-4] for n, p in wrapped.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_bad_target_modules_fail_clearly(tiny_model_dir, manifest):
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    with pytest.raises(StageError, match=r"method.lora.targetModules \['nonexistent'\].*q_proj"):
        Lora().configure_model(model, ctx(manifest, lora={"targetModules": ["nonexistent"]}))
    with pytest.raises(ValueError, match="cannot be combined"):  # refused by the schema, before any stage runs
        ctx(manifest, lora={"targetModules": ["all-linear", "q_proj"]})


def test_full_trains_everything(tiny_model_dir, manifest):
    model, _ = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    for p in model.parameters():
        p.requires_grad_(False)
    Full().configure_model(model, ctx(manifest))
    assert all(p.requires_grad for p in model.parameters())
