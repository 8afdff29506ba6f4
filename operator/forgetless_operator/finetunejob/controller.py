"""The FineTuneJob controller: for one FineTuneJob, read what the read plan names (`observe`), call
the pure `reconcile`, apply its Decision, write the status and record the events (`reconcile_once`);
the watch events of FineTuneJobs and of their children, and the resync pass, go through the kit's
WorkQueue and ChildFilter. kopf is not imported here: handlers.py wires watch events to this."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Callable, Optional

from forgetless.api.schema import API_VERSION, KIND
from forgetless.vocabulary import LABEL_JOB, LABEL_STAGE, MANAGED_BY

from forgetless_operator.finetunejob import readplan
from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.finetunejob.decision import (
    CreateObject, Decision, DeleteObject, Observed, PatchObject, RecordBaselineCache, requested,
)
from forgetless_operator.finetunejob.features import hand_off
from forgetless_operator.finetunejob.features.progress import LiveProgress
from forgetless_operator.finetunejob.observation import index_jobs
from forgetless_operator.finetunejob.reconcile import permission_denied_status, reconcile
from forgetless_operator.kit.children import ChildFilter
from forgetless_operator.kit.client import ApiError, KubeClient
from forgetless_operator.kit.events import EventRecorder
from forgetless_operator.kit.queue import WorkQueue
from forgetless_operator.kit.reads import SharedReads
from forgetless_operator.kit.status import status_of, write_status
from forgetless_operator.metrics import OperatorMetrics

log = logging.getLogger("forgetless.operator")


class FineTuneJobController:
    def __init__(self, kube: KubeClient, config: OperatorConfig, metrics: OperatorMetrics,
                 clock: Callable[[], datetime], events: EventRecorder, shared: SharedReads,
                 cache_key: Optional[Callable[..., Any]] = None,
                 scrape: Optional[Callable[..., Any]] = None) -> None:
        self.kube, self.config, self.metrics, self.clock = kube, config, metrics, clock
        self.events, self.shared, self.cache_key = events, shared, cache_key
        self.queue = WorkQueue("FineTuneJob", self.reconcile_once, readplan.fingerprint, metrics.error)
        self.children = ChildFilter(readplan.child_signature, readplan.child_is_quiet)
        self.progress = LiveProgress(kube, metrics, clock, self.queue.wrote, scrape)

    # ------------------------------------------------------------------ triggers

    async def on_event(self, namespace: str, name: str, body: Any) -> None:
        """A watch event of the FineTuneJob (skipped when it echoes our own last write)."""
        await self.queue.on_object(namespace, name, body)

    async def on_child(self, kind: str, namespace: str, ftj_name: str, body: Any,
                       event_type: str | None = None) -> None:
        """A watch event of a stage Job or Pod of FineTuneJob `ftj_name`."""
        if self.queue.running(namespace, ftj_name):  # judged after it: it may be creating this child
            await self.queue.trigger(namespace, ftj_name,
                                     needed=lambda: self.children.needs_reconcile(kind, body, event_type))
            return
        if self.children.needs_reconcile(kind, body, event_type):
            await self.queue.trigger(namespace, ftj_name)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        self.queue.forget(namespace, name)
        self.progress.forget(namespace, name)

    def resync(self, listed: list[dict], spawn: Callable[[Any], None]) -> int:
        """Trigger, in the background, each listed FineTuneJob the read plan says has work left."""
        triggered = 0
        for ftj in listed:
            if readplan.needs_resync(ftj):
                meta = ftj.get("metadata") or {}
                triggered += 1
                spawn(self.queue.trigger(meta.get("namespace", ""), meta.get("name", "")))
        return triggered

    # ------------------------------------------------------------------ one reconcile

    async def observe(self, ftj: dict) -> Observed:
        """Read what the read plan names for this job (and nothing else)."""
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        reads = readplan.plan(ftj)
        selector = f"{LABEL_JOB}={name}"
        claims = sorted(reads.claims)
        services_wanted = sorted(reads.inference_services)

        async def nothing() -> Any:
            return None

        listed, cache, claim_objects, services = await asyncio.gather(
            asyncio.gather(self.kube.list("batch/v1", "Job", namespace, selector),
                           self.kube.list("v1", "Pod", namespace, selector),
                           self.kube.list("v1", "Service", namespace, selector)) if reads.children else nothing(),
            self.shared.get("v1", "ConfigMap", namespace, self.config.baseline_cache_configmap)
            if reads.baseline_cache else nothing(),
            asyncio.gather(*(self.shared.get("v1", "PersistentVolumeClaim", namespace, c) for c in claims)),
            asyncio.gather(*(self.kube.get(hand_off.API_VERSION, hand_off.KIND, ns, n) for ns, n in services_wanted)),
        )
        observed = Observed(missing_claims=frozenset(c for c, obj in zip(claims, claim_objects) if obj is None),
                            inference_services=dict(zip(services_wanted, services)))
        if reads.baseline_cache:
            observed.baseline_cache = dict((cache or {}).get("data") or {})
        if listed is not None:
            jobs, pods, child_services = listed
            observed.jobs, observed.superseded_jobs = index_jobs(jobs)
            observed.services = {s["metadata"]["name"]: s for s in child_services}
            for pod in pods:
                stage = (pod["metadata"].get("labels") or {}).get(LABEL_STAGE)
                if stage:
                    observed.pods.setdefault(stage, []).append(pod)
        return observed

    async def reconcile_once(self, namespace: str, name: str, body: Optional[dict] = None) -> Decision | None:
        ftj = body if body is not None else await self.kube.get(API_VERSION, KIND, namespace, name)
        if ftj is None:
            self.forget(namespace, name)
            return None
        ftj = {"apiVersion": API_VERSION, "kind": KIND, **ftj}
        observed = await self.observe(ftj)
        decision = reconcile(ftj, observed, self.clock(), self.config, cache_key=self.cache_key)
        results = await asyncio.gather(*(self.apply(a) for a in decision.actions), return_exceptions=True)
        denied = [(*requested(a), str(r)) for a, r in zip(decision.actions, results)
                  if isinstance(r, ApiError) and r.status == 403]
        if denied:  # missing RBAC: say so on the job and in the log, and try again at the next resync
            await self._permission_denied(ftj, denied)
            return decision
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the status is not patched: the next reconcile redoes the whole step
        old = status_of(ftj)
        deleted_itself = any(isinstance(a, DeleteObject) and (a.kind, a.namespace, a.name) == (KIND, namespace, name)
                             for a in decision.actions)
        written: Optional[dict] = ftj
        if not deleted_itself:  # with no finalizer a deleted job is gone at once: nothing to patch
            try:
                written = await write_status(self.kube, API_VERSION, KIND, namespace, name, old, decision.status) or ftj
            except ApiError as exc:
                if exc.status != 404:
                    raise
                deleted_itself = True  # deleted meanwhile (by a user): its events still tell what happened
        if not deleted_itself:
            self.queue.wrote(namespace, name, written)
            self.progress.track(namespace, name, written, observed.pods)
        await self.events.record(ftj, decision.events)
        if deleted_itself:
            self.forget(namespace, name)
        else:
            self.metrics.observe(namespace, name, old, decision.status)
        return decision

    async def _permission_denied(self, ftj: dict, denied: list[tuple[str, str, str, str]]) -> None:
        meta = ftj["metadata"]
        for verb, kind, namespace, why in denied:
            log.error("forbidden: the operator may not %s %s in namespace %s (for FineTuneJob %s/%s): %s; grant it "
                      "in the operator's (Cluster)Role", verb, kind.lower() + "s", namespace or "-", meta["namespace"],
                      meta["name"], why)
        try:
            written = await write_status(self.kube, API_VERSION, KIND, meta["namespace"], meta["name"], status_of(ftj),
                                         permission_denied_status(ftj, denied, self.clock()))
        except ApiError as exc:
            log.error("could not record the missing permission on FineTuneJob %s/%s either: %s",
                      meta["namespace"], meta["name"], exc)
            return
        if written is not None:
            self.queue.wrote(meta["namespace"], meta["name"], written)

    async def apply(self, action: Any) -> None:
        kube = self.kube
        if isinstance(action, CreateObject):
            created = await kube.create(action.obj)
            if created and action.obj["kind"] in ("Job", "Pod"):
                self.children.created(action.obj["kind"], created)
        elif isinstance(action, DeleteObject):
            await kube.delete(action.api_version, action.kind, action.namespace, action.name, action.propagation_policy)
        elif isinstance(action, PatchObject):
            await kube.patch(action.api_version, action.kind, action.namespace, action.name, action.patch)
        elif isinstance(action, RecordBaselineCache):
            await self._record_cache(action)
        else:  # pragma: no cover - a new Action type without an edge
            raise TypeError(f"unknown action {action!r}")

    async def _record_cache(self, action: RecordBaselineCache) -> None:
        try:
            await self.kube.patch("v1", "ConfigMap", action.namespace, action.name, {"data": action.data})
            return
        except ApiError as exc:
            if exc.status != 404:
                raise
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": action.name, "namespace": action.namespace, "labels": dict(MANAGED_BY)},
            "data": {k: v for k, v in action.data.items() if v is not None},
        }
        if not await self.kube.create(body):  # created meanwhile by another job's reconcile
            await self.kube.patch("v1", "ConfigMap", action.namespace, action.name, {"data": action.data})

