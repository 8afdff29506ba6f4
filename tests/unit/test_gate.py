"""The regression gate: paired counts, the paired bootstrap, thresholds, Warn mode, status shape."""

from __future__ import annotations

import random
import time

import pytest

from forgetless.api.schema import CATEGORIES, GateStatus, RegressionSpec
from forgetless.gate import GateError, evaluate_gate, paired_counts

TASKS_PER_CATEGORY = 2
ITEMS_PER_TASK = 80


def synthetic_items(accuracy: dict[str, float], seed: int, *, task_accuracy: float = 0.3) -> list[dict]:
    """Item results drawn independently per item: each task's items are right with the given chance."""
    rng = random.Random(seed)
    items = []
    for category in (*CATEGORIES, "task"):
        p = task_accuracy if category == "task" else accuracy[category]
        for t in range(TASKS_PER_CATEGORY):
            for i in range(ITEMS_PER_TASK):
                items.append(
                    {"task": f"{category}-{t}", "id": f"i{i}", "category": category, "score": float(rng.random() < p)}
                )
    return items


BASE = {c: 0.8 for c in CATEGORIES}


def test_paired_counts_tabulates_each_item_pair():
    before = [
        {"task": "a", "id": "1", "category": "knowledge", "score": 1.0},
        {"task": "a", "id": "2", "category": "knowledge", "score": 1.0},
        {"task": "a", "id": "3", "category": "knowledge", "score": 0.0},
        {"task": "a", "id": "4", "category": "knowledge", "score": 0.0},
        {"task": "a", "id": "5", "category": "knowledge", "score": 1.0},
    ]
    after = [
        {"task": "a", "id": "5", "category": "knowledge", "score": 1.0},
        {"task": "a", "id": "1", "category": "knowledge", "score": 0.0},
        {"task": "a", "id": "2", "category": "knowledge", "score": 1.0},
        {"task": "a", "id": "3", "category": "knowledge", "score": 1.0},
        {"task": "a", "id": "4", "category": "knowledge", "score": 0.0},
    ]
    assert paired_counts(before, after) == {"a": {"category": "knowledge", "n11": 2, "n10": 1, "n01": 1, "n00": 1}}


def test_paired_counts_rejects_different_item_sets():
    before = [{"task": "a", "id": "1", "category": "format", "score": 1.0}]
    after = [{"task": "a", "id": "2", "category": "format", "score": 1.0}]
    with pytest.raises(GateError, match="same suite and limit"):
        paired_counts(before, after)


def test_pure_noise_passes_and_real_drop_fails():
    baseline = synthetic_items(BASE, seed=1)
    noise = synthetic_items(BASE, seed=2, task_accuracy=0.7)  # same true accuracy, fresh noise: not forgetting
    result = evaluate_gate(paired_counts(baseline, noise), RegressionSpec(), seed=0)
    assert result.verdict == "Passed", result.reasons
    # the noise is real (point drops are not all zero) yet covered by the intervals
    assert any(abs(c.drop) > 0.01 for c in result.categories)
    for c in result.categories:
        assert c.drop_lower <= c.drop <= c.drop_upper

    dropped = synthetic_items({**BASE, "knowledge": 0.45}, seed=2, task_accuracy=0.7)
    result = evaluate_gate(paired_counts(baseline, dropped), RegressionSpec(), seed=0)
    assert result.verdict == "Failed"
    failing = [c.category for c in result.categories if not c.passed]
    assert failing == ["knowledge"]
    knowledge = result.category("knowledge")
    assert knowledge.drop_lower > 0.05 and knowledge.drop > 0.2
    assert any(r.startswith("knowledge dropped by") and "threshold 0.050" in r for r in result.reasons)


def test_noise_false_alarm_rate_is_low_over_many_seeds():
    false_alarms = 0
    for seed in range(20):
        baseline = synthetic_items(BASE, seed=100 + seed)
        final = synthetic_items(BASE, seed=200 + seed, task_accuracy=0.7)
        result = evaluate_gate(paired_counts(baseline, final), RegressionSpec(bootstrapSamples=500), seed=seed)
        false_alarms += result.verdict != "Passed"
    assert false_alarms <= 2


def test_threshold_per_category_and_mean_drop():
    # a 20-point drop in format: 16 of 80 items go right -> wrong, none the other way
    paired = {
        f"{c}-0": {"category": c, "n11": 60, "n10": 16 if c == "format" else 0, "n01": 0, "n00": 4 if c == "format" else 20}
        for c in CATEGORIES
    }
    paired["t"] = {"category": "task", "n11": 10, "n10": 0, "n01": 20, "n00": 50}
    default = evaluate_gate(paired, RegressionSpec())
    assert default.verdict == "Failed"
    assert not default.category("format").passed
    assert default.category("format").drop == pytest.approx(0.2)
    assert [c.passed for c in default.categories] == [c != "format" for c in CATEGORIES]
    assert default.mean_drop == pytest.approx(0.04)
    assert len(default.reasons) == 2  # format and the mean
    assert default.task_gain == pytest.approx(0.25)

    lenient = RegressionSpec.model_validate(
        {"thresholds": {"perCategory": {"format": 0.3}, "maxMeanDrop": 0.1}}
    )
    result = evaluate_gate(paired, lenient)
    assert result.verdict == "Passed", result.reasons
    assert result.category("format").threshold == 0.3
    assert result.category("knowledge").threshold == 0.05


def test_mean_drop_fails_alone_when_spread_over_categories():
    # every category drops a little (5 of 100), none beyond 0.15, but the mean beyond 0.01
    paired = {c: {"category": c, "n11": 85, "n10": 5, "n01": 0, "n00": 10} for c in CATEGORIES}
    spec = RegressionSpec.model_validate({"thresholds": {"maxCategoryDrop": 0.15, "maxMeanDrop": 0.01}})
    result = evaluate_gate(paired, spec)
    assert all(c.passed for c in result.categories)
    assert result.verdict == "Failed"
    assert len(result.reasons) == 1 and result.reasons[0].startswith("mean general score dropped")
    assert result.task_gain is None


def test_min_task_gain_and_warn_mode():
    paired = {
        "k": {"category": "knowledge", "n11": 50, "n10": 0, "n01": 0, "n00": 10},
        "t": {"category": "task", "n11": 20, "n10": 0, "n01": 30, "n00": 10},
    }
    assert evaluate_gate(paired, RegressionSpec()).verdict == "Passed"
    demanding = RegressionSpec.model_validate({"thresholds": {"minTaskGain": 0.6}})
    short = evaluate_gate(paired, demanding)
    assert short.verdict == "NoTaskGain"  # kept its skills, learned too little: not a forgetting failure
    assert short.reasons and "minTaskGain" in short.reasons[0]
    warn = RegressionSpec.model_validate({"thresholds": {"minTaskGain": 0.6}, "onRegression": "Warn"})
    warned = evaluate_gate(paired, warn)
    assert warned.verdict == "NoTaskGain"  # Warn softens forgetting, never a model that did not learn
    assert warned.reasons == short.reasons


KEPT = {"k": {"category": "knowledge", "n11": 50, "n10": 0, "n01": 0, "n00": 10}}


@pytest.mark.parametrize("gained, lost, verdict", [
    (0, 0, "NoTaskGain"),   # nothing moved: the untouched base model must not pass as a fine-tune
    (3, 0, "NoTaskGain"),   # +0.05 on 60 items: the interval's lower bound is not above 0
    (6, 3, "NoTaskGain"),   # a net gain of +0.05 with churn: no evidence either
    (12, 0, "Passed"),      # +0.20: the lower bound is well above 0
])
def test_by_default_the_task_gain_needs_evidence(gained, lost, verdict):
    paired = {**KEPT, "t": {"category": "task", "n11": 10, "n10": lost, "n01": gained, "n00": 50 - gained - lost}}
    result = evaluate_gate(paired, RegressionSpec())
    assert result.verdict == verdict
    assert (result.task_gain_lower > 0) is (verdict == "Passed")
    if verdict == "NoTaskGain":
        assert "no evidence the model learned the target task" in result.reasons[-1]
        assert result.to_status()["taskGainLower"] == result.task_gain_lower


def test_an_explicit_min_task_gain_of_zero_keeps_the_old_rule():
    paired = {**KEPT, "t": {"category": "task", "n11": 10, "n10": 0, "n01": 0, "n00": 50}}
    spec = RegressionSpec.model_validate({"thresholds": {"minTaskGain": 0}})
    assert evaluate_gate(paired, spec).verdict == "Passed" and evaluate_gate(paired, spec).reasons == []
    worse = {**KEPT, "t": {"category": "task", "n11": 10, "n10": 3, "n01": 0, "n00": 47}}
    assert evaluate_gate(worse, spec).verdict == "NoTaskGain"  # the point estimate fell below 0


def test_forgetting_outranks_a_missing_task_gain_and_both_reasons_are_given():
    paired = {"k": {"category": "knowledge", "n11": 20, "n10": 40, "n01": 0, "n00": 0},
              "t": {"category": "task", "n11": 10, "n10": 0, "n01": 0, "n00": 50}}
    result = evaluate_gate(paired, RegressionSpec())
    assert result.verdict == "Failed"
    assert any("knowledge" in r for r in result.reasons) and "no evidence" in result.reasons[-1]


def test_a_suite_without_a_task_category_needs_no_task_gain():
    assert evaluate_gate(KEPT, RegressionSpec()).verdict == "Passed"


def test_seeded_and_deterministic():
    paired = paired_counts(synthetic_items(BASE, 5), synthetic_items({**BASE, "safety": 0.7}, 6))
    a = evaluate_gate(paired, RegressionSpec(), seed=3).to_dict()
    b = evaluate_gate(paired, RegressionSpec(), seed=3).to_dict()
    c = evaluate_gate(paired, RegressionSpec(), seed=4).to_dict()
    assert a == b
    assert a != c  # the seed drives the resampling


def test_to_status_matches_gate_status():
    paired = paired_counts(synthetic_items(BASE, 7), synthetic_items({**BASE, "reasoning": 0.3}, 8))
    result = evaluate_gate(paired, RegressionSpec())
    status = result.to_status()
    GateStatus.model_validate(status)
    assert status["verdict"] == "Failed"
    assert {"category", "baseline", "final", "drop", "dropUpper", "dropLower", "threshold", "passed"} <= set(
        status["categories"][0]
    )
    assert [c["category"] for c in status["categories"]] == list(CATEGORIES)
    assert "taskGain" in status and "meanDrop" in status


@pytest.mark.parametrize(
    "paired, message",
    [
        ({}, "empty"),
        ({"a": {"category": "cooking", "n11": 1, "n10": 0, "n01": 0, "n00": 0}}, "not a known category"),
        ({"a": {"category": "format", "n11": -1, "n10": 0, "n01": 0, "n00": 0}}, r"paired\['a'\].n11"),
        ({"a": {"category": "format", "n11": 0, "n10": 0, "n01": 0, "n00": 0}}, "no items"),
    ],
)
def test_bad_tables_are_rejected_with_the_field_named(paired, message):
    with pytest.raises(GateError, match=message):
        evaluate_gate(paired, RegressionSpec())


def test_fast_enough_in_pure_python():
    paired = {
        f"t{i}": {"category": (*CATEGORIES, "task")[i % 6], "n11": 300, "n10": 40, "n01": 35, "n00": 125}
        for i in range(15)
    }
    start = time.perf_counter()
    evaluate_gate(paired, RegressionSpec(bootstrapSamples=2000))
    assert time.perf_counter() - start < 2.0
