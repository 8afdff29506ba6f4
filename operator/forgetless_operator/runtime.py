"""The operator's runtime: the controller kit's shared parts (API client, event recorder, shared reads,
clock, metrics) and the two controllers built on them, as the kopf edge (handlers.py) and the
operator-wide loops use them. kopf is not imported here."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from forgetless.api.schema import API_VERSION, KIND
from forgetless.vocabulary import REPORTING_COMPONENT, SOURCE_COMPONENT

from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.finetunejob.controller import FineTuneJobController
from forgetless_operator.finetunesweep.controller import FineTuneSweepController
from forgetless_operator.kit.client import KubeClient
from forgetless_operator.kit.events import EventRecorder
from forgetless_operator.kit.reads import SharedReads
from forgetless_operator.metrics import OperatorMetrics


@dataclass
class Runtime:
    """Operator-wide state (one per process or per test): the client, settings, metrics and controllers."""

    kube: KubeClient
    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    instance: str = "forgetless-operator"
    cache_key: Optional[Callable[..., Any]] = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    shared_ttl: float = 1.0
    scrape: Optional[Callable[[str], Awaitable[str]]] = None  # a pod's /metrics text (tests inject one)
    _tasks: set[asyncio.Future] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.events = EventRecorder(self.kube, self.clock, SOURCE_COMPONENT, REPORTING_COMPONENT, self.instance)
        self.jobs = FineTuneJobController(self.kube, self.config, self.metrics, self.clock, self.events,
                                          SharedReads(self.kube, self.shared_ttl), self.cache_key, self.scrape)
        self.sweeps = FineTuneSweepController(self.kube, self.metrics, self.clock, self.events, self.jobs.apply)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resync_pass(self, namespaces: list[str] | None) -> int:
        """List the FineTuneJobs and FineTuneSweeps (None: all namespaces) and reconcile, in the
        background, each one with work left. Returns how many were triggered."""
        scopes = namespaces or [None]
        listed = await asyncio.gather(*(self.kube.list(API_VERSION, KIND, ns) for ns in scopes))
        sweeps = await asyncio.gather(*(self.sweeps.list(ns) for ns in scopes))
        return (self.sweeps.resync([s for items in sweeps for s in items], self.spawn)
                + self.jobs.resync([j for items in listed for j in items], self.spawn))

    async def progress_pass(self) -> int:
        return await self.jobs.progress.read_pass()

    async def drain_events(self, timeout: float = 5.0) -> None:
        await self.events.drain(timeout)

    async def close(self) -> None:
        await self.jobs.progress.close()
        await self.kube.close()
