"""Alert rules: one source (charts/forgetless/templates/_alerts.tpl), checked and unit-tested by promtool.

`promtool check rules` validates the PrometheusRule rendered with each values file and the plain
rules file; `promtool test rules` feeds synthetic series through the rendered rules and checks which
alerts fire, with which labels and rendered annotations, for the default thresholds and for the
all-features values (other thresholds, severity, extra alert labels).
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, tool_or_skip

sys.path.insert(0, str(REPO_ROOT / "charts" / "forgetless" / "hack"))
import chart_sync  # noqa: E402  (charts/forgetless/hack/chart_sync.py: render + derived files)

CHART = REPO_ROOT / "charts" / "forgetless"
PLAIN_RULES = REPO_ROOT / "gitops" / "prometheus" / "forgetless.rules.yaml"
ALERTS = {
    "ForgetlessGateBlocked",
    "ForgetlessForgettingAboveThreshold",
    "ForgetlessTrainingStalled",
    "ForgetlessReconcileErrors",
    "ForgetlessJobFailed",
}




@pytest.fixture(scope="module")
def helm() -> str:
    return tool_or_skip("helm")


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool_or_skip("promtool")


def merged_values(values_file: Path | None) -> dict[str, Any]:
    def merge(base: dict, patch: dict) -> dict:
        out = copy.deepcopy(base)
        for key, value in patch.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if values_file is not None:
        values = merge(values, yaml.safe_load(values_file.read_text()) or {})
    return values


def minutes(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m|h)", duration)
    assert match, f"unsupported duration {duration!r} in this test"
    return int(match.group(1)) * {"s": 1 / 60, "m": 1, "h": 60}[match.group(2)]


# ---------------------------------------------------------------- a tiny Prometheus template renderer
# Only what our annotations use: {{ $labels.NAME }}, {{ $value }}, {{ $value | humanize* }}.
# Formatting follows Prometheus' template/template.go. An unknown label raises (Prometheus would print
# "<no value>"), so a label typo in an annotation fails here.


def _go_float(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e21 else repr(v)


def humanize(v: float) -> str:
    if v == 0 or math.isnan(v) or math.isinf(v):
        return "%.4g" % v
    prefix = ""
    if abs(v) >= 1:
        for p in ("k", "M", "G", "T", "P", "E", "Z", "Y"):
            if abs(v) < 1000:
                break
            prefix, v = p, v / 1000
    else:
        for p in ("m", "u", "n", "p", "f", "a", "z", "y"):
            if abs(v) >= 1:
                break
            prefix, v = p, v * 1000
    return "%.4g%s" % (v, prefix)


def humanize_duration(v: float) -> str:
    if v < 1:
        raise NotImplementedError("sub-second durations are not used by these tests")
    d = int(v)
    days, hours, mins, secs = d // 86400, (d // 3600) % 24, (d // 60) % 60, d % 60
    if days:
        return f"{days}d {hours}h {mins}m {secs}s"
    if hours:
        return f"{hours}h {mins}m {secs}s"
    if mins:
        return f"{mins}m {secs}s"
    return "%.4gs" % v


FUNCS = {"humanize": humanize, "humanizeDuration": humanize_duration, "humanizePercentage": lambda v: "%.4g%%" % (v * 100)}


def render_annotation(template: str, labels: dict[str, str], value: float) -> str:
    def action(match: re.Match) -> str:
        expr = match.group(1).strip()
        if expr.startswith("$labels."):
            return labels[expr[len("$labels."):]]
        parts = [p.strip() for p in expr.split("|")]
        if parts[0] != "$value" or len(parts) > 2:
            raise NotImplementedError(f"template action {expr!r}")
        return FUNCS[parts[1]](value) if len(parts) == 2 else _go_float(value)

    return re.sub(r"\{\{(.*?)\}\}", action, template)


def test_renderer_matches_prometheus_formatting() -> None:
    assert humanize(1 / 60) == "16.67m" and humanize(1234567) == "1.235M" and humanize(3) == "3"
    assert humanize_duration(1140) == "19m 0s" and humanize_duration(90061) == "1d 1h 1m 1s"
    assert FUNCS["humanizePercentage"](0.08) == "8%"
    assert render_annotation("{{ $labels.a }}={{ $value }}", {"a": "x"}, 2.0) == "x=2"
    with pytest.raises(KeyError):
        render_annotation("{{ $labels.typo }}", {"a": "x"}, 1.0)


# ---------------------------------------------------------------- promtool check rules


def write_rules(tmp_path: Path, groups: dict) -> Path:
    path = tmp_path / "forgetless.rules.yaml"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


@pytest.mark.parametrize("values_name", ["default", "all-features"])
def test_promtool_checks_the_rendered_rules(helm: str, promtool: str, tmp_path: Path, values_name: str) -> None:
    groups = chart_sync.render_rule_groups(helm, values=(CHART / "ci" / f"{values_name}-values.yaml",))
    assert {r["alert"] for g in groups["groups"] for r in g["rules"]} == ALERTS
    proc = subprocess.run([promtool, "check", "rules", str(write_rules(tmp_path, groups))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in proc.stdout


def test_plain_rules_file_is_the_chart_rendering(helm: str, promtool: str) -> None:
    assert PLAIN_RULES.read_text() == chart_sync.plain_rules(helm), "run python charts/forgetless/hack/chart_sync.py"
    proc = subprocess.run([promtool, "check", "rules", str(PLAIN_RULES)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_rejects_a_broken_rule(promtool: str, tmp_path: Path) -> None:
    """The check above can fail: a PromQL syntax error is reported."""
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum by (namespace (forgetless_gate_passed)"}]}]}
    proc = subprocess.run([promtool, "check", "rules", str(write_rules(tmp_path, broken))], capture_output=True, text=True)
    assert proc.returncode != 0


def test_alerts_can_be_switched_off(helm: str) -> None:
    groups = chart_sync.render_rule_groups(helm, "prometheusRule.alerts.jobFailed.enabled=false",
                                     "prometheusRule.alerts.gateBlocked.enabled=false")
    assert {r["alert"] for g in groups["groups"] for r in g["rules"]} == ALERTS - {"ForgetlessJobFailed", "ForgetlessGateBlocked"}


# ---------------------------------------------------------------- promtool test rules

FORGETTING = {"knowledge": 0.08, "format": 0.03, "safety": 0.05, "reasoning": 0.15, "mean": 0.03, "task": 0.9}
STALLED_AT = 60  # the stalled trainer's last step: t = 60 s
SERIES_LEN = 200  # minutes


def input_series() -> list[dict[str, str]]:
    n = SERIES_LEN
    series = [
        ('forgetless_gate_passed{namespace="ml", finetunejob="blocked"}', f"0x{n}"),
        ('forgetless_gate_passed{namespace="ml", finetunejob="passed"}', f"1x{n}"),
        # trainer: one stalled since t=60 s, one stepping every minute, one not started (0)
        ('forgetless_train_last_step_timestamp_seconds{namespace="ml", finetunejob="stalled", pod="a"}', f"{STALLED_AT}x{n}"),
        ('forgetless_train_last_step_timestamp_seconds{namespace="ml", finetunejob="running", pod="b"}', f"0+60x{n}"),
        ('forgetless_train_last_step_timestamp_seconds{namespace="ml", finetunejob="loading", pod="c"}', f"0x{n}"),
        ('forgetless_reconcile_errors_total{namespace="broken"}', f"0+1x{n}"),
        ('forgetless_reconcile_errors_total{namespace="fine"}', f"5x{n}"),
        ('forgetless_finetunejobs{namespace="ml", phase="Failed"}', f"1x{n}"),
        ('forgetless_finetunejobs{namespace="ok", phase="Failed"}', f"0x{n}"),
        ('forgetless_finetunejobs{namespace="ok", phase="Succeeded"}', f"3x{n}"),
    ]
    series += [
        (f'forgetless_forgetting_ratio{{namespace="ml", finetunejob="forgetful", category="{c}"}}', f"{v}x{n}")
        for c, v in FORGETTING.items()
    ]
    return [{"series": s, "values": v} for s, v in series]


def expected_alerts(alerts_cfg: dict, at_minute: float) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Which alerts fire at `at_minute` for the input series, derived from the thresholds in values."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {name: [] for name in ALERTS}

    def holds_since(first_true_minute: float, cfg: dict) -> bool:
        return at_minute >= first_true_minute + minutes(cfg["for"])

    if holds_since(0, alerts_cfg["gateBlocked"]):
        out["ForgetlessGateBlocked"].append(({"namespace": "ml", "finetunejob": "blocked"}, 0.0))
    forgetting = alerts_cfg["forgetting"]
    if holds_since(0, forgetting):
        for category, value in FORGETTING.items():
            limit = {"task": None, "mean": forgetting["maxMeanDrop"]}.get(category, forgetting["maxCategoryDrop"])
            if limit is not None and value > limit:
                out["ForgetlessForgettingAboveThreshold"].append(
                    ({"namespace": "ml", "finetunejob": "forgetful", "category": category}, value))
    stalled = alerts_cfg["trainingStalled"]
    # time() - 60 > minutes*60 first holds at the evaluation minute after minutes + 1
    first_stalled = math.floor((stalled["minutes"] * 60 + STALLED_AT) / 60) + 1
    if holds_since(first_stalled, stalled):
        out["ForgetlessTrainingStalled"].append(({"namespace": "ml", "finetunejob": "stalled"}, at_minute * 60 - STALLED_AT))
    errors = alerts_cfg["reconcileErrors"]
    if holds_since(1, errors):  # the rate is positive from the second sample on
        out["ForgetlessReconcileErrors"].append(({"namespace": "broken"}, 1 / 60))
    if holds_since(0, alerts_cfg["jobFailed"]):
        out["ForgetlessJobFailed"].append(({"namespace": "ml"}, 1.0))
    return out


ALERT_KEYS = {"ForgetlessGateBlocked": "gateBlocked", "ForgetlessForgettingAboveThreshold": "forgetting",
              "ForgetlessTrainingStalled": "trainingStalled", "ForgetlessReconcileErrors": "reconcileErrors",
              "ForgetlessJobFailed": "jobFailed"}


def alert_checks(groups: dict, values: dict, at_minute: float, fired: dict[str, list[tuple[dict, float]]]) -> list[dict]:
    """promtool `alert_rule_test` entries: exactly `fired` (labels, value) per alert at `at_minute`."""
    rules = {r["alert"]: r for g in groups["groups"] for r in g["rules"]}
    cfg = values["prometheusRule"]["alerts"]
    checks = []
    for name, alerts in sorted(fired.items()):
        exp = []
        for labels, value in alerts:
            all_labels = {**labels, "severity": cfg[ALERT_KEYS[name]]["severity"], **values["prometheusRule"]["alertLabels"]}
            annotations = {k: render_annotation(t, labels, value) for k, t in rules[name]["annotations"].items()}
            exp.append({"exp_labels": all_labels, "exp_annotations": annotations})
        checks.append({"eval_time": f"{int(at_minute)}m", "alertname": name, "exp_alerts": exp})
    return checks


def run_promtool_test(promtool: str, tmp_path: Path, groups: dict, series: list[dict], checks: list[dict]) -> None:
    rules_path = write_rules(tmp_path, groups)
    test_file = tmp_path / "test.yaml"
    tests = [{"interval": "1m", "input_series": series, "alert_rule_test": checks}]
    test_file.write_text(yaml.safe_dump({"rule_files": [rules_path.name], "evaluation_interval": "1m", "tests": tests}))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("values_name", ["default", "all-features"])
def test_alerts_fire_exactly_when_thresholds_are_crossed(helm: str, promtool: str, tmp_path: Path, values_name: str) -> None:
    values_file = CHART / "ci" / f"{values_name}-values.yaml"
    values = merged_values(values_file)
    groups = chart_sync.render_rule_groups(helm, values=(values_file,))
    cfg = values["prometheusRule"]["alerts"]
    late = max(cfg["trainingStalled"]["minutes"] + 2 + minutes(cfg["trainingStalled"]["for"]),
               1 + minutes(cfg["reconcileErrors"]["for"]), minutes(cfg["forgetting"]["for"])) + 3
    assert late < SERIES_LEN
    early_fired, late_fired = expected_alerts(cfg, 3), expected_alerts(cfg, late)
    assert {name for name, alerts in late_fired.items() if alerts} == ALERTS  # every alert is exercised firing...
    assert not early_fired["ForgetlessTrainingStalled"] and not early_fired["ForgetlessReconcileErrors"]  # ...and quiet early
    checks = alert_checks(groups, values, 3, early_fired) + alert_checks(groups, values, late, late_fired)
    run_promtool_test(promtool, tmp_path, groups, input_series(), checks)


def test_alerts_fire_on_what_the_operator_exports(helm: str, promtool: str, tmp_path: Path) -> None:
    """The operator's real /metrics output for a blocked job, fed to the rules, raises the expected alerts."""
    operator_metrics = pytest.importorskip("forgetless_operator.metrics")
    from prometheus_client.parser import text_string_to_metric_families

    baseline = {"knowledge": 0.9, "format": 1.0, "safety": 1.0, "instruction_following": 0.8, "reasoning": 0.5, "task": 0.1}
    final = {"knowledge": 0.7, "format": 0.99, "safety": 1.0, "instruction_following": 0.8, "reasoning": 0.5, "task": 0.6}
    status = {"phase": "Blocked", "baselineScores": baseline, "finalScores": final,
              "gate": {"verdict": "Failed", "meanDrop": 0.042, "taskGain": 0.5, "reasons": ["knowledge dropped"]}}
    metrics = operator_metrics.OperatorMetrics()
    metrics.observe("ml", "support", {}, status)
    series = []
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ", ".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            series.append({"series": f"{sample.name}{{{labels}}}", "values": f"{sample.value}x30"})
    assert series, "the operator exported nothing"

    values = merged_values(None)
    groups = chart_sync.render_rule_groups(helm)
    cfg = values["prometheusRule"]["alerts"]["forgetting"]
    general = [c for c in baseline if c != "task"]
    drops = {c: baseline[c] - final[c] for c in general}
    drops["mean"] = sum(baseline[c] for c in general) / len(general) - sum(final[c] for c in general) / len(general)
    forgetting = [({"namespace": "ml", "finetunejob": "support", "category": c}, d) for c, d in sorted(drops.items())
                  if d > (cfg["maxMeanDrop"] if c == "mean" else cfg["maxCategoryDrop"])]
    assert {labels["category"] for labels, _ in forgetting} == {"knowledge", "mean"}
    fired = {name: [] for name in ALERTS}
    fired["ForgetlessGateBlocked"] = [({"namespace": "ml", "finetunejob": "support"}, 0.0)]
    fired["ForgetlessForgettingAboveThreshold"] = forgetting
    run_promtool_test(promtool, tmp_path, groups, series, alert_checks(groups, values, 5, fired))


def test_thresholds_come_from_values(helm: str) -> None:
    groups = chart_sync.render_rule_groups(helm, "prometheusRule.alerts.forgetting.maxCategoryDrop=0.125",
                                     "prometheusRule.alerts.forgetting.maxMeanDrop=0.0625",
                                     "prometheusRule.alerts.trainingStalled.minutes=7",
                                     "prometheusRule.alerts.reconcileErrors.window=3m",
                                     "prometheusRule.alertLabels.team=ml")
    rules = {r["alert"]: r for g in groups["groups"] for r in g["rules"]}
    assert "> 0.125" in rules["ForgetlessForgettingAboveThreshold"]["expr"]
    assert "> 0.0625" in rules["ForgetlessForgettingAboveThreshold"]["expr"]
    assert rules["ForgetlessTrainingStalled"]["expr"].endswith("> 420")
    assert "[3m]" in rules["ForgetlessReconcileErrors"]["expr"]
    assert all(r["labels"]["team"] == "ml" for r in rules.values())
