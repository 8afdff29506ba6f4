"""The CRD is generated from the pydantic models, is structural, and its CEL rules agree with pydantic."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from forgetless.api.crd import crd_targets, render_crd, render_crd_yaml
from forgetless.api.manifests import ManifestError, validate_document

from .test_schema import BAD, _apply

REPO = Path(__file__).resolve().parents[2]
CEL_KEY = "x-kubernetes-validations"


def test_committed_crds_match_the_models_byte_for_byte():
    expected = render_crd_yaml()
    for target in crd_targets(REPO):
        assert target.read_text(encoding="utf-8") == expected, f"{target} is stale: run `forgetless crd --write`"


def test_crd_check_command_detects_drift(tmp_path):
    cmd = [sys.executable, "-m", "forgetless_cli", "crd"]
    assert subprocess.run([*cmd, "--write", str(tmp_path)], capture_output=True, timeout=60).returncode == 0
    assert subprocess.run([*cmd, "--check", str(tmp_path)], capture_output=True, timeout=60).returncode == 0
    stale = crd_targets(tmp_path)[1]
    stale.write_text(stale.read_text() + "# edited by hand\n")
    proc = subprocess.run([*cmd, "--check", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "out of date" in proc.stderr


def test_crd_is_a_valid_apiextensions_object():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(render_crd(), "1.35", strict=True)


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


def _root() -> dict[str, Any]:
    return render_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_schema_is_structural():
    forbidden = {"$ref", "anyOf", "oneOf", "allOf", "not", "const", "title", "$defs", "propertyNames"}
    for path, node in _walk(_root()):
        assert not forbidden & node.keys(), f"{path}: {forbidden & node.keys()}"
        special = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        assert "type" in node or special, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            assert node.get("type") in ("string", "integer", "number", "boolean"), f"{path}: object defaults"
        if isinstance(node.get("exclusiveMinimum"), (int, float)) and not isinstance(node["exclusiveMinimum"], bool):
            pytest.fail(f"{path}: exclusiveMinimum must be a boolean in OpenAPI v3.0")


def test_status_subresource_and_printer_columns():
    version = render_crd()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Phase", "Progress", "ETA", "Method", "Gate", "Forgetting", "Age"]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert status["kopf"]["x-kubernetes-preserve-unknown-fields"] is True
    assert {"phase", "conditions", "observedGeneration", "gate", "stages", "forgetting"} <= status.keys()


# ----------------------------------------------------------------- CEL rules, evaluated for real

try:  # only the CEL tests below need it: the rest of this module runs without it
    import cel
except ImportError:  # pragma: no cover - the dev extra installs it
    cel = None
needs_cel = pytest.mark.skipif(cel is None, reason="common-expression-language (dev extra) evaluates the CRD's CEL rules")


def _apply_defaults(value: Any, node: dict[str, Any]) -> Any:
    """What the API server does before validation: fill defaults of absent properties of present objects."""
    if isinstance(value, dict) and "properties" in node:
        out = dict(value)
        for name, child in node["properties"].items():
            if name not in out and "default" in child:
                out[name] = copy.deepcopy(child["default"])
            if name in out:
                out[name] = _apply_defaults(out[name], child)
        return out
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        return [_apply_defaults(v, node["items"]) for v in value]
    return value


def _cel_failures(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    failures = []
    for rule in node.get(CEL_KEY, []):
        if "oldSelf" in rule["rule"]:
            continue  # transition rules need an update; checked on a real API server (tests/e2e)
        if not cel.evaluate(rule["rule"], {"self": value}):
            failures.append(f"{path or '<root>'}: {rule['message']}")
    if isinstance(value, dict):
        for name, child in node.get("properties", {}).items():
            if name in value:
                failures += _cel_failures(value[name], child, f"{path}.{name}")
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            failures += _cel_failures(item, node["items"], f"{path}[{index}]")
    return failures


def _cel_verdict(document: dict[str, Any]) -> list[str]:
    root = _root()
    return _cel_failures(_apply_defaults(document, root), root)


@needs_cel
def test_cel_rules_compile():
    for path, node in _walk(_root()):
        for rule in node.get(CEL_KEY, []):
            cel.compile(rule["rule"])


@needs_cel
def test_examples_pass_every_cel_rule():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document.get("kind") == "FineTuneJob":  # sweeps: tests/unit/test_sweep_api.py
                assert _cel_verdict(document) == [], path


CROSS_FIELD = [
    "task with two sources",
    "pvc without path",
    "lora block with full",
    "fractions sum to 1",
    "replay source with both",
    "ewc with zero 3",
    "offload params without zero 3",
    "many workers without pvc",
    "suite with two sources",
    "suite with nothing",
    "task with no source",
    "name too long",
    "adapter-only hand-off of a full fine-tune",
    "hand-off without promotion",
    "mlflow alias reserved",
    "all-linear with module names",
    "ewc previous without online",
    "early stopping without validation data",
    "optimizer offload without ZeRO",
    "kl budget without maxKL",
    "self-distillation without general data",
    "self-distillation with packing",
]


@needs_cel
@pytest.mark.parametrize("name", CROSS_FIELD)
def test_cel_rejects_what_pydantic_rejects_across_fields(manifest, name):
    patch = next(p for n, p, _ in BAD if n == name)
    document = _apply(manifest(), patch)
    with pytest.raises(ManifestError):
        validate_document(document)
    assert _cel_verdict(document), f"CEL accepted {name!r} but pydantic rejects it"


@needs_cel
def test_cel_accepts_the_valid_edge_of_each_rule(manifest):
    edges = [
        {"spec": {"mitigation": {"dataMixing": {"generalFraction": 0.5}, "replay": {"fraction": 0.4}}}},
        {"spec": {"method": {"type": "lora", "lora": {"r": 4}}}},
        {"spec": {"deepspeed": {"zeroStage": 3, "offloadParams": True}}},
        {"spec": {"mitigation": {"ewc": {}}, "deepspeed": {"zeroStage": 2}}},
        {"spec": {"resources": {"workers": 2}, "output": {"pvc": {"claimName": "out"}}}},
        {"metadata": {"name": "a" * 40}},
        {"spec": {"method": {"type": "lora", "lora": {"targetModules": ["q_proj", "v_proj"]}}}},
        {"spec": {"mitigation": {"ewc": {"online": True, "previous": {"fineTuneJob": "earlier"}}}}},
        {"spec": {"mitigation": {"earlyStopping": {}}}},
        {"spec": {"mitigation": {"forgettingBudget": {"signal": "kl", "maxKL": 0.5}}}},
        {"spec": {"mitigation": {"forgettingBudget": {"signal": "probe"}}}},
        {"spec": {"mitigation": {"dataMixing": {"generalFraction": 0.01}, "selfDistillation": {"weight": 0.1}}}},
    ]
    for patch in edges:
        document = _apply(manifest(), patch)
        validate_document(document)
        assert _cel_verdict(document) == [], patch
