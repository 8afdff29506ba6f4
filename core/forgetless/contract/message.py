"""A stage summary's wire form: what fits a pod's termination message, where the operator reads it.

`wire_summary` drops the per-task detail (`DETAIL_KEYS`: it grows with the suite and stays in
summary.json on the volume); `compact` encodes the rest as JSON of at most
`TERMINATION_MESSAGE_LIMIT` bytes, degrading step by step and keeping `PROTECTED_KEYS` (what the
operator needs: scores per category, the verdict, the promoted model) as long as possible.
"""

from __future__ import annotations

import json
from typing import Any

from forgetless.contract import TERMINATION_MESSAGE_LIMIT

DETAIL_KEYS = ("paired", "tasks", "probeHistory", "validationHistory", "generalKLHistory", "evidence")
"""Per-task parts of a summary: in summary.json on the volume, never in the termination message
(they grow with the suite; what the operator needs — scores per category, the gate's verdict,
the promoted model — does not)."""
PROTECTED_KEYS = ("stage", "truncated", "stoppedReason", "steps", "error", "gate", "scores", "promotedModel")


def _encode(summary: Any) -> str:
    return json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str)


def _shrink(value: Any, limit: int) -> Any:
    """Round floats, then cut long strings, lists and dicts until the JSON fits `limit` bytes."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, str):
        return value if len(value) <= limit else value[: max(limit - 3, 0)] + "..."
    if isinstance(value, list):
        return [_shrink(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: _shrink(v, limit) for k, v in value.items()}
    return value


def compact(summary: dict[str, Any], limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """The summary as JSON of at most `limit` bytes.

    Degrades in steps, keeping the top-level keys as long as possible: round floats; shorten long
    strings; drop the largest nested values (replaced by nothing) one at a time, marking
    `"truncated": true`; as a last resort keep only `stage` and `truncated`.
    """
    text = _encode(summary)
    if len(text.encode()) <= limit:
        return text
    current: dict[str, Any] = _shrink(summary, limit)
    for string_limit in (512, 128, 32):
        current = _shrink(current, string_limit)
        current["truncated"] = True
        text = _encode(current)
        if len(text.encode()) <= limit:
            return text
    protected = set(PROTECTED_KEYS)
    while len(text.encode()) > limit:
        candidates = [k for k in current if k not in protected]
        if not candidates:
            break
        largest = max(candidates, key=lambda k: len(_encode(current[k])))
        del current[largest]
        text = _encode(current)
    if len(text.encode()) > limit:
        text = _encode({"stage": summary.get("stage"), "truncated": True})
    return text


def wire_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k not in DETAIL_KEYS}
