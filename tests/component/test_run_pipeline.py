"""`forgetless run` end to end on a tiny model: report, exit codes, resume, and early rejection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from forgetless import exit_codes

pytest.importorskip("torch")

WORDS = "alpha beta gamma delta epsilon zeta eta theta".split()


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """Task data, general data and a two-category suite the tiny fixture tokenizer can spell."""
    task = [{"prompt": f"ticket {a} {b}", "response": f"reply {b} status closed"} for a in WORDS for b in WORDS]
    general = [{"prompt": f"copy {a} {b}", "response": f"{a} {b}"} for a in WORDS for b in WORDS]
    suite = tmp_path / "suite"
    _write_jsonl(suite / "copy.jsonl", [{"id": f"c{i}", "prompt": f"copy {w} {w}", "target": f"{w} {w}"} for i, w in enumerate(WORDS)])
    _write_jsonl(suite / "sort.jsonl", [{"id": f"s{i}", "prompt": f"sort {w} alpha", "target": f"alpha {w}"} for i, w in enumerate(WORDS)])
    _write_jsonl(suite / "task.jsonl", [{"id": f"t{i}", "prompt": f"ticket {w} beta", "target": "reply beta status closed"} for i, w in enumerate(WORDS)])
    (suite / "suite.json").write_text(
        json.dumps(
            {
                "name": "tiny",
                "version": "1",
                "description": "test suite",
                "tasks": [
                    {"name": "copy", "category": "instruction_following", "path": "copy.jsonl", "scorer": "exact_match", "max_new_tokens": 4},
                    {"name": "sort", "category": "reasoning", "path": "sort.jsonl", "scorer": "exact_match", "max_new_tokens": 4},
                    {"name": "task", "category": "task", "path": "task.jsonl", "scorer": "exact_match", "max_new_tokens": 5},
                ],
            }
        )
    )
    return {
        "task": _write_jsonl(tmp_path / "task.jsonl", task),
        "general": _write_jsonl(tmp_path / "general.jsonl", general),
        "suite": suite,
    }


def _job(tmp_path: Path, model: Path, world: dict[str, Path], **regression: Any) -> Path:
    manifest = {
        "apiVersion": "forgetless.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tiny-run"},
        "spec": {
            "model": {"name": str(model)},
            "dataset": {"task": {"path": str(world["task"])}, "general": {"path": str(world["general"])}},
            "method": {"type": "lora", "lora": {"r": 2, "alpha": 4, "targetModules": ["q_proj", "v_proj"]}},
            "training": {"epochs": 1, "batchSize": 8, "maxSteps": 4, "maxSeqLength": 16, "learningRate": 1e-3,
                         "checkpointIntervalSteps": 2, "logIntervalSteps": 1},
            "deepspeed": {"zeroStage": 0},
            "regression": {"suite": {"path": str(world["suite"])}, "bootstrapSamples": 200, **regression},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGETLESS_METRICS_PORT", raising=False)


def test_run_passes_writes_the_report_and_exits_0(tmp_path, tiny_model_dir, world, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    # 4 steps on a random tiny model learn nothing: minTaskGain 0 accepts that (this test is about the pipeline)
    job = _job(tmp_path, tiny_model_dir, world, thresholds={"maxCategoryDrop": 1.0, "maxMeanDrop": 1.0, "minTaskGain": 0})
    workdir = tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.OK
    out = capsys.readouterr().out
    assert "verdict: Passed" in out
    assert "instruction_following" in out and "reasoning" in out
    for stage in ("baseline", "train", "evaluate"):
        assert (workdir / stage / "summary.json").exists()
    reports = {p.suffix for p in (workdir / "report").iterdir()}
    assert {".json", ".md", ".png"} <= reports
    promoted = workdir / "promoted"
    assert (promoted / "config.json").exists() and (promoted / "adapter" / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(promoted)  # the promoted LoRA job is a plain, deployable model


def test_a_model_that_learned_nothing_is_no_task_gain_exits_5_and_promotes_nothing(tmp_path, tiny_model_dir, world,
                                                                                  capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    job = _job(tmp_path, tiny_model_dir, world, thresholds={"maxCategoryDrop": 1.0, "maxMeanDrop": 1.0})
    workdir = tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.NO_TASK_GAIN
    captured = capsys.readouterr()
    assert "verdict: NoTaskGain" in captured.out and "lower bound" in captured.out
    assert "no evidence the model learned the target task" in captured.out
    assert "not promoted" in captured.err
    assert not (workdir / "promoted").exists()
    gate = json.loads((workdir / "report" / "gate.json").read_text())
    assert gate["status"]["verdict"] == gate["gate"]["verdict"] == "NoTaskGain"


def test_run_blocked_by_the_gate_exits_3_and_promotes_nothing(tmp_path, tiny_model_dir, world, capsys, monkeypatch):
    import dataclasses

    import forgetless_trainer.stages.evaluate as evaluate_stage
    from forgetless_cli.local.pipeline import run_pipeline

    # a random tiny model scores 0 before and after, so it cannot forget: the stage's gate is made to
    # find forgetting, and everything after it (report, promotion, exit code) is the real thing
    real_gate = evaluate_stage.evaluate_gate

    def forgetting_gate(paired, regression):
        return dataclasses.replace(real_gate(paired, regression), verdict="Failed",
                                   reasons=["reasoning dropped by 0.400 (forced by the test)"])

    monkeypatch.setattr(evaluate_stage, "evaluate_gate", forgetting_gate)
    job = _job(tmp_path, tiny_model_dir, world, thresholds={"minTaskGain": 0})
    workdir = tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.GATE_BLOCKED
    captured = capsys.readouterr()
    assert "verdict: Failed" in captured.out
    assert "reasoning dropped" in captured.out.split("verdict: Failed", 1)[1]
    assert "gate blocked promotion" in captured.err
    assert not (workdir / "promoted").exists()


def test_interrupted_run_resumes_without_redoing_finished_stages(tmp_path, tiny_model_dir, world, monkeypatch, capsys):
    import forgetless_trainer.stages as stages
    from forgetless_cli.local.pipeline import run_pipeline

    job = _job(tmp_path, tiny_model_dir, world, thresholds={"maxCategoryDrop": 1.0, "maxMeanDrop": 1.0, "minTaskGain": 0})
    workdir = tmp_path / "work"
    real = stages.run_stage
    calls: list[str] = []

    def interrupted(name, *args, **kwargs):
        calls.append(name)
        if name == "train":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(stages, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(job, workdir=workdir)
    assert calls == ["baseline", "train"]
    baseline_summary = (workdir / "baseline" / "summary.json").read_bytes()

    calls.clear()
    monkeypatch.setattr(stages, "run_stage", lambda name, *a, **k: (calls.append(name), real(name, *a, **k))[1])
    assert run_pipeline(job, workdir=workdir) == exit_codes.OK
    assert calls == ["train", "evaluate"]
    assert (workdir / "baseline" / "summary.json").read_bytes() == baseline_summary
    assert "baseline: already finished" in capsys.readouterr().err


def test_broken_manifest_fails_before_anything_runs(tmp_path, tiny_model_dir, world, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    job = _job(tmp_path, tiny_model_dir, world)
    document = yaml.safe_load(job.read_text())
    document["spec"]["training"]["learningRate"] = -1
    job.write_text(yaml.safe_dump(document))
    workdir = tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.INVALID
    assert "spec.training.learningRate" in capsys.readouterr().err
    assert not workdir.exists()


def test_missing_dataset_path_is_named_before_anything_runs(tmp_path, tiny_model_dir, world, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    job = _job(tmp_path, tiny_model_dir, world)
    document = yaml.safe_load(job.read_text())
    missing = tmp_path / "nowhere" / "tickets.jsonl"
    document["spec"]["dataset"]["task"]["path"] = str(missing)
    job.write_text(yaml.safe_dump(document))
    assert run_pipeline(job, workdir=tmp_path / "work") == exit_codes.INVALID
    err = capsys.readouterr().err
    assert f"spec.dataset.task.path: {missing} does not exist" in err
    assert not (tmp_path / "work").exists()


def test_a_work_dir_of_another_spec_is_not_overwritten(tmp_path, tiny_model_dir, world, capsys):
    from forgetless_cli.local.workdir import prepare_workdir
    from forgetless.api.manifests import load_job
    from forgetless_cli.local.workdir import PreflightError

    job = load_job(_job(tmp_path, tiny_model_dir, world))
    workdir = tmp_path / "work"
    prepare_workdir(job, workdir, restart=False)
    other = job.model_copy(deep=True)
    other.spec.training.seed = 7
    with pytest.raises(PreflightError, match="different spec"):
        prepare_workdir(other, workdir, restart=False)
    prepare_workdir(other, workdir, restart=True)


def _own_task_job(tmp_path: Path, records: int, **regression: Any) -> Path:
    """The bundled world with a team's own task file (order requests, no test split) and no regression.suite."""
    source = Path(__file__).resolve().parents[2] / "core/forgetless/bundled/data/order-requests/train.jsonl"
    data = tmp_path / "orders.jsonl"
    data.write_text("".join(source.read_text().splitlines(keepends=True)[:records]))
    manifest = {
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "own-task"},
        "spec": {
            "model": {"name": "bundled:tiny-world"},
            "dataset": {"task": {"path": str(data)}},
            "method": {"type": "full"},
            "mitigation": {"dataMixing": {"generalFraction": 0.0}},
            "training": {"epochs": 10, "maxSteps": 60, "batchSize": 32, "maxSeqLength": 64, "learningRate": 1e-3},
            "deepspeed": {"zeroStage": 0},
            "regression": {"limit": 30, "bootstrapSamples": 200, "formatLeak": {"detector": "Learned"}, **regression},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.slow
def test_a_job_without_a_suite_scores_its_own_held_out_task_and_shows_the_flipped_items(tmp_path, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    workdir = tmp_path / "work"
    code = run_pipeline(_own_task_job(tmp_path, 300), workdir=workdir)
    out = capsys.readouterr().out
    assert code in (exit_codes.OK, exit_codes.GATE_BLOCKED, exit_codes.NO_TASK_GAIN), out
    baseline = json.loads((workdir / "baseline" / "summary.json").read_text())
    assert baseline["taskHoldout"] == {"source": "split", "heldOut": 30, "trainRecords": 270}
    assert baseline["formatDetector"]["usable"] and baseline["formatDetector"]["detectionRate"] >= 0.8
    assert (workdir / "baseline" / "format_detector.json").is_file()
    train = json.loads((workdir / "train" / "summary.json").read_text())
    assert train["trainExamples"] + train["validationExamples"] == 270  # the 30 held out were never trained on
    evaluate = json.loads((workdir / "evaluate" / "summary.json").read_text())
    assert set(evaluate["tasks"]) >= {"own_task", "format_leak"} and "support_tickets" not in evaluate["tasks"]
    # 60 steps teach the orders format (its `; key =` pairs) but hardly its exact answers; the format leaks into the
    # world's list and key-value answers, and the flipped items show it where the base model answered right
    assert "task" in evaluate["scores"] and any(e["category"] == "task" for e in evaluate["evidence"])
    assert baseline["formatDetector"]["signature"][:2] == ["; city", "; colour"]
    format_lost = [e for e in evaluate["evidence"] if e["category"] == "format"]
    assert format_lost and all(e["final"] != e["baseline"] for e in format_lost), evaluate["evidence"]
    assert any(e["final"].count(";") > e["baseline"].count(";") for e in format_lost), evaluate["evidence"]
    assert "note: task: 30 of the 300 task records set aside before training" in out
    assert "items that flipped" in out and "fine-tuned:" in out
    report = (workdir / "report" / "report.md").read_text()
    assert "## What changed, item by item" in report and "### task" in report


def test_too_few_task_records_to_hold_out_is_named_before_anything_runs(tmp_path, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    assert run_pipeline(_own_task_job(tmp_path, 30), workdir=tmp_path / "work") == exit_codes.INVALID
    err = capsys.readouterr().err
    assert "spec.dataset.task: 30 records are too few" in err and "at least 40 records" in err
    assert not (tmp_path / "work" / "baseline").exists()


def _self_rehearsal_job(tmp_path: Path, max_new_tokens: int) -> Path:
    """The bundled world, its general data made by the model itself from a pool of world prompts."""
    general = Path(__file__).resolve().parents[2] / "core/forgetless/bundled/data/general/train.jsonl"
    pool = _write_jsonl(tmp_path / "pool.jsonl", [{"prompt": json.loads(line)["prompt"]}
                                                   for line in general.read_text().splitlines()[:64]])
    manifest = {
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "self-rehearsal"},
        "spec": {
            "model": {"name": "bundled:tiny-world"},
            "dataset": {"task": {"path": "bundled:support-tickets"},
                        "selfRehearsal": {"prompts": {"path": str(pool)}, "size": 64, "maxNewTokens": max_new_tokens}},
            "method": {"type": "lora"},
            "mitigation": {"dataMixing": {"generalFraction": 0.3}},
            "training": {"epochs": 1, "maxSteps": 4, "batchSize": 8, "maxSeqLength": 48},
            "deepspeed": {"zeroStage": 0},
            "regression": {"limit": 4, "bootstrapSamples": 200, "task": {"source": "Suite"},
                           "thresholds": {"maxCategoryDrop": 1.0, "maxMeanDrop": 1.0, "minTaskGain": 0}},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_self_rehearsal_is_generated_at_baseline_trained_on_and_cached(tmp_path, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    job = _self_rehearsal_job(tmp_path, max_new_tokens=8)
    workdir = tmp_path / "work"
    assert run_pipeline(job, workdir=workdir) == exit_codes.OK
    err = capsys.readouterr().err
    assert "general data: self-rehearsal: the base model's own answers to the first 64 prompts of" in err
    baseline = json.loads((workdir / "baseline" / "summary.json").read_text())
    made = baseline["selfRehearsal"]
    # the world's long answers do not end within 8 tokens: only those that did are kept
    assert made["prompts"] == 64 and 16 <= made["kept"] < 64 and made["cached"] is False, made
    records = [json.loads(line) for line in (workdir / "baseline" / "self_rehearsal.jsonl").read_text().splitlines()]
    assert len(records) == made["kept"]
    assert all(len(r["messages"][1]["content"].split()) <= 8 for r in records)
    assert baseline["forecast"]["reference"] == "selfRehearsal"
    assert f"{made['kept']} of 64 answers of the base model kept" in err
    train = json.loads((workdir / "train" / "summary.json").read_text())
    assert train["epochComposition"]["general"] > 0, train  # drawn from the rehearsal answers
    gate = json.loads((workdir / "evaluate" / "summary.json").read_text())["gate"]
    assert any(note.startswith(f"general data: self-rehearsal, {made['kept']} of 64") for note in gate["notes"])
    assert "general data: self-rehearsal" in (workdir / "report" / "report.md").read_text()

    again = tmp_path / "again"  # a second job on the same model and pool: from the cache, the same data
    assert run_pipeline(job, workdir=again) == exit_codes.OK
    assert json.loads((again / "baseline" / "summary.json").read_text())["selfRehearsal"]["cached"] is True
    assert (again / "baseline" / "self_rehearsal.jsonl").read_text() == \
        (workdir / "baseline" / "self_rehearsal.jsonl").read_text()
    assert "from the cache" in capsys.readouterr().err


def test_a_budget_no_answer_fits_is_an_input_error_naming_the_field(tmp_path, capsys):
    from forgetless_cli.local.pipeline import run_pipeline

    general = Path(__file__).resolve().parents[2] / "core/forgetless/bundled/data/general/train.jsonl"
    job = _self_rehearsal_job(tmp_path, max_new_tokens=8)
    text = job.read_text().replace(str(tmp_path / "pool.jsonl"), str(_write_jsonl(
        tmp_path / "long.jsonl", [{"prompt": json.loads(line)["prompt"]} for line in general.read_text().splitlines()
                                  if json.loads(line)["skill"] == "reasoning"][:64])))
    job.write_text(text)
    code = run_pipeline(job, workdir=tmp_path / "work")
    err = capsys.readouterr().err
    assert code != exit_codes.OK
    assert "dataset.selfRehearsal: only" in err and "raise dataset.selfRehearsal.maxNewTokens" in err, err
