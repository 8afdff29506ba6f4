"""The FineTuneSweep controller: read a sweep and its trial FineTuneJobs, call the pure
`reconcile_sweep`, apply its Decision, write the status, record the events."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Callable, Optional

from forgetless.api.schema import API_VERSION as FTJ_API_VERSION
from forgetless.api.schema import KIND as FTJ_KIND
from forgetless.api.sweep import API_VERSION, KIND
from forgetless.vocabulary import LABEL_SWEEP

from forgetless_operator.finetunesweep.reconcile import reconcile_sweep
from forgetless_operator.kit import status as kit_status
from forgetless_operator.kit.actions import Decision
from forgetless_operator.kit.client import ApiError, KubeClient
from forgetless_operator.kit.events import EventRecorder
from forgetless_operator.kit.queue import WorkQueue
from forgetless_operator.kit.status import owned_by, status_of, write_status
from forgetless_operator.metrics import OperatorMetrics

OBJECT_READS = (("metadata", "uid"), ("metadata", "generation"), ("metadata", "labels"),
                ("metadata", "deletionTimestamp"), ("spec",), ("status",))
"""What a reconcile reads of the FineTuneSweep itself; its trials are read by label."""


def fingerprint(sweep: Any) -> str:
    return kit_status.fingerprint(sweep, OBJECT_READS)


def needs_resync(sweep: Any) -> bool:
    """An unfinished sweep not being deleted (its trials' events also trigger it)."""
    meta = sweep.get("metadata") or {}
    return (sweep.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not meta.get("deletionTimestamp")


class FineTuneSweepController:
    def __init__(self, kube: KubeClient, metrics: OperatorMetrics, clock: Callable[[], datetime],
                 events: EventRecorder, apply: Callable[[Any], Any]) -> None:
        self.kube, self.metrics, self.clock, self.events, self.apply = kube, metrics, clock, events, apply
        self.queue = WorkQueue("FineTuneSweep", self.reconcile_once, fingerprint, metrics.error)

    async def on_event(self, namespace: str, name: str, body: Any) -> None:
        await self.queue.on_object(namespace, name, body)

    async def trigger(self, namespace: str, name: str) -> None:
        await self.queue.trigger(namespace, name)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.sweeps.forget(namespace, name)
        self.queue.forget(namespace, name)

    async def list(self, namespace: str | None) -> list[dict]:
        try:
            return await self.kube.list(API_VERSION, KIND, namespace)
        except ApiError as exc:
            if exc.status == 404:  # the FineTuneSweep CRD is not installed: nothing to resync
                return []
            raise

    def resync(self, listed: list[dict], spawn: Callable[[Any], None]) -> int:
        triggered = 0
        for sweep in listed:
            if needs_resync(sweep):
                meta = sweep.get("metadata") or {}
                triggered += 1
                spawn(self.trigger(meta.get("namespace", ""), meta.get("name", "")))
        return triggered

    async def reconcile_once(self, namespace: str, name: str, body: Optional[dict] = None) -> Decision | None:
        """One pass of `reconcile_sweep`: its trials are the FineTuneJobs labelled with it (the sweep is
        always read fresh: `body` is not used)."""
        sweep = await self.kube.get(API_VERSION, KIND, namespace, name)
        if sweep is None:
            self.forget(namespace, name)
            return None
        jobs = await self.kube.list(FTJ_API_VERSION, FTJ_KIND, namespace, f"{LABEL_SWEEP}={name}")
        owned = {j["metadata"]["name"]: j for j in jobs if owned_by(j, sweep["metadata"]["uid"])}
        decision = reconcile_sweep(sweep, owned, self.clock())
        results = await asyncio.gather(*(self.apply(a) for a in decision.actions), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        written = await write_status(self.kube, API_VERSION, KIND, namespace, name, status_of(sweep),
                                     decision.status) or sweep
        self.queue.wrote(namespace, name, written)
        await self.events.record(sweep, decision.events)
        self.metrics.observe_sweep(namespace, name, decision.status)
        return decision
