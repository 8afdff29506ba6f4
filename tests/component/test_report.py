"""The forgetting report: JSON, Markdown and PNG written from a gate result."""

from __future__ import annotations

import json

import pytest

from forgetless.api.schema import CATEGORIES, GateStatus, RegressionSpec
from forgetless.gate import evaluate_gate

pytest.importorskip("matplotlib")

PAIRED = {
    **{f"{c}-a": {"category": c, "n11": 70, "n10": 2, "n01": 3, "n00": 5} for c in CATEGORIES},
    "knowledge-b": {"category": "knowledge", "n11": 30, "n10": 40, "n01": 0, "n00": 10},
    "tickets": {"category": "task", "n11": 10, "n10": 0, "n01": 50, "n00": 20},
}


def scores(paired, after: bool) -> dict[str, float]:
    by_category: dict[str, list[float]] = {}
    for table in paired.values():
        n = sum(table[k] for k in ("n11", "n10", "n01", "n00"))
        right = table["n11"] + (table["n01"] if after else table["n10"])
        by_category.setdefault(table["category"], []).append(right / n)
    return {c: sum(v) / len(v) for c, v in by_category.items()}


def test_report_files_written_and_consistent(tmp_path):
    from forgetless_trainer.evaluation.report import write_report

    gate = evaluate_gate(PAIRED, RegressionSpec())
    baseline, final = scores(PAIRED, False), scores(PAIRED, True)
    paths = write_report(gate, baseline, final, tmp_path / "report")
    assert set(paths) == {"json", "markdown", "png"}
    assert all(p.exists() and p.parent == tmp_path / "report" for p in paths.values())

    document = json.loads(paths["json"].read_text())
    GateStatus.model_validate(document["status"])
    assert document["gate"]["verdict"] == "Failed" == document["status"]["verdict"]
    assert document["baselineScores"]["knowledge"] == pytest.approx(baseline["knowledge"])

    markdown = paths["markdown"].read_text()
    assert "**Verdict: Failed**" in markdown
    assert "| knowledge |" in markdown and "FAIL" in markdown
    for reason in gate.reasons:
        assert reason in markdown
    assert "gain +0.625" in markdown and "report.png" in markdown

    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert not list((tmp_path / "report").glob(".*.tmp"))


def test_report_without_task_category_and_passing(tmp_path):
    from forgetless_trainer.evaluation.report import write_report

    paired = {k: v for k, v in PAIRED.items() if v["category"] not in ("task", "knowledge")}
    gate = evaluate_gate(paired, RegressionSpec())
    assert gate.verdict == "Passed" and gate.task_gain is None
    paths = write_report(gate, scores(paired, False), scores(paired, True), tmp_path)
    markdown = paths["markdown"].read_text()
    assert "**Verdict: Passed**" in markdown and "no task gain measured" in markdown
    assert paths["png"].stat().st_size > 3000


def test_the_forgetting_budget_is_accounted_for_in_the_report(tmp_path):
    from forgetless_trainer.evaluation.report import write_report

    train = {"stoppedReason": "completed", "probeBaseline": 0.9, "budgetMaxDrop": 0.05,
             "probeHistory": [[0, 0.9], [25, 0.87], [50, 0.8], [75, 0.88], [100, 0.89]],
             "adjustments": [{"step": 50, "probeMean": 0.8, "rolledBackToStep": 25, "learningRateScale": 0.5,
                              "extraGeneralFraction": 0.1}]}
    gate = evaluate_gate(PAIRED, RegressionSpec())
    written = write_report(gate, scores(PAIRED, False), scores(PAIRED, True), tmp_path, train)
    assert written["budget_png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = written["markdown"].read_text()
    assert "## Forgetting budget" in markdown and "budget line 0.850" in markdown
    assert "| 50 | 0.800 | — | 25 | 0.5 | 10% |" in markdown and "budget.png" in markdown
    document = json.loads(written["json"].read_text())
    assert document["forgettingBudget"]["adjustments"] == train["adjustments"]
    # a run without the budget gets no budget section (even though its summary has the general KL)
    plain = write_report(gate, scores(PAIRED, False), scores(PAIRED, True), tmp_path / "plain",
                         {"steps": 3, "generalKL": 0.1, "generalKLHistory": [[0, 0.0], [3, 0.1]]})
    assert "budget_png" not in plain and "Forgetting budget" not in plain["markdown"].read_text()


@pytest.mark.parametrize("signal", ["probe", "kl"])
def test_the_budget_plot_draws_the_general_kl(tmp_path, signal):
    from forgetless_trainer.evaluation.report import write_report

    kl = [[0, 0.0], [25, 0.4], [50, 0.1], [75, 0.12], [100, 0.11]]
    train = {"stoppedReason": "completed", "budgetSignal": signal, "generalKL": 0.11, "generalKLTokens": 948,
             "generalKLHistory": kl, "probeSeconds": 0.4,
             "adjustments": [{"step": 25, "generalKL": 0.4, "rolledBackToStep": 0, "learningRateScale": 0.5,
                              "extraGeneralFraction": 0.3}]}
    if signal == "kl":
        train.update(probeHistory=[], budgetMaxKL=0.15)
    else:
        train.update(probeBaseline=0.9, budgetMaxDrop=0.05, probeHistory=[[0, 0.9], [25, 0.6], [50, 0.88], [75, 0.89]])
        train["adjustments"][0]["probeMean"] = 0.6
    gate = evaluate_gate(PAIRED, RegressionSpec())
    written = write_report(gate, scores(PAIRED, False), scores(PAIRED, True), tmp_path, train)
    assert written["budget_png"].stat().st_size > 3000
    markdown = written["markdown"].read_text()
    assert "General KL(base‖model) at the end: 0.1100 nats/token (948 answer tokens" in markdown
    if signal == "kl":
        assert "maxKL 0.15 nats/token" in markdown and "| 25 | — | 0.4000 | 0 | 0.5 | 30% |" in markdown
    else:
        assert "| 25 | 0.600 | 0.4000 | 0 | 0.5 | 30% |" in markdown
    assert json.loads(written["json"].read_text())["forgettingBudget"]["generalKLHistory"] == kl
