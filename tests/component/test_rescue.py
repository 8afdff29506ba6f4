"""Rescue by interpolation on real weights: θ(α) of a LoRA adapter and of a full fine-tune is exactly
θ₀ + α·(θ − θ₀), in memory and as written for promotion; and `forgetless run` takes the rescue path
(verdict Rescued, the interpolated model promoted, the report's curve), resuming a rescue that was
interrupted without redoing its trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from forgetless import exit_codes

torch = pytest.importorskip("torch")


def _logits(model, tokenizer):
    ids = tokenizer("copy alpha beta", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def _spec(path):
    from forgetless.api.schema import ModelSpec

    return ModelSpec(name=str(path))


def test_lora_interpolation_is_the_scaled_adapter_in_memory_and_on_disk(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless_trainer.rescue import Interpolation

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at 0: give the adapter an effect
    adapter = tmp_path / "adapter"
    peft_model.save_pretrained(adapter)

    weights = Interpolation(_spec(tiny_model_dir), adapter)
    base_model, tokenizer = load_model_and_tokenizer(_spec(tiny_model_dir))
    tuned, _ = load_model_and_tokenizer(_spec(tiny_model_dir), adapter_path=adapter)
    alpha = 0.3
    # the reference: the merged weights θ₀ + α·ΔW computed by hand
    merged = tuned.merge_and_unload()
    expected = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_state = dict(base_model.named_parameters())
    with torch.no_grad():
        for name, param in expected.named_parameters():
            param.copy_(base_state[name] + alpha * (dict(merged.named_parameters())[name] - base_state[name]))
    weights.set_alpha(alpha)
    assert torch.allclose(_logits(weights.model, tokenizer), _logits(expected, tokenizer), atol=1e-5)
    weights.set_alpha(0.0)
    assert torch.allclose(_logits(weights.model, tokenizer), _logits(base_model, tokenizer), atol=1e-6)
    assert not torch.allclose(_logits(merged, tokenizer), _logits(base_model, tokenizer), atol=1e-3)

    written = weights.save(alpha, tmp_path / "rescued")
    assert (written / "adapter_config.json").exists()
    reloaded, _ = load_model_and_tokenizer(_spec(tiny_model_dir), adapter_path=written)
    assert torch.allclose(_logits(reloaded, tokenizer), _logits(expected, tokenizer), atol=1e-5)
    # saving left the in-memory adapter as it was
    weights.set_alpha(1.0)
    assert torch.allclose(_logits(weights.model, tokenizer), _logits(merged, tokenizer), atol=1e-5)


def test_full_interpolation_blends_every_parameter(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetless_trainer.rescue import Interpolation

    torch.manual_seed(1)
    tuned = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for param in tuned.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    output = tmp_path / "full"
    tuned.save_pretrained(output)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(output)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    weights = Interpolation(_spec(tiny_model_dir), output)
    assert not weights.is_lora
    weights.set_alpha(0.25)
    base_params, tuned_params = dict(base.named_parameters()), dict(tuned.named_parameters())
    for name, param in weights.model.named_parameters():
        assert torch.allclose(param, base_params[name] + 0.25 * (tuned_params[name] - base_params[name]), atol=1e-6), name
    written = weights.save(0.75, tmp_path / "rescued")
    reloaded = AutoModelForCausalLM.from_pretrained(written)
    for name, param in reloaded.named_parameters():
        assert torch.allclose(param, base_params[name] + 0.75 * (tuned_params[name] - base_params[name]), atol=1e-6), name


# --------------------------------------------------------------------------- forgetless run


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()


def _job(tmp_path: Path, model: Path) -> Path:
    task = [{"prompt": f"ticket {a} {b}", "response": f"reply {b} status closed"} for a in WORDS for b in WORDS]
    suite = tmp_path / "suite"
    _write_jsonl(suite / "copy.jsonl", [{"id": f"c{i}", "prompt": f"copy {w} {w}", "target": f"{w} {w}"} for i, w in enumerate(WORDS)])
    _write_jsonl(suite / "task.jsonl", [{"id": f"t{i}", "prompt": f"ticket {w} beta", "target": "reply beta status closed"} for i, w in enumerate(WORDS)])
    (suite / "suite.json").write_text(json.dumps({"name": "tiny", "version": "1", "tasks": [
        {"name": "copy", "category": "instruction_following", "path": "copy.jsonl", "scorer": "exact_match", "max_new_tokens": 4},
        {"name": "task", "category": "task", "path": "task.jsonl", "scorer": "exact_match", "max_new_tokens": 5}]}))
    manifest = {
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "tiny-rescue"},
        "spec": {
            "model": {"name": str(model)},
            "dataset": {"task": {"path": str(_write_jsonl(tmp_path / "task.jsonl", task))}},
            "method": {"type": "lora", "lora": {"r": 2, "alpha": 4, "targetModules": ["q_proj", "v_proj"]}},
            "mitigation": {"dataMixing": {"generalFraction": 0.0}},
            "training": {"epochs": 1, "batchSize": 8, "maxSteps": 2, "maxSeqLength": 16, "learningRate": 1e-3},
            "deepspeed": {"zeroStage": 0},
            "regression": {"suite": {"path": str(suite)}, "bootstrapSamples": 200,
                           "thresholds": {"minTaskGain": 0}, "rescue": {"interpolation": {"maxEvaluations": 4}}},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGETLESS_METRICS_PORT", raising=False)


def test_run_rescues_a_blocked_model_resuming_an_interrupted_search(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import dataclasses

    import forgetless_trainer.stages.evaluate as evaluate_stage
    from forgetless.errors import StageError
    from forgetless_cli.local.pipeline import run_pipeline

    # a random tiny model scores the same before and after, so it cannot forget: the stage's gate on the
    # fine-tuned model (α = 1) is made to find forgetting; the rescue's own gates are the real ones
    real_gate = evaluate_stage.evaluate_gate
    monkeypatch.setattr(evaluate_stage, "evaluate_gate", lambda paired, regression: dataclasses.replace(
        real_gate(paired, regression), verdict="Failed", reasons=["instruction_following dropped (forced by the test)"]))
    real_evaluate = evaluate_stage.evaluate_model
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(kwargs.get("stage"))
        if len(calls) == 3:
            raise StageError("node lost (simulated) during the third rescue evaluation")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(evaluate_stage, "evaluate_model", interrupted)
    job, workdir = _job(tmp_path, tiny_model_dir), tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.FAILED
    assert len(list((workdir / "rescue" / "trials").glob("*.json"))) == 2
    capsys.readouterr()

    calls.clear()
    monkeypatch.setattr(evaluate_stage, "evaluate_model", lambda *a, **k: (calls.append(k.get("stage")), real_evaluate(*a, **k))[1])
    assert run_pipeline(job, workdir=workdir) == exit_codes.OK
    captured = capsys.readouterr()
    assert "verdict: Rescued" in captured.out and "rescue: Rescued" in captured.out
    assert "(stored)" in captured.err
    summary = json.loads((workdir / "evaluate" / "summary.json").read_text())
    rescue = summary["gate"]["rescue"]
    assert rescue["outcome"] == "Rescued" and 0 < rescue["alpha"] < 1
    assert rescue["evaluations"] == len(rescue["trials"]) <= 4
    assert len(calls) == rescue["evaluations"] - 2  # the two stored trials were not evaluated again
    assert summary["promotedModel"] is not None and "unrescuedScores" in summary
    # the promoted model is the interpolated one: its adapter's B matrices are α × the trained ones
    from safetensors.torch import load_file

    trained = load_file(workdir / "train" / "output" / "adapter_model.safetensors")
    promoted = load_file(workdir / "promoted" / "adapter" / "adapter_model.safetensors")
    b_keys = [k for k in trained if "lora_B" in k]
    assert b_keys and all(torch.allclose(promoted[k], rescue["alpha"] * trained[k], atol=1e-7) for k in b_keys)
    report = (workdir / "report" / "report.md").read_text()
    assert "Rescue by weight interpolation" in report and (workdir / "report" / "rescue.png").exists()
