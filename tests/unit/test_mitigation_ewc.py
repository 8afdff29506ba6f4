"""EWC: the penalty and its gradient match λ/2·Σ F(θ−θ*)², batched Fisher (hooks and vmap) equals a per-sample loop,
a huge λ pins the weights to θ*, and online EWC accumulates F = γ·F_prev + F_new."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from forgetless.api.schema import parse_job  # noqa: E402
from forgetless_trainer import data as D  # noqa: E402
from forgetless_trainer.methods import method_for  # noqa: E402
from forgetless_trainer.mitigations.base import TrainContext  # noqa: E402
from forgetless_trainer.mitigations.ewc import Ewc, fisher_examples  # noqa: E402
from forgetless_trainer.mitigations.ewc_fisher import estimate_fisher, hook_plan, sequence_nll  # noqa: E402
from forgetless_trainer.mitigations.ewc_penalty import FlatState, ewc_penalty  # noqa: E402
from forgetless.errors import StageError  # noqa: E402


def toy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (4,), (2, 2, 2)]
    params = [torch.randn(s, generator=g, requires_grad=True) for s in shapes]
    fisher = [torch.rand(s, generator=g) for s in shapes]
    anchor = [torch.randn(s, generator=g) for s in shapes]
    return params, fisher, anchor


def test_penalty_value_and_gradient_match_the_formula():
    params, fisher, anchor = toy()
    lam = 3.7
    value = ewc_penalty(params, fisher, anchor, lam)
    value.backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    expected = lam / 2 * sum((f * (p - a) ** 2).sum() for p, f, a in zip(params, fisher, anchor))
    expected.backward()
    assert torch.allclose(value, expected, rtol=1e-6)
    for p, f, a, g in zip(params, fisher, anchor, ours):
        assert torch.allclose(g, p.grad, rtol=1e-6)
        assert torch.allclose(g, lam * f * (p.detach() - a), rtol=1e-6)


def test_penalty_is_zero_at_the_anchor_and_scales_with_upstream_gradient():
    params, fisher, anchor = toy(1)
    at_anchor = [a.clone().requires_grad_(True) for a in anchor]
    value = ewc_penalty(at_anchor, fisher, anchor, 100.0)
    value.backward()
    assert value.item() == 0.0 and all(torch.count_nonzero(p.grad) == 0 for p in at_anchor)
    (2.5 * ewc_penalty(params, fisher, anchor, 1.0)).backward()
    assert torch.allclose(params[0].grad, 2.5 * fisher[0] * (params[0].detach() - anchor[0]), rtol=1e-6)


def test_bf16_parameters_get_bf16_gradients_from_fp32_state():
    params, fisher, anchor = toy(2)
    low = [p.detach().bfloat16().requires_grad_(True) for p in params]
    ewc_penalty(low, fisher, anchor, 2.0).backward()
    assert all(p.grad.dtype == torch.bfloat16 for p in low)
    assert torch.allclose(low[1].grad.float(), 2.0 * fisher[1] * (low[1].detach().float() - anchor[1]), rtol=1e-2, atol=1e-2)


def test_flat_state_views_share_one_buffer():
    state = FlatState({"a": torch.ones(2, 3), "b": torch.full((4,), 2.0)})
    assert state.flat.shape == (10,)
    state.flat.mul_(3)
    assert torch.equal(state.views[0], torch.full((2, 3), 3.0)) and torch.equal(state.views[1], torch.full((4,), 6.0))
    assert set(state.as_dict()) == {"a", "b"}


def test_huge_lambda_keeps_weights_near_the_anchor():
    torch.manual_seed(0)

    def train(lam: float) -> float:
        model = torch.nn.Linear(4, 1)
        anchor = [p.detach().clone() for p in model.parameters()]
        fisher = [torch.ones_like(p) for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=5e-5)  # λ·lr < 1: plain gradient descent stays stable
        x = torch.randn(64, 4)
        y = x @ torch.tensor([[5.0], [-3.0], [2.0], [7.0]]) + 4.0  # far from the random init
        for _ in range(1500):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y) + ewc_penalty(list(model.parameters()), fisher, anchor, lam)
            loss.backward()
            opt.step()
        return max((p.detach() - a).abs().max().item() for p, a in zip(model.parameters(), anchor))

    assert train(0.0) > 0.5  # without EWC the weights move towards the task
    assert train(1e4) < 5e-3  # a huge λ pins them to θ* (equilibrium offset ≈ task gradient / λ)


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless.api.schema import ModelSpec

    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # B = 0 at init makes A's gradient 0: give B a value so every Fisher entry is tested
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model, tokenizer


def examples(n: int) -> list[D.Example]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [D.Example(" ".join(words[i % 7 : i % 7 + 2]), " ".join(words[i % 5 : i % 5 + 1 + i % 3])) for i in range(n)]


@pytest.fixture(scope="module")
def full_model(tiny_model_dir):
    """Every weight trainable: Linear layers, RMSNorms and the embedding tied to the LM head."""
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless.api.schema import ModelSpec

    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    with torch.no_grad():  # RMSNorm weights start at 1: move them so a wrong norm gradient shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model, tokenizer


def loop_fisher(model, samples, encoder):
    reference = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    model.eval()
    for example in samples:
        model.zero_grad()
        batch = encoder.batch([example])
        sequence_nll(model(input_ids=batch["input_ids"]).logits, batch["labels"])[0].backward()
        for n, p in model.named_parameters():
            if p.requires_grad:
                reference[n] += p.grad.detach() ** 2 / len(samples)
    model.zero_grad()
    return reference


@pytest.mark.parametrize("method", ["auto", "vmap"])
@pytest.mark.parametrize("which", ["lora", "full"])
def test_batched_fisher_equals_a_per_sample_loop(request, which, method):
    model, tokenizer = request.getfixturevalue(f"{which}_model")
    encoder = D.Encoder(tokenizer, 32)
    samples = examples(7)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert hook_plan(model, names) is not None  # "auto" takes the hook path on these models
    ours = estimate_fisher(model, samples, encoder, chunk_size=3, method=method)
    reference = loop_fisher(model, samples, encoder)
    assert set(ours) == set(reference) and len(ours) == (8 if which == "lora" else len(names))
    for n in ours:
        assert torch.allclose(ours[n], reference[n], rtol=1e-4, atol=1e-9), n
    assert all(ours[n].abs().sum() > 0 for n in ours)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names  # unfrozen again afterwards


def test_unsupported_parameters_fall_back_to_vmap(lora_model):
    model, _ = lora_model
    rotary = next(m for n, m in model.named_modules() if n.endswith("rotary_emb"))
    extra = torch.nn.Parameter(torch.zeros(3))
    rotary.register_parameter("extra", extra)
    try:
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        assert hook_plan(model, names) is None
    finally:
        del rotary._parameters["extra"]


def test_fisher_examples_are_a_seeded_choice():
    pool = examples(50)
    assert fisher_examples(pool, 10, 1) == fisher_examples(pool, 10, 1)
    assert fisher_examples(pool, 10, 1) != fisher_examples(pool, 10, 2)
    assert len(fisher_examples(pool, 500, 1)) == 50


def ewc_ctx(tmp_path: Path, tokenizer, manifest, ewc: dict, method: str = "lora") -> TrainContext:
    job = parse_job(manifest(metadata={"name": "second"}, spec={"method": {"type": method}, "mitigation": {"ewc": ewc}}))
    ctx = TrainContext(job=job, workdir=tmp_path / "second", tokenizer=tokenizer, encoder=D.Encoder(tokenizer, 32),
                       method=method_for(job.spec))
    ctx.general_loader = lambda: examples(12)
    return ctx


def test_online_ewc_accumulates_fisher_and_keeps_the_lora_anchor_at_init(tmp_path, lora_model, manifest):
    model, tokenizer = lora_model
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    prev_fisher = {n: torch.full_like(p, 2.0) for n, p in model.named_parameters() if p.requires_grad}
    prev_anchor = {n: torch.full_like(p, 9.0) for n, p in model.named_parameters() if p.requires_grad}
    (tmp_path / "first" / "train").mkdir(parents=True)
    torch.save({"fisher": prev_fisher, "anchor": prev_anchor, "method": "lora"}, tmp_path / "first" / "train" / "ewc_state.pt")

    fresh = Ewc()
    fresh.configure_model(model, ewc_ctx(tmp_path, tokenizer, manifest, {"fisherSamples": 12}))
    online = Ewc()
    ctx = ewc_ctx(tmp_path, tokenizer, manifest, {"fisherSamples": 12, "online": True, "decay": 0.5, "previous": {"fineTuneJob": "first"}})
    online.configure_model(model, ctx)
    new = fresh.fisher.as_dict()
    got = online.fisher.as_dict()
    for n in names:
        assert torch.allclose(got[n], 0.5 * prev_fisher[n] + new[n])
        assert torch.equal(online.anchor.as_dict()[n], dict(model.named_parameters())[n].detach())  # LoRA: init, not 9.0
    assert online.matched == len(names) and online.previous.endswith("first/train/ewc_state.pt")


def test_online_ewc_full_fine_tuning_anchors_at_the_previous_final_weights(tmp_path, tiny_model_dir, manifest):
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless.api.schema import ModelSpec

    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=str(tiny_model_dir)))
    for p in model.parameters():
        p.requires_grad_(True)
    prev = {n: torch.full_like(p, 0.25) for n, p in model.named_parameters()}
    path = tmp_path / "prev_state.pt"
    torch.save({"fisher": prev, "anchor": prev, "method": "full"}, path)
    ewc = Ewc()
    ctx = ewc_ctx(tmp_path, tokenizer, manifest, {"fisherSamples": 4, "online": True, "previous": {"path": str(path)}}, "full")
    ewc.configure_model(model, ctx)
    assert all(torch.equal(v, torch.full_like(v, 0.25)) for v in ewc.anchor.as_dict().values())


def test_bad_ewc_chains_fail_clearly(tmp_path, lora_model, manifest):
    model, tokenizer = lora_model
    with pytest.raises(ValueError, match="previous needs online: true"):  # refused by the schema now
        ewc_ctx(tmp_path, tokenizer, manifest, {"previous": {"fineTuneJob": "first"}})
    with pytest.raises(StageError, match=r"mitigation.ewc.previous: no ewc_state.pt for fineTuneJob 'missing'"):
        Ewc().configure_model(
            model, ewc_ctx(tmp_path, tokenizer, manifest, {"online": True, "previous": {"fineTuneJob": "missing"}})
        )
    other = tmp_path / "other.pt"
    torch.save({"fisher": {"x": torch.ones(1)}, "anchor": {}, "method": "full"}, other)
    with pytest.raises(StageError, match="shares no parameter"):
        Ewc().configure_model(model, ewc_ctx(tmp_path, tokenizer, manifest, {"online": True, "previous": {"path": str(other)}}))
