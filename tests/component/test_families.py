"""The model families people fine-tune (Llama 3, Qwen 2.5, Mistral, Gemma 2, Phi-3), as tiny random
models with their real chat templates (tests/support/tiny_models.py), through the real train stage:

- LoRA `all-linear` targets exactly the family's linear layers (lm_head excluded);
- full and LoRA training under ZeRO-2 on chat data (every family), ZeRO-0 with EWC (its Fisher covers
  every trainable parameter: Gemma's norms and soft-capped logits included) and ZeRO-3 full training
  whose saved model reloads with `from_pretrained` and generates (greedy) exactly like the trained
  weights gathered from the engine;
- a run interrupted after a checkpoint and resumed ends with the weights of an uninterrupted run.
Every family runs under ZeRO 0, 2 and 3.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from forgetless.api.schema import parse_job  # noqa: E402
from forgetless_trainer.training.loop import train  # noqa: E402
from tests.component.test_train_stage import WORDS, trainable  # noqa: E402
from tests.support.tiny_models import FAMILIES  # noqa: E402

NAMES = sorted(FAMILIES)


def write_chat_data(folder: Path, n: int = 24) -> tuple[Path, Path]:
    """Task: two-turn chats (reverse, then copy); general: instruction records (copy)."""
    rng = random.Random(0)
    folder.mkdir(parents=True, exist_ok=True)
    task, general = folder / "task.jsonl", folder / "general.jsonl"
    with task.open("w") as out:
        for _ in range(n):
            a, b = rng.sample(WORDS, 2), rng.sample(WORDS, 2)
            out.write(json.dumps({"messages": [
                {"role": "user", "content": "reverse " + " ".join(a)}, {"role": "assistant", "content": " ".join(a[::-1])},
                {"role": "user", "content": "copy " + " ".join(b)}, {"role": "assistant", "content": " ".join(b)},
            ]}) + "\n")
    with general.open("w") as out:
        for _ in range(n):
            w = rng.sample(WORDS, 2)
            out.write(json.dumps({"prompt": "copy " + " ".join(w), "response": " ".join(w)}) + "\n")
    return task, general


def family_job(manifest, model_dir: Path, data_dir: Path, **spec):
    task, general = write_chat_data(data_dir)
    base = {
        "model": {"name": str(model_dir)},
        "dataset": {"task": {"path": str(task)}, "general": {"path": str(general)}, "format": "chat"},
        "training": {"epochs": 1, "batchSize": 4, "maxSeqLength": 96, "maxSteps": 3, "logIntervalSteps": 10,
                     "checkpointIntervalSteps": 2, "learningRate": 1e-3},
        # 24 records, all trained on: these tests are about training each family, not the gate's held-out task
        "regression": {"task": {"source": "Suite"}},
    }
    from tests.component.test_train_stage import _merge

    if spec.get("method", {}).get("type", "lora") == "lora":
        spec = _merge({"method": {"lora": {"r": 4, "targetModules": ["all-linear"]}}}, spec)
    return parse_job(manifest(metadata={"name": "family"}, spec=_merge(base, spec)))


@pytest.mark.parametrize("name", NAMES)
def test_lora_all_linear_targets_the_family_linear_layers(family_model, manifest, tmp_path, name):
    from forgetless_trainer.mitigations.base import TrainContext
    from forgetless_trainer.methods.lora import Lora
    from forgetless_trainer.modeling import load_model_and_tokenizer

    job = family_job(manifest, family_model(name), tmp_path)
    model, _ = load_model_and_tokenizer(job.spec.model)
    wrapped = Lora().configure_model(model, TrainContext(job=job, workdir=tmp_path))
    targeted = {n.rsplit(".", 1)[-1] for n, m in wrapped.named_modules() if hasattr(m, "lora_A")}
    assert targeted == set(FAMILIES[name].linear)
    assert not any("lm_head" in n for n, p in wrapped.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("name", NAMES)
def test_family_trains_under_zero2_on_chat_data(family_model, manifest, tmp_path, name, method):
    job = family_job(manifest, family_model(name), tmp_path / "data", method={"type": method},
                     deepspeed={"zeroStage": 2}, mitigation={"dataMixing": {"generalFraction": 0.25}})
    before = trainable(_start_model(job))
    result = train(job, tmp_path / "work")
    assert result.summary["steps"] == 3 and 0 < result.summary["finalLoss"] < 20
    after = trainable(result.model)
    moved = [n for n in after if not torch.equal(after[n], before[n])]
    assert moved, "training changed no trainable weight"
    output = tmp_path / "work" / "train" / "output"
    saved = json.loads((output / "tokenizer_config.json").read_text())
    assert saved.get("chat_template") or (output / "chat_template.jinja").exists()  # the template travels with the output


@pytest.mark.parametrize("name", NAMES)
def test_ewc_fisher_covers_every_trainable_parameter_under_zero0(family_model, manifest, tmp_path, name):
    job = family_job(manifest, family_model(name), tmp_path / "data", method={"type": "full"},
                     deepspeed={"zeroStage": 0}, mitigation={"ewc": {"fisherSamples": 4, "lambda": 10.0}},
                     training={"maxSteps": 2})
    result = train(job, tmp_path / "work")
    ewc = next(m for m in result.mitigations if m.name == "ewc")
    fisher = ewc.fisher.as_dict()
    names = {n for n, p in result.model.named_parameters() if p.requires_grad}
    assert set(fisher) == names
    if name == "gemma2":
        assert any("norm" in n for n in names) and result.model.config.final_logit_softcapping
    empty = [n for n, f in fisher.items() if not float(f.sum()) > 0]
    assert not empty, f"zero Fisher for {empty}"


@pytest.mark.parametrize("name", NAMES)
def test_zero3_saved_model_reloads_and_generates_like_the_trained_weights(family_model, manifest, tmp_path, name):
    import deepspeed
    from transformers import AutoModelForCausalLM

    from forgetless_trainer.chat import chat_format
    from forgetless_trainer.modeling import load_tokenizer

    job = family_job(manifest, family_model(name), tmp_path / "data", method={"type": "full"}, deepspeed={"zeroStage": 3},
                     training={"learningRate": 5e-3})
    result = train(job, tmp_path / "work")
    params = list(result.model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        state = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    in_memory = AutoModelForCausalLM.from_pretrained(family_model(name))
    missing = in_memory.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "work" / "train" / "output")
    for n, p in reloaded.named_parameters():
        assert torch.equal(p, dict(in_memory.named_parameters())[n]), n
    assert any(not torch.equal(p, dict(AutoModelForCausalLM.from_pretrained(family_model(name)).named_parameters())[n])
               for n, p in reloaded.named_parameters())
    tokenizer = load_tokenizer(str(tmp_path / "work" / "train" / "output"))
    prompt = chat_format(tokenizer).generation_text("reverse alpha beta")
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    outs = [m.eval().generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                              pad_token_id=tokenizer.pad_token_id) for m in (in_memory, reloaded)]
    assert torch.equal(outs[0], outs[1]) and outs[0].shape[1] > ids.shape[1]


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize("name", NAMES)
def test_family_resume_equals_uninterrupted(family_model, manifest, tmp_path, name):
    job = family_job(manifest, family_model(name), tmp_path / "data", deepspeed={"zeroStage": 2},
                     method={"lora": {"r": 4, "dropout": 0.1, "targetModules": ["all-linear"]}},
                     training={"maxSteps": 4})
    straight = train(job, tmp_path / "straight")

    def crash(step: int) -> None:
        if step == 3:
            raise Crash("killed")

    with pytest.raises(Crash):
        train(job, tmp_path / "interrupted", after_step=crash)
    resumed = train(job, tmp_path / "interrupted")
    assert resumed.summary["resumedFromStep"] == 2
    expected, got = trainable(straight.model), trainable(resumed.model)
    assert got.keys() == expected.keys()
    for n in expected:
        assert torch.equal(got[n], expected[n]), n


def _start_model(job):
    from forgetless_trainer.methods import method_for
    from forgetless_trainer.mitigations.base import TrainContext
    from forgetless_trainer.modeling import load_model_and_tokenizer

    torch.manual_seed(job.spec.training.seed)
    model, _ = load_model_and_tokenizer(job.spec.model)
    return method_for(job.spec).configure_model(model, TrainContext(job=job, workdir=None))
