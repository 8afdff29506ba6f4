"""Every metric the Grafana dashboard and the alert rules query is one the code exports.

Exported names are read from the registries themselves: `ForgettingMetrics().registry` (operator,
`forgetless run --metrics-port`) and `forgetless_trainer.live_metrics.REGISTRY` (trainer pods).
Counters are exposed with `_total`, histograms with `_bucket/_sum/_count`. The label matchers and
`by (...)` labels each query uses must exist on its metrics too, so a renamed metric or label can
never silently empty a panel or silence an alert.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Iterator

import pytest
import yaml

from forgetless.metrics import ForgettingMetrics
from forgetless.sweep_metrics import SweepMetrics
from tests.conftest import REPO_ROOT, tool_or_skip

sys.path.insert(0, str(REPO_ROOT / "charts" / "forgetless" / "hack"))
import chart_sync  # noqa: E402  (charts/forgetless/hack/chart_sync.py: render + derived files)

CHART = REPO_ROOT / "charts" / "forgetless"
DASHBOARD = CHART / "dashboards" / "forgetless.json"
DASHBOARD_COPY = REPO_ROOT / "dashboards" / "forgetless.json"
PLAIN_RULES = REPO_ROOT / "gitops" / "prometheus" / "forgetless.rules.yaml"

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan", "le"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def exported() -> dict[str, set[str]]:
    """Exposed sample name -> label names, from the operator's and the trainer's registries."""
    live_metrics = pytest.importorskip("forgetless_trainer.live_metrics")
    names: dict[str, set[str]] = {}
    for registry in (ForgettingMetrics().registry, SweepMetrics().registry, live_metrics.REGISTRY):
        for collector in list(registry._collector_to_names):  # noqa: SLF001 - the collectors and their label names
            labelnames = set(getattr(collector, "_labelnames", ()))
            for family in collector.describe():
                suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count", ""],
                            "summary": ["_sum", "_count", ""]}.get(family.type, [""])
                for suffix in suffixes:
                    names[family.name + suffix] = labelnames | ({"le"} if suffix == "_bucket" else set())
    return names


def test_exported_names_are_read_from_the_code() -> None:
    names = exported()
    assert "forgetless_gate_verdicts_total" in names and "forgetless_gate_verdicts" not in names
    assert "forgetless_stage_duration_seconds_bucket" in names
    assert "forgetless_train_steps_total" in names and "forgetless_probe_score_ratio" in names
    assert names["forgetless_forgetting_ratio"] == {"namespace", "finetunejob", "category"}


# --------------------------------------------------------------------------- PromQL scanning


def strip_strings(expr: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)


def selectors(expr: str) -> Iterator[tuple[str | None, list[str], list[str]]]:
    """(metric or None, label names matched, raw matcher texts) for every `metric{...}` / `{...}`."""
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}", expr):
        matchers = [m.strip() for m in re.split(r",(?=(?:[^\"]*\"[^\"]*\")*[^\"]*$)", match.group(2)) if m.strip()]
        labels = [re.match(r"([A-Za-z_][A-Za-z0-9_]*)", m).group(1) for m in matchers]
        yield match.group(1), labels, matchers


def metric_names(expr: str) -> set[str]:
    """Metric identifiers in a PromQL expression (functions, keywords, labels, durations, $vars removed)."""
    text = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", strip_strings(expr))
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = GROUPING.sub(" ", text)
    names = set()
    for match in re.finditer(r"(?<![A-Za-z0-9_.:])([A-Za-z_:][A-Za-z0-9_:]*)(?=\s*(\(?))", text):
        name, paren = match.group(1), match.group(2)
        if paren or name.lower() in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def test_scanner_finds_metrics_and_ignores_the_rest() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(forgetless_stage_duration_seconds_bucket'
            '{namespace=~"$namespace", stage!="x,y"}[$__rate_interval]))) / on (stage) group_left up offset 5m')
    assert metric_names(expr) == {"forgetless_stage_duration_seconds_bucket", "up"}
    assert list(selectors(strip_strings(expr)))[0][1] == ["namespace", "stage"]


def check_query(expr: str, names: dict[str, set[str]], where: str) -> list[str]:
    problems = []
    used = metric_names(expr)
    if not used and "{" not in expr:
        problems.append(f"{where}: no metric in {expr!r}")
    for name in used:
        if name not in names:
            problems.append(f"{where}: {name} is not exported by ForgettingMetrics or live_metrics")
    available = set().union(*(names.get(n, set()) for n in used)) if used else set()
    for metric, labels, matchers in selectors(expr):
        if metric is None:
            name_matchers = [m for m in matchers if m.startswith("__name__")]
            regex = re.match(r'__name__\s*=~\s*"(.*)"', name_matchers[0]).group(1) if name_matchers else None
            hits = [n for n in names if regex and re.fullmatch(regex, n)]
            if not hits:
                problems.append(f"{where}: {{{', '.join(matchers)}}} selects no exported metric")
            for label in labels:
                if label != "__name__" and not any(label in names[h] for h in hits):
                    problems.append(f"{where}: no metric matching {regex!r} has label {label!r}")
            continue
        for label in labels:
            if metric in names and label not in names[metric]:
                problems.append(f"{where}: {metric} has no label {label!r} (labels: {sorted(names[metric])})")
    for _, grouping in GROUPING.findall(strip_strings(expr)):
        for label in filter(None, (g.strip() for g in grouping.split(","))):
            if label not in available:
                problems.append(f"{where}: grouping label {label!r} is on none of {sorted(used)}")
    return problems


def test_check_query_reports_renames() -> None:
    names = exported()
    assert check_query("sum by (phase) (forgetless_finetunejobs)", names, "ok") == []
    assert check_query("forgetless_train_loss_renamed", names, "p")
    assert check_query('forgetless_train_loss{job="x"}', names, "p")
    assert check_query("sum by (stage) (forgetless_train_loss)", names, "p")
    assert check_query('{__name__=~"nothing_.+"}', names, "p")
    assert check_query('{__name__=~"forgetless_.+", finetunejob!=""}', names, "ok") == []


# --------------------------------------------------------------------------- the dashboard


def dashboard_queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict]) -> Iterator[dict]:
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    for panel in walk(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = re.fullmatch(r"label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\)", query.strip())
        assert match, f"variable {variable['name']}: unsupported query {query!r}"
        selector, label = match.groups()
        yield f"variable {variable['name']}", selector
        yield f"variable {variable['name']} label", f"{selector}, {label}"


def test_dashboard_queries_use_exported_metrics_and_labels() -> None:
    names = exported()
    dashboard = json.loads(DASHBOARD.read_text())
    problems = []
    for where, expr in dashboard_queries(dashboard):
        if where.endswith(" label"):
            selector, label = expr.rsplit(", ", 1)
            used = metric_names(selector) or {n for n in names if n.startswith("forgetless_")}
            if not any(label in names.get(n, set()) for n in used):
                problems.append(f"{where}: label {label!r} is on none of the selected metrics")
            continue
        problems += check_query(expr, names, where)
    assert not problems, "\n".join(problems)


def test_dashboard_covers_the_issue_panels() -> None:
    text = DASHBOARD.read_text()
    for name in ("forgetless_baseline_score_ratio", "forgetless_final_score_ratio", "forgetless_forgetting_ratio",
                 "forgetless_gate_verdicts_total", "forgetless_finetunejobs", "forgetless_stage_duration_seconds",
                 "forgetless_train_loss", "forgetless_train_tokens_per_second", "forgetless_probe_score_ratio",
                 "forgetless_job_progress_ratio", "forgetless_job_remaining_seconds"):
        assert name in text, f"the dashboard has no panel for {name}"
    dashboard = json.loads(text)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "namespace", "job"} <= set(variables)
    assert variables["job"]["query"]["query"].endswith(", finetunejob)")
    names = exported()
    for where, expr in dashboard_queries(dashboard):
        per_job = [n for n in metric_names(expr) if "finetunejob" in names.get(n, set())]
        if per_job and not where.startswith("variable"):
            assert 'finetunejob=~"$job"' in expr, f"{where} ignores the job variable"
        if metric_names(expr) and not where.startswith("variable"):
            assert 'namespace=~"$namespace"' in expr, f"{where} ignores the namespace variable"


def test_dashboard_layout_and_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "forgetless"
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {panel['title']!r} overlaps another"
        cells |= mine
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_copy_equals_the_chart_source() -> None:
    assert DASHBOARD_COPY.read_bytes() == DASHBOARD.read_bytes(), "run python charts/forgetless/hack/chart_sync.py"


# --------------------------------------------------------------------------- the alert rules


def test_alert_rules_use_exported_metrics_and_labels() -> None:
    names = exported()
    groups = yaml.safe_load(PLAIN_RULES.read_text())
    problems = []
    for group in groups["groups"]:
        for rule in group["rules"]:
            problems += check_query(rule["expr"], names, f"rule {rule['alert']}")
            for text in rule.get("annotations", {}).values():
                for label in re.findall(r"\$labels\.([A-Za-z_][A-Za-z0-9_]*)", text):
                    kept = {g.strip() for _, grp in GROUPING.findall(rule["expr"]) for g in grp.split(",")}
                    if kept and label not in kept:
                        problems.append(f"rule {rule['alert']}: annotation uses {label!r}, dropped by the aggregation")
    assert not problems, "\n".join(problems)


def test_rendered_prometheus_rule_matches_the_plain_file() -> None:
    helm = tool_or_skip("helm")
    assert chart_sync.render_rule_groups(helm) == yaml.safe_load(PLAIN_RULES.read_text())


GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "30s", "$namespace": ".*", "$job": ".*"}


def test_dashboard_queries_are_valid_promql(tmp_path) -> None:
    """promtool parses every panel query (Grafana's variables replaced by typical values)."""
    import subprocess

    promtool = tool_or_skip("promtool")
    rules = []
    for i, (where, expr) in enumerate(q for q in dashboard_queries(json.loads(DASHBOARD.read_text()))
                                      if q[0].startswith("panel")):
        for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr, "labels": {"panel": where[:60]}})
    path = tmp_path / "dashboard-queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
