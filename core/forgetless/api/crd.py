"""Generate the FineTuneJob CustomResourceDefinition from the pydantic models.

Pydantic emits JSON Schema 2020-12; Kubernetes wants a *structural* OpenAPI v3.0 schema. This
module converts one into the other: `$ref`s are inlined, `Optional[X]` becomes `X`, `Any` maps
become `x-kubernetes-preserve-unknown-fields`, exclusive bounds become v3.0 booleans, and the CEL
rules declared on the models (`x-kubernetes-validations`) are carried over unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from forgetless.api import schema

CRD_FILE_NAME = f"{schema.PLURAL}.{schema.GROUP}.yaml"

_COPY_KEYS = {
    "type",
    "description",
    "enum",
    "format",
    "pattern",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minimum",
    "maximum",
    "default",
    "required",
    schema.CEL,
}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].split("/")[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    return node


def _merge_tagged_union(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """`oneOf` of objects told apart by one constant property (the tag, e.g. method.type) -> one
    object with every member's properties, the tag an enum, and a CEL rule per property that only
    some members have (`lora` only with type lora). The first member's tag default stays the default."""
    members = [_resolve(m, defs) for m in node["oneOf"]]
    tags = [name for name in members[0].get("properties", {})
            if all("const" in m.get("properties", {}).get(name, {}) for m in members)]
    if len(tags) != 1:
        raise ValueError(f"cannot express union {node['oneOf']} structurally: no single tag property")
    tag = tags[0]
    values = [m["properties"][tag]["const"] for m in members]
    properties: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    for member, value in zip(members, values):
        for name, sub in member.get("properties", {}).items():
            properties.setdefault(name, sub)
            owners.setdefault(name, []).append(value)
    merged = {key: node[key] for key in node if key not in ("oneOf", "title")}
    tag_schema = {k: v for k, v in properties[tag].items() if k != "const"}
    tag_schema.update(type="string", enum=values, default=values[0])
    properties[tag] = tag_schema
    rules = []
    for name, having in owners.items():
        if name == tag or len(having) == len(values):
            continue
        properties[name] = {k: v for k, v in properties[name].items() if k != "default"}  # no default for others
        allowed = ", ".join(f"'{v}'" for v in having)
        rules.append({"rule": f"!has(self.{name}) || self.{tag} in [{allowed}]",
                      "message": f"a {name} block is only allowed with {tag} {' or '.join(having)}",
                      "fieldPath": f".{name}"})
    merged.update(type="object", properties=properties)
    merged[schema.CEL] = rules + list(node.get(schema.CEL, []))
    return merged


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    node = _resolve(node, defs)
    if "oneOf" in node:
        node = _merge_tagged_union(node, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express union {node['anyOf']} structurally")
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if outer.get("default", 0) is None:
            outer.pop("default")
        inner = _resolve(options[0], defs)
        # the outer description wins; constraints come from the inner schema
        node = {**inner, **outer}
    if "const" in node:
        node = {**node, "enum": [node.pop("const")]}

    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _COPY_KEYS:
            out[key] = value
    if "exclusiveMinimum" in node:
        out["minimum"], out["exclusiveMinimum"] = node["exclusiveMinimum"], True
    if "exclusiveMaximum" in node:
        out["maximum"], out["exclusiveMaximum"] = node["exclusiveMaximum"], True
    if out.get("default", 0) is None:
        out.pop("default")

    kind = node.get("type")
    if kind == "object" or "properties" in node:
        out["type"] = "object"
        if "properties" in node:
            out["properties"] = {name: _convert(sub, defs) for name, sub in node["properties"].items()}
            extra = node.get("additionalProperties")
            if extra not in (None, False) and not out["properties"]:
                out.pop("properties")
        else:
            extra = node.get("additionalProperties", True)
            if extra is True or extra == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = _convert(extra, defs)
                allowed = node.get("propertyNames", {}).get("enum")
                if allowed:
                    out["maxProperties"] = len(allowed)
                    keys = ", ".join(f"'{k}'" for k in allowed)
                    out.setdefault(schema.CEL, []).append(
                        {"rule": f"self.all(k, k in [{keys}])", "message": f"keys must be one of {', '.join(allowed)}"}
                    )
    elif kind == "array":
        out["items"] = _convert(node.get("items", {}), defs)
    elif kind is None and not out.get("enum"):
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def model_schema(model: type) -> dict[str, Any]:
    """One pydantic model as a structural OpenAPI v3.0 schema."""
    js = model.model_json_schema(by_alias=True, mode="validation")
    return _convert(js, js.get("$defs", {}))


def root_schema(description: str, spec: dict[str, Any], status: dict[str, Any], max_name: int,
                name_reason: str) -> dict[str, Any]:
    """The structural `openAPIV3Schema` of one of our kinds: spec, status and the name-length rule."""
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        schema.CEL: [
            {
                "rule": f"self.metadata.name.size() <= {max_name}",
                "message": f"metadata.name must be at most {max_name} characters ({name_reason})",
            }
        ],
    }


def openapi_schema() -> dict[str, Any]:
    """The structural `openAPIV3Schema` for the FineTuneJob kind."""
    spec = model_schema(schema.FineTuneJobSpec)
    status = model_schema(schema.FineTuneJobStatus)
    status.pop("x-kubernetes-preserve-unknown-fields", None)
    status["properties"]["kopf"] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    status["properties"]["kopf"]["description"] = "kopf handler progress (operator internal)."
    return root_schema("A fine-tuning job that measures and gates catastrophic forgetting.", spec, status,
                       schema.MAX_JOB_NAME_LENGTH, "stage Jobs and Pods append suffixes")


def _mark_immutable_model(root: dict[str, Any]) -> None:
    model = root["properties"]["spec"]["properties"]["model"]
    model.setdefault(schema.CEL, []).append(
        {"rule": "self == oldSelf", "message": "spec.model is immutable: create a new FineTuneJob for another base model"}
    )


FINETUNEJOB_PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "integer",
        "description": "Percent done of the running stage (status.trainerStatus.stage)",
        "jsonPath": ".status.trainerStatus.progressPercentage",
    },
    {
        "name": "ETA",
        "type": "string",
        "description": "Time left in the running stage, at its rate so far",
        "jsonPath": ".status.trainerStatus.estimatedRemaining",
    },
    {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
    {"name": "Gate", "type": "string", "jsonPath": ".status.gate.verdict"},
    {
        "name": "Forgetting",
        "type": "string",
        "description": "Mean drop of the general score, in percentage points",
        "jsonPath": ".status.forgettingPoints",
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd_document(*, kind: str, plural: str, singular: str, short_names: list[str],
                 printer_columns: list[dict[str, Any]], root: dict[str, Any]) -> dict[str, Any]:
    """A namespaced CustomResourceDefinition of the forgetless.dev group (one served, stored version
    with the status subresource)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{schema.GROUP}"},
        "spec": {
            "group": schema.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["forgetless", "all"],
            },
            "versions": [
                {
                    "name": schema.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd() -> dict[str, Any]:
    root = openapi_schema()
    _mark_immutable_model(root)
    return crd_document(kind=schema.KIND, plural=schema.PLURAL, singular=schema.SINGULAR,
                        short_names=schema.SHORT_NAMES, printer_columns=FINETUNEJOB_PRINTER_COLUMNS, root=root)


class _NoAliasDumper(yaml.SafeDumper):
    """Kubernetes tooling copes with YAML anchors, but humans reading the CRD should not have to."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_crd(document: dict[str, Any], source: str) -> str:
    """A generated CRD as YAML, headed by where it comes from."""
    header = f"# Generated by `forgetless crd` from {source}. Do not edit.\n"
    return header + yaml.dump(document, Dumper=_NoAliasDumper, sort_keys=False, width=100, allow_unicode=True)


def render_crd_yaml() -> str:
    return dump_crd(render_crd(), "core/forgetless/api/schema.py")


def crd_targets(repo_root: Path) -> list[Path]:
    return [repo_root / "crds" / CRD_FILE_NAME, repo_root / "charts" / "forgetless" / "crds" / CRD_FILE_NAME]
