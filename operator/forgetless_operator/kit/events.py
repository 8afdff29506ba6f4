"""Events: core/v1 Events about an object, posted in the background, oldest first."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Mapping

from forgetless.timefmt import fmt_time

from forgetless_operator.kit.client import ApiError, KubeClient

log = logging.getLogger("forgetless.operator")


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


class EventQueue:
    """Events posted in the background by `workers` tasks, oldest first: a reconcile is done once its
    status is patched, and in a burst of new objects their creates and status patches are not
    queued behind each other's events at the API server. Bounded: past `limit` waiting events
    `put` waits (the reconciles slow down, none is dropped). `drain` at shutdown posts what is
    left (for at most its timeout). An event still waiting when the process is killed is lost, as
    one whose POST failed always was (events are the record for humans; the status is the state)."""

    def __init__(self, post: Callable[..., Awaitable[None]], workers: int = 4, limit: int = 2000) -> None:
        self._post, self._workers, self._limit = post, workers, limit
        self._queue: asyncio.Queue | None = None
        self._tasks: list[asyncio.Task] = []

    async def put(self, *args: Any) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue(self._limit)
            self._tasks = [asyncio.ensure_future(self._work()) for _ in range(self._workers)]
        await self._queue.put(args)

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            args = await self._queue.get()
            try:
                await self._post(*args)
            except Exception as exc:  # noqa: BLE001 - _post logs API errors; anything else must not end the worker
                log.warning("posting an event failed: %s", exc)
            finally:
                self._queue.task_done()

    async def drain(self, timeout: float = 5.0) -> None:
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d events not posted before shutdown", self._queue.qsize())
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue, self._tasks = None, []


def event_object(involved: Mapping[str, Any], event: Event, now: str, source: str, reporting: str,
                 instance: str) -> dict[str, Any]:
    """A core/v1 Event about `involved` (which carries its apiVersion and kind)."""
    meta = involved["metadata"]
    ref = {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"), "name": meta["name"],
           "namespace": meta["namespace"], "uid": meta["uid"]}
    if meta.get("resourceVersion"):
        ref["resourceVersion"] = meta["resourceVersion"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": ref,
        "reason": event.reason,
        "message": event.message[:1024],
        "type": event.type,
        "source": {"component": source},
        "reportingComponent": reporting,
        "reportingInstance": instance,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


class EventRecorder:
    """Records a reconcile's events about an object: queued (EventQueue), posted in order; a failed
    POST is a log line, never a failed reconcile."""

    def __init__(self, kube: KubeClient, clock: Callable[[], datetime], source: str, reporting: str,
                 instance: str) -> None:
        self.kube, self.clock = kube, clock
        self.source, self.reporting, self.instance = source, reporting, instance
        self._queue: EventQueue | None = None

    async def record(self, involved: Mapping[str, Any], events: Iterable[Event]) -> None:
        if self._queue is None:
            self._queue = EventQueue(self._post)
        now = fmt_time(self.clock())
        for event in events:
            await self._queue.put(involved, event, now)

    async def drain(self, timeout: float = 5.0) -> None:
        if self._queue is not None:
            await self._queue.drain(timeout)

    async def _post(self, involved: Mapping[str, Any], event: Event, now: str) -> None:
        meta = involved["metadata"]
        try:
            await self.kube.create(event_object(involved, event, now, self.source, self.reporting, self.instance))
        except ApiError as exc:
            if exc.status == 403:
                log.error("forbidden: the operator may not create events in namespace %s (event %s for %s): %s; "
                          "grant it in the operator's (Cluster)Role", meta["namespace"], event.reason,
                          meta["name"], exc)
            else:
                log.warning("posting event %s for %s failed: %s", event.reason, meta["name"], exc)
