"""Reading FineTuneJob manifests from files, with errors a human can act on.

Every problem becomes one line: `FILE[#DOC]: FIELD.PATH: what is wrong (what is allowed)`.
Nothing here raises a traceback at a user: callers catch `ManifestError`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from pydantic import BaseModel, ValidationError

from forgetless.api.schema import FineTuneJob


@dataclass
class ManifestError(Exception):
    """One or more problems found in a manifest file; `lines` are ready to print."""

    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.lines)


def _alias_map(model: type[BaseModel]) -> dict[str, Any]:
    """wire name -> annotation of that field."""
    out = {}
    for name, info in model.model_fields.items():
        out[info.alias or name] = info.annotation
    return out


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside Optional[X] / list[X] / dict[K, X], if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _submodel(arg)
        if found is not None:
            return found
    metadata_origin = getattr(annotation, "__origin__", None)
    if metadata_origin is not None and metadata_origin is not annotation:
        return _submodel(metadata_origin)
    return None


def _tagged_member(annotation: Any, tag: Any) -> type[BaseModel] | None:
    """The member of a tagged union (`Annotated[Union[Annotated[M, Tag(t)], ...], Discriminator]`) tagged `tag`."""
    for arg in getattr(annotation, "__args__", ()) or ():
        if any(getattr(meta, "tag", None) == tag for meta in getattr(arg, "__metadata__", ())):
            return _submodel(arg)
        found = _tagged_member(arg, tag)
        if found is not None:
            return found
    return None


def _walk(loc: tuple[Any, ...], root: type[BaseModel] = FineTuneJob) -> tuple[tuple[Any, ...], type[BaseModel] | None]:
    """(`loc` without the tags pydantic inserts for tagged unions, the model holding its last part)."""
    model: type[BaseModel] | None = root
    annotation: Any = None
    kept: list[Any] = []
    for index, part in enumerate(loc):
        member = _tagged_member(annotation, part) if annotation is not None else None
        if member is not None:  # a union tag (method.full.lora -> method.lora, checked against FullMethod)
            model, annotation = member, None
            continue
        kept.append(part)
        if index == len(loc) - 1 or model is None or isinstance(part, int) or part not in _alias_map(model):
            continue
        annotation = _alias_map(model)[part]
        model = _submodel(annotation)
    return tuple(kept), model


def _allowed_fields(loc: tuple[Any, ...], root: type[BaseModel] = FineTuneJob) -> list[str]:
    """Field names allowed at the object that holds `loc[-1]`."""
    _, model = _walk(loc, root)
    return sorted(_alias_map(model)) if model is not None else []


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "(document)"


def describe_validation_error(exc: ValidationError, root: type[BaseModel] = FineTuneJob) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _format_loc(_walk(loc, root)[0])
        kind = err["type"]
        msg = err["msg"]
        if kind == "extra_forbidden":
            allowed = _allowed_fields(loc, root)
            msg = f"unknown field {loc[-1]!r}" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "value_error":
            msg = msg.removeprefix("Value error, ")
        elif kind == "method_type":  # the tag of the method union (schema.MethodSpec)
            where = _format_loc((*_walk(loc, root)[0], "type"))
            got = err["input"].get("type") if isinstance(err.get("input"), dict) else err.get("input")
            msg = f"{msg} (got {got!r})"
        elif kind == "forgetless_rule" and (err.get("ctx") or {}).get("field"):
            where = _format_loc((*_walk(loc, root)[0], err["ctx"]["field"]))
        if kind not in ("missing", "extra_forbidden") and "input" in err and not isinstance(err["input"], (dict, list)):
            msg += f" (got {err['input']!r})"
        lines.append(f"{where}: {msg}")
    return lines


def validate_document(document: Any) -> FineTuneJob:
    """One parsed YAML document -> FineTuneJob, or ManifestError with one line per problem."""
    if not isinstance(document, dict):
        got = "empty document" if document is None else type(document).__name__
        raise ManifestError([f"(document): a FineTuneJob manifest must be a mapping, got {got}"])
    try:
        return FineTuneJob.model_validate(document)
    except ValidationError as exc:
        raise ManifestError(describe_validation_error(exc)) from None


def iter_documents(path: Path) -> Iterator[tuple[int, Any]]:
    """(index, document) for each YAML/JSON document in the file; raises ManifestError on syntax errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([f"{path}: cannot read: {exc}"]) from None
    try:
        if path.suffix == ".json":
            documents = [json.loads(text)]
        else:
            documents = [d for d in yaml.safe_load_all(text)]
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        detail = str(exc).replace("\n", " ")
        raise ManifestError([f"{path}: not valid YAML/JSON: {detail}"]) from None
    documents_seen = 0
    for index, document in enumerate(documents):
        if document is None and len(documents) > 1:
            continue  # a trailing `---`
        documents_seen += 1
        yield index, document
    if documents_seen == 0:
        raise ManifestError([f"{path}: the file holds no document"])


def load_all(path: Path, validate: Callable[[Any], Any]) -> list[Any]:
    """Every document of a file through `validate`; all problems of all documents reported together,
    each prefixed with `FILE` (or `FILE#N` in a multi-document file)."""
    found, problems = [], []
    documents = list(iter_documents(path))
    multi = len(documents) > 1
    for index, document in documents:
        prefix = f"{path}#{index}" if multi else str(path)
        try:
            found.append(validate(document))
        except ManifestError as exc:
            problems.extend(f"{prefix}: {line}" for line in exc.lines)
    if problems:
        raise ManifestError(problems)
    return found


def load_jobs(path: Path) -> list[FineTuneJob]:
    """Every FineTuneJob in a file; all problems of all documents reported together."""
    return load_all(path, validate_document)


def load_job(path: Path) -> FineTuneJob:
    """Exactly one FineTuneJob from a file (what `forgetless run` takes)."""
    jobs = load_jobs(path)
    if len(jobs) != 1:
        raise ManifestError([f"{path}: expected one FineTuneJob, found {len(jobs)}; split the file or pick one"])
    return jobs[0]
