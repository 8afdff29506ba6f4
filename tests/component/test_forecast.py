"""The forecast on a real (tiny) model: the task distance from the base model's losses, in the
baseline summary, skipped with a line when the data cannot be read."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from forgetless_trainer.forecast import run_forecast  # noqa: E402
from tests.component.test_train_stage import make_job  # noqa: E402


def test_the_forecast_measures_the_task_distance(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", method={"type": "full"},
                   mitigation={"dataMixing": {"generalFraction": 0.0}})
    lines: list[str] = []
    result = run_forecast(job.spec, log=lines.append)
    assert result["distance"] == pytest.approx(result["taskLoss"] - result["generalLoss"], abs=2e-4)
    assert result["taskLoss"] > 0 and result["generalLoss"] > 0 and result["records"] == 80  # 40 + 40 records
    assert result["band"] in ("near", "moderate", "far") and result["suggestion"]["text"]
    assert result["policyMeetsSuggestion"] is False  # full fine-tuning without mixing or a budget never meets it
    (line,) = lines
    assert line.startswith("forecast: task loss") and result["band"] in line


def test_the_forecast_is_skipped_with_a_line_when_the_data_is_missing(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", dataset={"task": {"path": str(tmp_path / "nope.jsonl")}})
    lines: list[str] = []
    assert run_forecast(job.spec, log=lines.append) is None
    assert lines and lines[0].startswith("forecast skipped: dataset.task") and "nope.jsonl" in lines[0]


def test_the_baseline_stage_summary_carries_the_forecast(tmp_path, manifest, tiny_model_dir, monkeypatch):
    from forgetless_trainer.stages import baseline

    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", regression={"limit": 2})
    summary = baseline.run(job, tmp_path / "work")
    assert set(summary["forecast"]) >= {"taskLoss", "generalLoss", "distance", "band", "suggestion"}
