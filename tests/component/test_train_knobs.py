"""Memory and speed knobs of spec.training on CPU: packing (no cross-example attention: the per-example
loss of a packed batch equals the unpacked one), gradient checkpointing, the attention kernel and
the load dtype."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from forgetless_trainer import chat  # noqa: E402
from forgetless_trainer import data as D  # noqa: E402
from forgetless_trainer.stages import StageError  # noqa: E402
from forgetless_trainer.training import knobs  # noqa: E402
from forgetless_trainer.training.packing import pack, pack_rows  # noqa: E402
from forgetless_trainer.training.loop import train  # noqa: E402
from tests.component.test_families import family_job  # noqa: E402
from tests.component.test_train_stage import make_job, trainable  # noqa: E402

EXAMPLES = [
    D.Example("reverse alpha beta gamma", "gamma beta alpha"),
    D.Example("copy delta", "delta"),
    D.Example("", "the quick brown fox jumps over the lazy dog", "text"),
    D.Example("what is the capital of france ?", "paris"),
    D.Example("sort one two three four five", "five four one three two"),
]


def per_example_nll(model, batch, packed: bool, encoded):
    """[(sum of NLL over the example's labelled tokens, count)] in EXAMPLES order."""
    with torch.no_grad():
        if packed:
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        else:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    nll, mask = D.token_nll(logits, batch["labels"])
    if not packed:
        return [(float((nll[i] * mask[i]).sum()), int(mask[i].sum())) for i in range(len(encoded))]
    rows = pack_rows([len(ids) for ids, _ in encoded], 10**9)
    assert len(rows) == 1
    out, at = [], 0
    for ids, _ in encoded:  # the row's next-token targets of this example: positions at .. at+len-2
        seg_nll, seg_mask = nll[0, at : at + len(ids) - 1], mask[0, at : at + len(ids) - 1]
        out.append((float((seg_nll * seg_mask).sum()), int(seg_mask.sum())))
        at += len(ids)
    return out


@pytest.mark.parametrize("name, attention", [("llama", "sdpa"), ("llama", "eager"), ("gemma2", "eager"), ("qwen2", "sdpa")])
def test_packed_loss_equals_unpacked_loss_per_example(family_model, name, attention):
    from transformers import AutoModelForCausalLM

    from forgetless_trainer.modeling import load_tokenizer

    path = family_model(name)
    tokenizer = load_tokenizer(str(path))
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    encoder = D.Encoder(tokenizer, 512, chat=chat.ChatFormat(tokenizer, chat.resolve_template(tokenizer)))
    encoded = [encoder.encode(e) for e in EXAMPLES]
    packed = pack(encoded, 512, encoder.pad_id)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    assert int(packed["num_tokens"]) == sum(len(ids) for ids, _ in encoded)
    unpacked = per_example_nll(model, encoder.batch(EXAMPLES), False, encoded)
    got = per_example_nll(model, packed, True, encoded)
    for (a, n), (b, m) in zip(unpacked, got):
        assert n == m and n > 0
        assert b == pytest.approx(a, rel=1e-4, abs=1e-4)
    # without the position reset the examples would see each other: the loss differs (the test can fail)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).unsqueeze(0))
    leaked = [a for a, _ in per_example_nll(model, leaky, True, encoded)[1:]]
    assert leaked != pytest.approx([a for a, _ in unpacked[1:]], rel=1e-4, abs=1e-4)


def test_pack_rows_first_fit_never_splits_and_respects_the_row_length():
    assert pack_rows([5, 3, 4, 2, 6], 8) == [[0, 1], [2, 3], [4]]
    assert all(sum(x) <= 8 for x in ([5, 3], [4, 2], [6]))


def test_packing_trains_the_same_examples_with_the_same_first_loss(tmp_path, manifest, tiny_model_dir):
    spec = {"method": {"type": "full"}, "deepspeed": {"zeroStage": 0}, "training": {"maxSteps": 1, "batchSize": 8}}
    plain = train(make_job(manifest, tiny_model_dir, tmp_path / "data", **spec), tmp_path / "plain")
    spec["training"]["packing"] = True
    packed = train(make_job(manifest, tiny_model_dir, tmp_path / "data", **spec), tmp_path / "packed")
    assert packed.summary["finalLoss"] == pytest.approx(plain.summary["finalLoss"], rel=1e-5)
    a, b = trainable(plain.model), trainable(packed.model)
    assert all(torch.allclose(a[n], b[n], atol=1e-5) for n in a)


def test_gradient_checkpointing_with_lora_gives_the_same_weights(tmp_path, manifest, family_model):
    spec = {"deepspeed": {"zeroStage": 2}, "training": {"maxSteps": 2}}
    plain = train(family_job(manifest, family_model("llama"), tmp_path / "data", **spec), tmp_path / "plain")
    spec["training"]["gradientCheckpointing"] = True
    checkpointed = train(family_job(manifest, family_model("llama"), tmp_path / "data", **spec), tmp_path / "ckpt")
    inner = checkpointed.model.get_base_model()
    assert inner.is_gradient_checkpointing and inner.config.use_cache is False
    a, b = trainable(plain.model), trainable(checkpointed.model)
    assert a.keys() == b.keys() and any(float(v.abs().sum()) for n, v in b.items() if "lora_B" in n)
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)


def test_attention_kernel_is_passed_and_eager_matches_sdpa(tmp_path, manifest, family_model):
    results = {}
    for attention in ("eager", "sdpa"):
        job = family_job(manifest, family_model("qwen2"), tmp_path / "data", deepspeed={"zeroStage": 0},
                         training={"maxSteps": 1, "attention": attention})
        result = train(job, tmp_path / attention)
        assert result.model.get_base_model().config._attn_implementation == attention
        results[attention] = result.summary["finalLoss"]
    assert results["eager"] == pytest.approx(results["sdpa"], rel=1e-4)


def test_attention_auto_and_flash_without_a_gpu():
    assert knobs.attention_implementation("auto") is None  # CPU: transformers' own choice (SDPA, else eager)
    assert knobs.attention_implementation("eager") == "eager"
    with pytest.raises(StageError, match="training.attention flash_attention_2 needs a CUDA GPU"):
        knobs.attention_implementation("flash_attention_2")


def test_precision_sets_the_load_dtype(tmp_path, manifest, tiny_model_dir, monkeypatch):
    assert knobs.load_dtype("bf16") == torch.bfloat16 and knobs.load_dtype("fp32") == torch.float32
    from forgetless_trainer import modeling

    seen = []
    real = modeling.load_model_and_tokenizer

    def spy(*args, **kwargs):
        model, tok = real(*args, **kwargs)
        seen.append(next(model.parameters()).dtype)
        return model, tok

    monkeypatch.setattr(modeling, "load_model_and_tokenizer", spy)
    train(make_job(manifest, tiny_model_dir, tmp_path / "data", training={"precision": "bf16", "maxSteps": 1}), tmp_path / "w")
    assert seen == [torch.bfloat16]


def test_bad_knob_values_are_rejected_by_the_schema_and_the_crd(manifest):
    import pydantic
    import yaml

    from forgetless.api.schema import parse_job
    from tests.conftest import REPO_ROOT

    with pytest.raises(pydantic.ValidationError, match="attention"):
        parse_job(manifest(spec={"training": {"attention": "flash"}}))
    with pytest.raises(pydantic.ValidationError, match="packing"):
        parse_job(manifest(spec={"training": {"packing": "sometimes"}}))
    crd = yaml.safe_load((REPO_ROOT / "crds" / "finetunejobs.forgetless.dev.yaml").read_text())
    training = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["training"]
    assert training["properties"]["attention"]["enum"] == ["auto", "flash_attention_2", "sdpa", "eager"]
    assert training["properties"]["gradientCheckpointing"]["type"] == "boolean"
    assert training["properties"]["packing"]["type"] == "boolean"


def test_self_distillation_runs_through_deepspeed_and_changes_what_is_learned(tmp_path, manifest, tiny_model_dir):
    spec = {"deepspeed": {"zeroStage": 2}, "training": {"maxSteps": 6, "learningRate": 5e-3},
            "mitigation": {"dataMixing": {"generalFraction": 0.5}}}
    plain = train(make_job(manifest, tiny_model_dir, tmp_path / "data", **spec), tmp_path / "plain")
    spec["mitigation"]["selfDistillation"] = {"weight": 5.0}
    distilled = train(make_job(manifest, tiny_model_dir, tmp_path / "data", **spec), tmp_path / "distilled")
    record = distilled.summary["selfDistillation"]
    assert record["weight"] == 5.0 and record["batches"] >= 6  # every step's batch had general rows
    assert record["meanKL"] > 0 and record["lastKL"] > 0  # the adapter moved the general answers
    assert "selfDistillation" not in plain.summary
    a, b = trainable(plain.model), trainable(distilled.model)
    assert a.keys() == b.keys()
    assert any(not torch.allclose(a[n], b[n], atol=1e-6) for n in a if "lora_B" in n)  # the term pulled back
