"""The field reference of FineTuneJob and FineTuneSweep (docs/reference/*.md), generated from the
pydantic models through the same structural schema as the CRDs (`forgetless.api.crd.model_schema`),
so the page, the CRD and `forgetless validate` cannot disagree.

Regenerate after changing `forgetless.api.schema` or `forgetless.api.sweep`:

    python -m forgetless.api.reference --write      # the reference pages only
    forgetless crd --write                          # the CRDs and the reference pages

`--check` exits 1 naming each stale page; tests/unit/test_reference_docs.py fails the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Iterator

from forgetless import atomic
from forgetless.api import schema, sweep
from forgetless.api.crd import model_schema

REGENERATE = "python -m forgetless.api.reference --write"
REFERENCE_DIR = Path("docs") / "reference"

_HEADER = """<!-- Generated from {source} by `{command}` (or `forgetless crd --write`). Do not edit by hand. -->

# {kind} field reference

{intro}

Every field of `{api}` `{kind}`, as the CRD and `forgetless validate` accept it. Columns: the
field's path; its type (an enum lists its values); whether it is required in its object; its
default; the constraints `kubectl apply` enforces; what it means. Cross-field rules (CEL,
checked by the API server and by `forgetless validate` alike) follow the table of the object
they sit on.
"""


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif value is None:
        value = "null"
    elif isinstance(value, (list, dict)) and not value:
        value = "[]" if isinstance(value, list) else "{}"
    text = str(value).replace("`", "'")
    return f"`{text}`"


def _type(node: dict[str, Any]) -> str:
    kind = node.get("type")
    if "enum" in node:
        return " \\| ".join(_code(v) for v in node["enum"])
    if kind == "array":
        items = node.get("items") or {}
        return f"list of {_type(items)}" if items else "list"
    if kind == "object" and "properties" not in node:
        if "additionalProperties" in node:
            return f"map of {_type(node['additionalProperties'])}"
        return "object (free-form)" if node.get("x-kubernetes-preserve-unknown-fields") else "object"
    if kind is None and node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    if kind is None and node.get("x-kubernetes-preserve-unknown-fields"):
        return "any"
    return kind or "any"


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "minimum" in node:
        parts.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {node['minimum']}")
    if "maximum" in node:
        parts.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {node['maximum']}")
    if "minLength" in node or "maxLength" in node:
        parts.append(f"length {node.get('minLength', 0)}–{node['maxLength']}" if "maxLength" in node
                     else f"length ≥ {node['minLength']}")
    if "minItems" in node or "maxItems" in node:
        parts.append(f"items {node.get('minItems', 0)}–{node['maxItems']}" if "maxItems" in node
                     else f"items ≥ {node['minItems']}")
    if "pattern" in node:
        parts.append(f"pattern {_code(node['pattern'])}")
    if "format" in node:
        parts.append(f"format {node['format']}")
    return "; ".join(parts)


def _rows(node: dict[str, Any], path: str, stop: dict[str, str]) -> Iterator[tuple[str, dict, bool, str]]:
    """(path, node, required, link) of every property below `node`, depth first in declaration
    order; an object or list of objects is followed by its own properties. `stop` maps a path to a
    link: that field is listed, its properties are not (a FineTuneSweep's template)."""
    required = set(node.get("required") or [])
    for name, child in (node.get("properties") or {}).items():
        child_path = f"{path}.{name}"
        yield child_path, child, name in required, stop.get(child_path, "")
        if child_path in stop:
            continue
        inner = child
        suffix = ""
        if child.get("type") == "array" and (child.get("items") or {}).get("properties"):
            inner, suffix = child["items"], "[]"
        elif child.get("type") == "object" and "additionalProperties" in child and \
                (child["additionalProperties"] or {}).get("properties"):
            inner, suffix = child["additionalProperties"], ".<key>"
        if inner.get("properties"):
            yield from _rows(inner, child_path + suffix, stop)


def _rules(node: dict[str, Any], path: str, stop: dict[str, str]) -> Iterator[tuple[str, str]]:
    """(path, message) of every CEL rule at or below `node`, not below a `stop` path (whose
    rules are on the page it links to)."""
    if path in stop:
        return
    for rule in node.get(schema.CEL) or []:
        yield path, rule.get("message") or rule["rule"]
    for name, child in (node.get("properties") or {}).items():
        if child.get("type") == "array" and child.get("items"):
            yield from _rules(child["items"], f"{path}.{name}[]", stop)
        yield from _rules(child, f"{path}.{name}", stop)


def _table(rows: list[tuple[str, dict, bool, str]]) -> list[str]:
    lines = ["| field | type | required | default | constraints | description |",
             "|---|---|---|---|---|---|"]
    for field_path, node, required, link in rows:
        description = _cell(node.get("description", ""))
        if link:
            description = (description + " " if description else "") + f"Its fields: {link}."
        default = _code(node["default"]) if "default" in node else ""
        lines.append(f"| `{field_path}` | {_type(node)} | {'yes' if required else ''} | {_cell(default)} | "
                     f"{_cell(_constraints(node))} | {description} |")
    return lines


def _rule_lines(rules: list[tuple[str, str]]) -> list[str]:
    if not rules:
        return []
    return ["", "Rules (CEL in the CRD, checked by the API server; `forgetless validate` checks the same):", ""] + \
        [f"- `{where}`: {_cell(message)}" for where, message in rules]


def _section(title: str, root: dict[str, Any], path: str, stop: dict[str, str]) -> list[str]:
    """`## title`, then the top-level scalar fields, then one `### path.field` per object field
    (its table, then its rules): one anchor per block a reader looks for."""
    lines = [f"## {title}", ""]
    if root.get("description"):
        lines += [_cell(root["description"]), ""]
    properties = root.get("properties") or {}
    required = set(root.get("required") or [])
    nested = {name for name, node in properties.items()
              if f"{path}.{name}" not in stop and list(_rows({"properties": {name: node}}, path, stop))[1:]}
    flat = [(f"{path}.{name}", node, name in required, stop.get(f"{path}.{name}", ""))
            for name, node in properties.items() if name not in nested]
    own_rules = list(_rules({schema.CEL: root.get(schema.CEL) or [],
                             "properties": {n: node for n, node in properties.items() if n not in nested}}, path, stop))
    if flat or own_rules:
        lines += [f"### Top-level fields of `{path}`", ""]
        lines += _table(flat) if flat else []
        lines += _rule_lines(own_rules) + [""]
    for name in (n for n in properties if n in nested):
        only = {"properties": {name: properties[name]}, "required": [name] if name in required else []}
        lines += [f"### `{path}.{name}`", ""]
        lines += _table(list(_rows(only, path, stop)))
        lines += _rule_lines(list(_rules(only, path, stop))) + [""]
    return lines


def finetunejob_page() -> str:
    lines = _HEADER.format(
        source="core/forgetless/api/schema.py", command=REGENERATE, kind=schema.KIND,
        api=f"{schema.GROUP}/{schema.VERSION}",
        intro="A FineTuneJob fine-tunes one base model on one task, measures forgetting before and after, "
              "and gates promotion. A guide with examples: [Kubernetes](../kubernetes.md), "
              "[mitigations](../mitigations.md); what each status condition and event means: "
              "[troubleshooting](../troubleshooting.md).",
    ).splitlines()
    lines.append("")
    lines += _section("spec", model_schema(schema.FineTuneJobSpec), "spec", {})
    lines += _section("status", model_schema(schema.FineTuneJobStatus), "status", {})
    return "\n".join(lines).rstrip("\n") + "\n"


def finetunesweep_page() -> str:
    lines = _HEADER.format(
        source="core/forgetless/api/sweep.py", command=REGENERATE, kind=sweep.KIND,
        api=f"{schema.GROUP}/{schema.VERSION}",
        intro="A FineTuneSweep runs a FineTuneJob template over a search space and promotes the best trial "
              "that passed the gate. A guide: [policy search](../sweeps.md).",
    ).splitlines()
    lines.append("")
    stop = {"spec.template": "the FineTuneJob's [`spec`](finetunejob.md#spec)"}
    lines += _section("spec", model_schema(sweep.FineTuneSweepSpec), "spec", stop)
    lines += _section("status", model_schema(sweep.FineTuneSweepStatus), "status", {})
    return "\n".join(lines).rstrip("\n") + "\n"


def reference_files(repo_root: Path) -> dict[Path, str]:
    """Every generated reference page under `repo_root` -> its text."""
    folder = repo_root / REFERENCE_DIR
    return {folder / "finetunejob.md": finetunejob_page(), folder / "finetunesweep.md": finetunesweep_page()}


def stale_files(repo_root: Path) -> list[Path]:
    return [path for path, text in reference_files(repo_root).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def write_reference(repo_root: Path) -> list[Path]:
    files = reference_files(repo_root)
    (repo_root / REFERENCE_DIR).mkdir(parents=True, exist_ok=True)
    return [atomic.write_text(path, text) for path, text in files.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forgetless.api.reference", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write docs/reference/*.md under --root")
    group.add_argument("--check", action="store_true", help="exit 1 when a committed page differs from the models")
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository root (default: .)")
    args = parser.parse_args(argv)
    if args.write:
        for path in write_reference(args.root):
            print(f"wrote {path}")
        return 0
    if args.check:
        stale = stale_files(args.root)
        for path in stale:
            print(f"{path}: out of date; run `{REGENERATE}`", file=sys.stderr)
        return 1 if stale else 0
    sys.stdout.write(finetunejob_page())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
