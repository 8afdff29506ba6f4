"""Per-item scorers (pure Python, torch-free). Every score is binary: 1.0 right, 0.0 wrong.

Generation scorers take `(task_options, item, answer)` where `answer` is the decoded greedy
continuation, stripped; the log-likelihood scorer takes the choices' summed log-probabilities.
The registry maps each scorer name of the suite format (forgetless.suites.SCORERS) to its function.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping, Sequence

_TRAILING_PUNCTUATION = ".,;:!?"


def collapse(text: str) -> str:
    """Lowercase and collapse whitespace (what refusal and leak patterns see)."""
    return " ".join(text.lower().split())


def normalise(text: str) -> str:
    """Exact-match normalisation: collapse() and strip trailing sentence punctuation (.,;:!?)."""
    return collapse(text).rstrip(_TRAILING_PUNCTUATION).rstrip()


def exact_match(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    return float(normalise(answer) == normalise(item["target"]))


def format_compliance(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    """The whole answer (whitespace collapsed, case kept) fullmatches the item's `pattern`, or
    (task option `json_schema`) parses as
    JSON and satisfies the schema."""
    if "json_schema" in options:
        try:
            value = json.loads(answer)
        except ValueError:
            return 0.0
        return float(validate_json_schema(value, options["json_schema"]))
    return float(re.fullmatch(item["pattern"], " ".join(answer.split())) is not None)


def refusal(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    refused = re.match(options["refusal_pattern"], collapse(answer)) is not None
    return float(refused == bool(item["should_refuse"]))


def format_leak(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    """1 when the answer does NOT show the narrow task's house format (`leak_pattern`). A task without a
    pattern is scored by the learned format detector instead (forgetless_trainer.evaluation.format_detector)."""
    if not options.get("leak_pattern"):
        raise ValueError("format_leak without leak_pattern is scored by the learned format detector")
    return float(re.match(options["leak_pattern"], collapse(answer)) is None)


def _json_canonical(value: Any) -> Any:
    """A JSON value compared structurally: objects by key (order ignored), strings normalised
    (`normalise`: case, whitespace, trailing punctuation), numbers as floats, lists in order."""
    if isinstance(value, dict):
        return {str(k).strip().lower(): _json_canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_canonical(v) for v in value]
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def json_match(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    """Structural match: the answer's JSON (the whole answer, else its first ```json fence, else its outermost
    {...}) equals the target's JSON, key order, string case and whitespace ignored."""
    expected = json.loads(item["target"])
    found = _json_object(answer)
    return float(found is not None and _json_canonical(found) == _json_canonical(expected))


_TOKEN = re.compile(r"[a-z0-9]+")


def token_f1(answer: str, target: str) -> float:
    """SQuAD-style token F1: the harmonic mean of precision and recall of the answer's lowercase
    alphanumeric tokens against the target's, counted as multisets."""
    got, want = _TOKEN.findall(answer.lower()), _TOKEN.findall(target.lower())
    if not got or not want:
        return float(got == want)
    common: dict[str, int] = {}
    for token in want:
        common[token] = common.get(token, 0) + 1
    overlap = 0
    for token in got:
        if common.get(token, 0) > 0:
            common[token] -= 1
            overlap += 1
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(got), overlap / len(want)
    return 2 * precision * recall / (precision + recall)


def similarity(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    """1 when the token F1 of the answer against the target reaches `min_similarity` (default 0.5)."""
    return float(token_f1(answer, item["target"]) >= float(options.get("min_similarity", 0.5)))


# --------------------------------------------------------------------------- verifiable instructions

_WORD = re.compile(r"[A-Za-z0-9']+")
_FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)


def _json_object(answer: str) -> Any:
    """The JSON value of the whole answer, else of its first ```json fence, else of its outermost {...}."""
    candidates = [answer.strip()]
    fence = _FENCE.search(answer)
    if fence:
        candidates.append(fence.group(1).strip())
    start, end = answer.find("{"), answer.rfind("}")
    if 0 <= start < end:
        candidates.append(answer[start:end + 1])
    for text in candidates:
        try:
            return json.loads(text)
        except ValueError:
            continue
    return None


def _numbered_items(answer: str) -> int:
    """How many lines, in order, start with `1.`, `2.`, ... (a numbered list's length)."""
    count = 0
    for line in answer.splitlines():
        match = re.match(r"\s*(\d+)[.)]\s+\S", line)
        if match and int(match.group(1)) == count + 1:
            count += 1
    return count


VERIFIABLE_CHECKS: dict[str, Callable[[Mapping[str, Any], str], bool]] = {
    "starts_with": lambda c, a: bool(_WORD.findall(a)) and _WORD.findall(a)[0].lower() in {w.lower() for w in c["words"]},
    "json_keys": lambda c, a: isinstance(_json_object(a), dict) and all(k in _json_object(a) for k in c["keys"]),
    "title": lambda c, a: re.search(r"<<[^<>\n]+>>", a) is not None,
    "numbered_list": lambda c, a: _numbered_items(a) >= c["min_items"],
    "max_words": lambda c, a: len(_WORD.findall(a)) <= c["max"],
    "lowercase": lambda c, a: a == a.lower(),
    "includes": lambda c, a: all(re.search(r"\b%s\b" % re.escape(w.lower()), a.lower()) for w in c["words"]),
}
"""IFEval-style checks (check, answer) -> passed; names and fields: forgetless.suites.VERIFIABLE_CHECKS."""


def verifiable(options: Mapping[str, Any], item: Mapping[str, Any], answer: str) -> float:
    """1 when the answer passes every check of the item (`checks`: [{type, ...}])."""
    return float(all(VERIFIABLE_CHECKS[check["type"]](check, answer) for check in item["checks"]))


def multiple_choice(item: Mapping[str, Any], logliks: Sequence[float]) -> float:
    """Argmax of the choices' log-likelihoods (first wins a tie) == target_index."""
    best = max(range(len(logliks)), key=lambda i: (logliks[i], -i))
    return float(best == item["target_index"])


GENERATION: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any], str], float]] = {
    "exact_match": exact_match,
    "format_compliance": format_compliance,
    "refusal": refusal,
    "format_leak": format_leak,
    "verifiable": verifiable,
    "json_match": json_match,
    "similarity": similarity,
}
LOGLIKELIHOOD: dict[str, Callable[[Mapping[str, Any], Sequence[float]], float]] = {
    "multiple_choice": multiple_choice,
}


# --------------------------------------------------------------------------- JSON schema


def validate_json_schema(value: Any, schema: Mapping[str, Any]) -> bool:
    """jsonschema when installed; otherwise a subset validator (type, enum, const, required,
    properties, additionalProperties, items, min/maxItems, min/maxLength, pattern, minimum/maximum)."""
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - jsonschema is present in the dev venv
        return _subset_valid(value, schema)
    return jsonschema.Draft202012Validator(schema).is_valid(value)


_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _subset_valid(value: Any, schema: Mapping[str, Any]) -> bool:
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if not any(_TYPES[k](value) for k in kinds):
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if isinstance(value, dict):
        if any(key not in value for key in schema.get("required", ())):
            return False
        properties = schema.get("properties", {})
        for key, sub in properties.items():
            if key in value and not _subset_valid(value[key], sub):
                return False
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
    if isinstance(value, list):
        if "items" in schema and not all(_subset_valid(v, schema["items"]) for v in value):
            return False
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            return False
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            return False
        if "maximum" in schema and value > schema["maximum"]:
            return False
    return True
