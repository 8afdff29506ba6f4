"""The baseline cache as the operator keeps it: one ConfigMap (`OperatorConfig.baseline_cache_configmap`)
whose data maps a cache key (forgetless.baseline_cache.spec_cache_key: model, suite, limit) to a
stored baseline result, at most `baseline_cache_max_entries`, oldest evicted first."""

from __future__ import annotations

import json
from typing import Any, Mapping

from forgetless.api.schema import FineTuneJobSpec


def default_cache_key(spec: FineTuneJobSpec) -> str | None:
    try:
        from forgetless.baseline_cache import spec_cache_key
    except ImportError:  # the cache module is optional: without it every job runs its baseline
        return None
    try:
        return spec_cache_key(spec)
    except (ValueError, TypeError):  # a spec the cache cannot key: run the baseline
        return None


def cache_data_key(key: str) -> str:
    """ConfigMap data keys allow [-._a-zA-Z0-9]; anything else becomes '_'."""
    return "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in key)[:253]




def cache_patch(existing: Mapping[str, str], key: str, entry: Mapping[str, Any], max_entries: int) -> dict[str, Any]:
    """The ConfigMap data merge patch that stores `entry` under `key` and evicts the oldest entries
    (by `storedAt`) beyond `max_entries` (None = delete that key)."""
    data: dict[str, Any] = {cache_data_key(key): json.dumps(dict(entry), sort_keys=True)}
    others = {k: v for k, v in existing.items() if k != cache_data_key(key)}
    overflow = len(others) + 1 - max_entries
    if overflow > 0:
        def stored_at(item: tuple[str, str]) -> str:
            try:
                return str(json.loads(item[1]).get("storedAt", ""))
            except ValueError:
                return ""
        for old_key, _ in sorted(others.items(), key=stored_at)[:overflow]:
            data[old_key] = None
    return data
