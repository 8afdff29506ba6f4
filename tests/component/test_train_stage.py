"""The train stage end to end on the tiny Llama (CPU, DeepSpeed, one process): outputs, summary,
termination message, live metrics, progress, and clear failures for bad specs.

`write_data` / `make_job` are shared by the other tests/component/test_train_*.py modules.
"""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from forgetless.api.schema import FineTuneJob, parse_job  # noqa: E402
from forgetless.contract.message import compact  # noqa: E402
from forgetless_trainer.stages import StageError, run_stage  # noqa: E402

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
REPO = Path(__file__).resolve().parents[2]


def write_data(folder: Path, n_task: int = 40, n_general: int = 40, seed: int = 0) -> tuple[Path, Path]:
    """Task: reverse three words; general: copy three words (instruction records)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    task, general = folder / "task.jsonl", folder / "general.jsonl"
    with task.open("w") as out:
        for _ in range(n_task):
            words = rng.sample(WORDS, 3)
            out.write(json.dumps({"prompt": "reverse " + " ".join(words), "response": " ".join(reversed(words))}) + "\n")
    with general.open("w") as out:
        for _ in range(n_general):
            words = rng.sample(WORDS, 3)
            out.write(json.dumps({"prompt": "copy " + " ".join(words), "response": " ".join(words)}) + "\n")
    return task, general


def make_job(manifest, tiny_model_dir: Path, data_dir: Path, name: str = "train-test", **spec: Any) -> FineTuneJob:
    """A small, fast job on the tiny model; `spec` is merged over the defaults below."""
    task, general = data_dir / "task.jsonl", data_dir / "general.jsonl"
    if not task.exists():
        write_data(data_dir)
    base = {
        "model": {"name": str(tiny_model_dir)},
        "dataset": {"task": {"path": str(task)}, "general": {"path": str(general)}},
        "training": {"epochs": 1, "batchSize": 4, "maxSeqLength": 32, "logIntervalSteps": 2, "checkpointIntervalSteps": 4},
        # the training tests count on every record being trained on (no held-out task share: test_run_pipeline
        # and tests/unit/test_own_task.py cover that)
        "regression": {"task": {"source": "Suite"}},
    }
    document = manifest(metadata={"name": name}, spec=base)
    document = manifest(metadata={"name": name}, spec=_merge(document["spec"], spec))
    return parse_job(document)


def _merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "JOB_COMPLETION_INDEX")


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ for a child process, without the distributed vars an in-process run left behind."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update({"OMP_NUM_THREADS": "1", **extra})
    return env


def trainable(model) -> dict[str, Any]:
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------- tests


def test_train_stage_writes_adapter_summary_and_termination_message(tmp_path, manifest, tiny_model_dir, monkeypatch):
    from forgetless_trainer.modeling import load_model_and_tokenizer

    message = tmp_path / "termination-log"
    monkeypatch.setenv("FORGETLESS_TERMINATION_MESSAGE_PATH", str(message))
    from forgetless_trainer.training.loop import train

    job = make_job(manifest, tiny_model_dir, tmp_path / "data")
    result = train(job, tmp_path / "work")
    summary = result.summary
    from forgetless_trainer.stages import write_summary

    write_summary("train", summary, tmp_path / "work")  # what run_stage does after run()
    base, _ = load_model_and_tokenizer(job.spec.model)
    frozen = {n.replace("base_model.model.", "").replace(".base_layer", ""): p
              for n, p in result.model.named_parameters() if "lora_" not in n}
    assert frozen.keys() == dict(base.named_parameters()).keys()
    assert all(torch.equal(frozen[n], p) for n, p in base.named_parameters())  # LoRA under DeepSpeed: base bit-identical

    # 36 train examples (4 held out) + 20 % general → epoch of 45 → 12 steps of 4
    assert summary["stage"] == "train" and summary["method"] == "lora"
    assert summary["epochComposition"] == {"general": 9, "task": 36}
    assert summary["steps"] == summary["totalSteps"] == 12 and summary["epochs"] == 1.0
    assert summary["stoppedReason"] == "completed" and summary["tokensPerSecond"] > 0
    # the summary's loss is the one the trainer last measured (its live metric), a real number
    from forgetless_trainer.live_metrics import REGISTRY, labels

    live = REGISTRY.get_sample_value("forgetless_train_loss", labels(job.metadata.name, job.metadata.namespace))
    assert 0 < summary["finalLoss"] == pytest.approx(live) and summary["learningRate"] == 2e-4
    assert json.loads((tmp_path / "work" / "train" / "summary.json").read_text()) == summary
    written = message.read_text()
    assert len(written.encode()) <= 4096 and json.loads(written)["steps"] == 12

    output = Path(summary["outputPath"])
    assert output == tmp_path / "work" / "train" / "output"
    assert (output / "adapter_config.json").is_file() and not (output / "config.json").exists()
    assert sorted(p.name for p in (tmp_path / "work" / "train" / "checkpoints").iterdir()) == ["step-12", "step-8"]
    model, _ = load_model_and_tokenizer(job.spec.model, adapter_path=output)
    assert any("lora_B" in n and torch.count_nonzero(p) for n, p in model.named_parameters())


def test_full_fine_tuning_in_bf16_writes_the_whole_model(tmp_path, manifest, tiny_model_dir):
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless_trainer.training.loop import train

    job = make_job(
        manifest, tiny_model_dir, tmp_path / "data",
        method={"type": "full"}, training={"precision": "bf16", "maxSteps": 3, "gradientAccumulationSteps": 2},
        deepspeed={"zeroStage": 1},
    )
    result = train(job, tmp_path / "work")
    assert result.summary["precision"] == "bf16" and result.summary["stoppedReason"] == "max_steps"
    assert result.summary["steps"] == 3 and result.summary["learningRate"] == 2e-5
    output = tmp_path / "work" / "train" / "output"
    assert (output / "config.json").is_file() and (output / "tokenizer.json").is_file()
    reloaded, _ = load_model_and_tokenizer(job.spec.model, adapter_path=output)
    base, _ = load_model_and_tokenizer(job.spec.model)
    moved = [n for n, p in reloaded.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert moved  # the full model was trained and saved


def test_live_metrics_are_served_while_training_and_progress_is_logged(tmp_path, manifest, tiny_model_dir, monkeypatch):
    from forgetless_trainer.live_metrics import REGISTRY
    from forgetless_trainer.training.distributed import free_port
    from forgetless_trainer.training.loop import train

    port = free_port()
    monkeypatch.setenv("FORGETLESS_METRICS_PORT", str(port))
    monkeypatch.setenv("FORGETLESS_NAMESPACE", "team-a")
    scraped: list[str] = []

    def scrape(step: int) -> None:
        if step == 6:
            scraped.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())

    stream = io.StringIO()
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", name="metrics-test",
                   mitigation={"ewc": {"fisherSamples": 8, "lambda": 10.0}}, training={"maxSteps": 8})
    train(job, tmp_path / "work", after_step=scrape, progress_stream=stream)
    text = scraped[0]
    for name in (
        "forgetless_train_steps_total", "forgetless_train_loss", "forgetless_train_learning_rate",
        "forgetless_train_tokens_per_second", "forgetless_train_tokens_total", "forgetless_train_ewc_penalty",
        "forgetless_train_grad_norm", "forgetless_train_last_step_timestamp_seconds",
    ):
        assert f'{name}{{finetunejob="metrics-test",namespace="team-a"}}' in text, name
    labels = {"namespace": "team-a", "finetunejob": "metrics-test"}
    assert 'forgetless_train_steps_total{finetunejob="metrics-test",namespace="team-a"} 6.0' in text
    assert REGISTRY.get_sample_value("forgetless_train_steps_total", labels) == 8
    assert REGISTRY.get_sample_value("forgetless_train_ewc_penalty", labels) > 0
    lines = stream.getvalue().splitlines()
    # 8 steps: a line every ceil(8/10) = 1 step, each with its share, the rate and the time left
    steps = [line for line in lines if line.startswith("[train] step ")]
    assert [line.split()[2] for line in steps] == [f"{n}/8" for n in range(1, 9)]
    assert "(100 %)" in steps[-1] and "step/s" in steps[-1] and "left" in steps[0]


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"dataset": {"task": {"path": "/nonexistent/tickets.jsonl"}}}, "dataset.task: no such file or directory: /nonexistent/tickets.jsonl"),
        ({"dataset": {"general": {"path": "bundled:nope"}}}, "dataset.general.path: no bundled data named 'nope'"),
        ({"model": {"name": "/nonexistent/model"}}, "model.name: no model at /nonexistent/model"),
        ({"training": {"precision": "fp16"}}, "training.precision fp16 needs a CUDA GPU"),
        ({"method": {"lora": {"targetModules": ["qkv"]}}}, "method.lora.targetModules ['qkv']"),
        ({"dataset": {"validationFraction": 0.001}, "mitigation": {"earlyStopping": {}}}, "no validation examples"),
        ({"mitigation": {"replay": {"sources": [{"fineTuneJob": "never-ran"}]}}}, "mitigation.replay.sources[0]: no replay_buffer.jsonl"),
    ],
)
def test_bad_specs_fail_with_a_clear_message(tmp_path, manifest, tiny_model_dir, patch, needle):
    if torch.cuda.is_available() and "fp16" in needle:
        pytest.skip("fp16 is allowed on a GPU")
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", **patch)
    with pytest.raises(StageError) as err:
        run_stage("train", job, tmp_path / "work")
    assert needle in str(err.value)
    assert not (tmp_path / "work" / "train" / "output").exists()


def test_malformed_data_line_is_reported_with_file_and_line(tmp_path, manifest, tiny_model_dir, monkeypatch):
    task, _ = write_data(tmp_path / "data")
    with task.open("a") as out:
        out.write('{"prompt": "no response"}\n')
    message = tmp_path / "termination-log"
    monkeypatch.setenv("FORGETLESS_TERMINATION_MESSAGE_PATH", str(message))
    with pytest.raises(StageError, match=rf"{task}:41: an instruction record needs"):
        run_stage("train", make_job(manifest, tiny_model_dir, tmp_path / "data"), tmp_path / "work")
    assert f"{task}:41" in json.loads(message.read_text())["error"]


def test_cli_stage_reports_a_bad_job_and_exits_nonzero(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", dataset={"task": {"path": str(tmp_path / "missing.jsonl")}})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job.model_dump(by_alias=True, exclude_none=True, mode="json")))
    proc = subprocess.run(
        [sys.executable, "-m", "forgetless_cli", "stage", "train", "--job", str(path), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=120, env=clean_env(), cwd=REPO,
    )
    assert proc.returncode != 0
    assert f"stage train failed: dataset.task: no such file or directory: {tmp_path / 'missing.jsonl'}" in proc.stderr


def test_compact_summary_stays_under_the_limit():
    summary = {"stage": "train", "steps": 3, "stoppedReason": "completed", "message": "m" * 9000,
               "validationHistory": [[i, 0.123456789] for i in range(2000)], "finalLoss": 1.23456789123}
    text = compact(summary)
    assert len(text.encode()) <= 4096
    kept = json.loads(text)
    assert kept["steps"] == 3 and kept["stoppedReason"] == "completed" and kept["truncated"] is True
    small = {"stage": "train", "steps": 1}
    assert json.loads(compact(small)) == small
