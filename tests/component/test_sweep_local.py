"""`forgetless sweep` end to end on the bundled model: two tiny trials, one baseline, resumable, best promoted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from forgetless.api.documents import validate_sweep_document
from forgetless_cli.local.sweep import SWEEP_FILE, run_local_sweep

SWEEP = {
    "apiVersion": "forgetless.dev/v1alpha1",
    "kind": "FineTuneSweep",
    "metadata": {"name": "tiny"},
    "spec": {
        "template": {
            "model": {"name": "bundled:tiny-world"},
            "dataset": {"task": {"path": "bundled:support-tickets"}},
            "method": {"type": "lora", "lora": {"r": 4, "targetModules": ["all-linear"]}},
            "mitigation": {"dataMixing": {"generalFraction": 0.3}},
            "training": {"epochs": 1, "maxSteps": 3, "batchSize": 8, "maxSeqLength": 48, "learningRate": 1e-3,
                         "checkpointIntervalSteps": 2},
            "regression": {"limit": 2, "bootstrapSamples": 100, "thresholds": {"minTaskGain": -1.0,
                                                                               "maxMeanDrop": 1.0, "maxCategoryDrop": 1.0}},
        },
        "searchSpace": [{"field": "method.lora.r", "values": [2, 8]}],
        "promote": "best",
    },
}


def test_a_two_trial_sweep_runs_resumes_and_promotes_only_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    sweep = validate_sweep_document(SWEEP)
    workdir = tmp_path / "sweep"
    lines: list[str] = []
    result = run_local_sweep(sweep, workdir, log=lines.append)

    assert [t.name for t in result.trials] == ["tiny-t0", "tiny-t1"]
    assert all(t.phase == "Succeeded" and t.verdict == "Passed" for t in result.trials)
    costs = [t.cost for t in result.trials]
    assert costs[0] > 0 and costs[1] > costs[0]  # r 8 trains more parameters on the same tokens
    assert result.best is not None and result.best.name in ("tiny-t0", "tiny-t1")
    baseline_summaries = [json.loads((workdir / t / "baseline" / "summary.json").read_text()) for t in ("tiny-t0", "tiny-t1")]
    assert [s["cached"] for s in baseline_summaries] == [False, True]  # one shared baseline
    assert not (workdir / "tiny-t0" / "promoted").exists() or result.best.name == "tiny-t0"
    assert result.promoted is not None and Path(result.promoted["path"]) == workdir / result.best.name / "promoted"
    other = "tiny-t1" if result.best.name == "tiny-t0" else "tiny-t0"
    assert not (workdir / other / "promoted").exists()
    # promoted as in a cluster: `<sweep>-best` re-ran the evaluate stage (the gate, then promotion) in the best trial's dir
    evaluated = json.loads((workdir / result.best.name / "evaluate" / "summary.json").read_text())
    assert evaluated["promotedModel"] == result.promoted and evaluated["gate"]["verdict"] == "Passed"
    assert any(line.startswith("tiny-best: ") and "evaluate" in line for line in lines)
    assert any(line.startswith("tiny-best: ") and "baseline: already finished" in line for line in lines)
    state = json.loads((workdir / SWEEP_FILE).read_text())
    assert state["phase"] == "Succeeded" and state["best"]["name"] == result.best.name
    assert (workdir / "pareto.png").stat().st_size > 1000 and "tiny-t1" in (workdir / "report.txt").read_text()
    assert any("tiny-t1 [rung 0" in line for line in lines)

    # a second run skips both finished trials
    again: list[str] = []
    second = run_local_sweep(sweep, workdir, log=again.append)
    assert [t.train_seconds for t in second.trials] == [t.train_seconds for t in result.trials]
    assert not any("[rung 0" in line for line in again)


def test_the_cli_refuses_a_bad_sweep_naming_the_field(tmp_path):
    bad = dict(SWEEP, spec={**SWEEP["spec"], "searchSpace": []})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    proc = subprocess.run([sys.executable, "-m", "forgetless_cli", "sweep", str(path), "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "spec.searchSpace" in proc.stderr


def test_successive_halving_continues_the_promoted_trial_from_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    document = json.loads(json.dumps(SWEEP))
    training = document["spec"]["template"]["training"]
    training.pop("maxSteps")
    training.update(epochs=0.01, checkpointIntervalSteps=1000)
    document["spec"]["searchSpace"] = [{"field": "method.lora.r", "values": [2, 4, 8]}]
    document["spec"]["strategy"] = {"type": "successiveHalving", "eta": 2, "minEpochs": 0.005}
    document["spec"]["promote"] = "none"
    sweep = validate_sweep_document(document)
    workdir = tmp_path / "sh"
    result = run_local_sweep(sweep, workdir, log=lambda line: None)

    continued = [t for t in result.trials if t.rung == 1]
    pruned = [t for t in result.trials if t.phase == "Pruned"]
    assert len(continued) == 2 and len(pruned) == 1 and pruned[0].rung == 0
    for trial in continued:
        summary = json.loads((workdir / trial.name / "train" / "summary.json").read_text())
        assert summary["resumedFromStep"] > 0 and summary["steps"] > summary["resumedFromStep"]
        assert summary["steps"] == summary["totalSteps"]  # trained on to the longer rung's plan
        assert trial.epochs == 0.01
    assert result.promoted is None and not any((workdir / t.name / "promoted").exists() for t in result.trials)


def test_parallel_trials_run_in_worker_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "cache"))
    document = json.loads(json.dumps(SWEEP))
    document["spec"]["promote"] = "none"
    sweep = validate_sweep_document(document)
    result = run_local_sweep(sweep, tmp_path / "par", parallel=2, log=lambda line: None)
    assert [t.phase for t in result.trials] == ["Succeeded", "Succeeded"], [t.message for t in result.trials]
    assert all(t.cost and t.task_score is not None for t in result.trials) and result.best is not None
