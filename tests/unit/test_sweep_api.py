"""The FineTuneSweep API: valid sweeps pass, bad ones are rejected naming the field, in pydantic and in CEL."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from forgetless.api.documents import load_manifests, validate_sweep_document
from forgetless.api.manifests import ManifestError
from forgetless.api.schema import MAX_JOB_NAME_LENGTH
from forgetless.api.sweep import MAX_CANDIDATES, MAX_SWEEP_NAME_LENGTH, candidate_spec, trial_name
from forgetless.api.sweep_crd import render_sweep_crd, render_sweep_crd_yaml, sweep_crd_targets

from .test_crd import _apply_defaults, _cel_failures, _walk, needs_cel
from .test_schema import _apply

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sweep-support.yaml"


def sweep(**patch: Any) -> dict[str, Any]:
    base = {
        "apiVersion": "forgetless.dev/v1alpha1",
        "kind": "FineTuneSweep",
        "metadata": {"name": "s"},
        "spec": {
            "template": {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}}},
            "searchSpace": [{"field": "method.lora.r", "values": [4.0, 16.0]}],
        },
    }
    return _apply(base, patch) if patch else base


def _space(*dimensions: dict[str, Any], **spec: Any) -> dict[str, Any]:
    document = sweep()
    document["spec"]["searchSpace"] = list(dimensions)
    document["spec"].update(spec)
    return document


# (name, document, field the message must name, part of the message)
BAD = [
    ("empty space", _space(), "spec.searchSpace", "at least 1"),
    ("unknown field", _space({"field": "method.lora.rank", "values": [4.0]}), "spec.searchSpace[0].field", "method.lora.r"),
    ("unknown key in a dimension", _space({"field": "method.lora.r", "vals": [4.0]}), "spec.searchSpace[0].vals", "unknown field"),
    ("maxParallel zero", _space({"field": "method.lora.r", "values": [4.0]}, maxParallel=0), "spec.maxParallel", "greater than or equal to 1"),
    ("rank zero", _space({"field": "method.lora.r", "values": [0.0, 4.0]}), "spec.searchSpace[0].values", "method.lora.r"),
    ("fraction too big", _space({"field": "mitigation.dataMixing.generalFraction", "min": 0.1, "max": 0.95, "step": 0.05}),
     "spec.searchSpace[0].min", "generalFraction"),
    ("values and range", _space({"field": "method.lora.r", "values": [4.0], "min": 1.0, "max": 8.0}), "spec.searchSpace[0]", "either values"),
    ("neither values nor range", _space({"field": "method.lora.r"}), "spec.searchSpace[0]", "either values"),
    ("min without max", _space({"field": "training.learningRate", "min": 0.001}), "spec.searchSpace[0].max", "both min and max"),
    ("min above max", _space({"field": "training.learningRate", "min": 0.01, "max": 0.001, "log": True},
                             strategy={"type": "random", "maxTrials": 3}), "spec.searchSpace[0].min", "exceed"),
    ("log with step", _space({"field": "training.learningRate", "min": 0.001, "max": 0.01, "step": 0.001, "log": True}),
     "spec.searchSpace[0].step", "exclude"),
    ("log from zero", _space({"field": "training.learningRate", "min": 0.0, "max": 0.01, "log": True},
                             strategy={"type": "random", "maxTrials": 3}), "spec.searchSpace[0]", "log needs"),
    ("duplicate field", _space({"field": "method.lora.r", "values": [4.0]}, {"field": "method.lora.r", "values": [8.0]}),
     "spec.searchSpace", "once"),
    ("grid over a continuous range", _space({"field": "training.learningRate", "min": 0.001, "max": 0.01}),
     "spec.searchSpace", "grid needs"),
    ("random without maxTrials", _space({"field": "method.lora.r", "values": [4.0]}, strategy={"type": "random"}),
     "spec.strategy.maxTrials", "maxTrials"),
    ("halving over a range without maxTrials", _space({"field": "training.learningRate", "min": 0.001, "max": 0.01},
                                                      strategy={"type": "successiveHalving"}), "spec.strategy", "maxTrials"),
    ("eta one", _space({"field": "method.lora.r", "values": [4.0]}, strategy={"type": "successiveHalving", "eta": 1}),
     "spec.strategy.eta", "greater than or equal to 2"),
    ("include with unknown key", _space({"field": "method.lora.r", "values": [4.0]}, include=[{"training.foo": 1.0}]),
     "spec.include[0]", "training.foo"),
    ("include with a bad value", _space({"field": "method.lora.r", "values": [4.0]}, include=[{"training.epochs": 0.0}]),
     "spec.include[0]", "training.epochs"),
    ("name too long", sweep(metadata={"name": "a" * (MAX_SWEEP_NAME_LENGTH + 1)}), "metadata.name", "at most"),
    ("bad template", sweep(spec={"template": {"method": {"type": "full", "lora": {"r": 4}}}}), "spec.template.method", ""),
]


@pytest.mark.parametrize("name,document,field,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_sweeps_are_rejected_naming_the_field(name, document, field, fragment):
    with pytest.raises(ManifestError) as caught:
        validate_sweep_document(document)
    lines = caught.value.lines
    assert any(line.startswith(field) and fragment in line for line in lines), lines


def test_the_example_is_valid_and_its_space_expands_to_16():
    (found,) = load_manifests(EXAMPLE)
    assert found.kind == "FineTuneSweep"
    assert found.spec.strategy.type == "successiveHalving" and found.spec.strategy.eta == 3
    assert [len(d.points()) for d in found.spec.search_space] == [2, 2, 2, 2]


def test_validate_command_accepts_the_sweep_and_rejects_a_bad_one(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_space({"field": "method.lora.r", "values": [4.0]}, maxParallel=0)))
    cmd = [sys.executable, "-m", "forgetless_cli", "validate"]
    ok = subprocess.run([*cmd, str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "ok (support-sweep)" in ok.stdout
    proc = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "spec.maxParallel" in proc.stderr


def test_candidate_spec_applies_the_policy_and_names_of_trials_fit():
    (found,) = load_manifests(EXAMPLE)
    spec = candidate_spec(found.spec.template, {"method.lora.r": 4.0, "training.epochs": 2.0,
                                                "mitigation.ewc.lambda": 50.0})
    assert spec.method.lora.r == 4 and isinstance(spec.method.lora.r, int)
    assert spec.training.epochs == 2.0 and spec.mitigation.ewc.lambda_ == 50.0
    assert spec.training.learning_rate == 1e-3  # the template's value stays
    assert found.spec.template.method.lora.r == 16  # the template is not changed
    assert len(trial_name("a" * MAX_SWEEP_NAME_LENGTH, MAX_CANDIDATES - 1)) == MAX_JOB_NAME_LENGTH
    assert trial_name("support-sweep", 3) == "support-sweep-t3"


# ----------------------------------------------------------------- the CRD


def test_committed_sweep_crds_match_the_models():
    for target in sweep_crd_targets(REPO):
        assert target.read_text(encoding="utf-8") == render_sweep_crd_yaml(), f"{target} is stale: run `forgetless crd --write`"


def test_sweep_crd_is_valid_structural_and_has_its_columns():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    crd = render_sweep_crd()
    kubernetes_validate.validate(crd, "1.35", strict=True)
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Phase", "Trials", "Best", "Task", "Kept", "Age"]
    assert crd["spec"]["names"]["shortNames"] == ["fts"] and crd["spec"]["names"]["plural"] == "finetunesweeps"
    root = version["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    assert spec["properties"]["maxParallel"]["minimum"] == 1
    assert spec["properties"]["searchSpace"]["minItems"] == 1
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "const", "$defs"}
    for path, node in _walk(root):
        assert not forbidden & node.keys(), path


def _sweep_root() -> dict[str, Any]:
    return render_sweep_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _cel_verdict(document: dict[str, Any]) -> list[str]:
    root = _sweep_root()
    return _cel_failures(_apply_defaults(copy.deepcopy(document), root), root)


def _schema_failures(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """The OpenAPI field constraints an API server checks before CEL (the few sweeps use)."""
    failures = []
    if isinstance(value, (int, float)) and "minimum" in node and value < node["minimum"]:
        failures.append(f"{path}: below minimum")
    if isinstance(value, str) and "enum" in node and value not in node["enum"]:
        failures.append(f"{path}: not in enum")
    if isinstance(value, list):
        if len(value) < node.get("minItems", 0):
            failures.append(f"{path}: too few items")
        failures += [f for i, v in enumerate(value) for f in _schema_failures(v, node.get("items", {}), f"{path}[{i}]")]
    if isinstance(value, dict):
        properties = node.get("properties")
        for key, sub in value.items():
            if properties is not None and key not in properties:
                failures.append(f"{path}.{key}: unknown")
            elif properties is not None:
                failures += _schema_failures(sub, properties[key], f"{path}.{key}")
    return failures


@needs_cel
def test_sweep_cel_rules_compile_and_the_example_passes():
    import cel

    for path, node in _walk(_sweep_root()):
        for rule in node.get("x-kubernetes-validations", []):
            cel.compile(rule["rule"])
    document = yaml.safe_load(EXAMPLE.read_text())
    assert _cel_verdict(document) == [] and _schema_failures(document, _sweep_root()) == []


VALUE_CHECKS = {"rank zero", "fraction too big", "include with a bad value", "bad template"}
"""Applying a value to the template needs the FineTuneJob schema: pydantic checks these; in a cluster
the operator reports them as a condition (the template's own CEL rules still apply to `bad template`)."""


@needs_cel
@pytest.mark.parametrize("name,document", [(b[0], b[1]) for b in BAD if b[0] not in VALUE_CHECKS - {"bad template"}],
                         ids=[b[0] for b in BAD if b[0] not in VALUE_CHECKS - {"bad template"}])
def test_the_crd_rejects_what_pydantic_rejects(name, document):
    failures = _cel_verdict(document) + _schema_failures(document, _sweep_root())
    assert failures, f"the CRD accepted {name!r} but pydantic rejects it"


@needs_cel
def test_the_crd_accepts_the_valid_edges():
    edges = [
        _space({"field": "method.lora.r", "values": [1.0]}, maxParallel=1),
        _space({"field": "training.learningRate", "min": 0.001, "max": 0.001, "step": 0.001}),
        _space({"field": "training.learningRate", "min": 0.0001, "max": 0.01, "log": True},
               strategy={"type": "random", "maxTrials": 4, "seed": 7}),
        _space({"field": "training.learningRate", "min": 0.0001, "max": 0.01},
               strategy={"type": "successiveHalving", "maxTrials": 9}),
        _space({"field": "method.lora.r", "values": [4.0]}, {"field": "training.epochs", "values": [1.0, 2.0]},
               include=[{"method.lora.r": 16.0, "training.epochs": 8.0}]),
        sweep(metadata={"name": "a" * MAX_SWEEP_NAME_LENGTH}),
    ]
    for document in edges:
        validate_sweep_document(document)
        assert _cel_verdict(document) == [] and _schema_failures(document, _sweep_root()) == [], document["spec"]
