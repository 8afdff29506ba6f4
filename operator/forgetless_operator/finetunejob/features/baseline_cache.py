"""The baseline cache as the operator keeps it: one ConfigMap (`OperatorConfig.baseline_cache_configmap`)
whose data maps a cache key (forgetless.baseline_cache.spec_cache_key: model, suite, limit) to a
stored baseline result, at most `baseline_cache_max_entries`, oldest evicted first.

Reads: the cache ConfigMap (a shared read) while the baseline is not done: before the start (a hit
skips the baseline stage) and while it runs (its result is recorded, evicting the oldest entries).
Decides: `cache_hit` (the baseline stage Skipped, its scores from the cache; never for a job whose
general data is self-rehearsal, which its baseline pod writes for the train pods), `record` (a
RecordBaselineCache action)."""

from __future__ import annotations

import json
from typing import Any, Mapping

from forgetless.api.schema import FineTuneJobSpec
from forgetless.general_data import general_data
from forgetless.lifecycle import TERMINAL_PHASES

from forgetless_operator.finetunejob import children
from forgetless_operator.finetunejob.decision import RecordBaselineCache
from forgetless_operator.finetunejob.reads import NOTHING, Body, Concern, Reads, stage_phase, status
from forgetless_operator.finetunejob.state import JobPass


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


def reads(ftj: Body) -> Reads:
    if status(ftj).get("phase") in TERMINAL_PHASES or stage_phase(ftj, "baseline") in ("Succeeded", "Skipped"):
        return NOTHING
    return Reads(baseline_cache=True)


CONCERN = Concern("baseline cache", reads=reads)


def cache_hit(run: JobPass, spec: FineTuneJobSpec, record: dict) -> bool:
    """Skip the baseline stage when the cache holds its result (on the same output volume)."""
    if "baseline" in run.observed.jobs or record.get("jobName"):
        return False  # already running it: finish it
    if general_data(spec).kind == "selfRehearsal":
        return False  # the baseline pod writes the self-rehearsal data the train pods read (from its cache if made before)
    key = run.cache_key(spec)
    entry_json = run.observed.baseline_cache.get(cache_data_key(key)) if key else None
    if not entry_json:
        return False
    try:
        entry = json.loads(entry_json)
    except ValueError:
        return False
    if entry.get("claimName") != children.output_claim(spec):
        return False  # the cached results live on another volume, which evaluate cannot read
    summary = {k: v for k, v in entry.items() if k not in ("claimName", "storedAt")}
    summary["cached"] = True
    record.update(phase="Skipped", result=summary, startTime=run.now_s, completionTime=run.now_s,
                  message=f"baseline cache hit ({key})")
    run.status["baselineScores"] = dict(summary.get("scores") or {})
    run.event("BaselineCacheHit", f"baseline skipped: the base model was already scored on this suite ({key})")
    return True


def record(run: JobPass, spec: FineTuneJobSpec, result: dict) -> None:
    """A baseline the stage computed goes into the cache (not one it read from there)."""
    key = run.cache_key(spec)
    if not key or result.get("cached"):
        return
    entry = {**result, "claimName": children.output_claim(spec), "storedAt": run.now_s}
    data = cache_patch(run.observed.baseline_cache, key, entry, run.config.baseline_cache_max_entries)
    run.actions.append(RecordBaselineCache(run.namespace, run.config.baseline_cache_configmap, data))
