"""The operator's runtime: for one FineTuneJob, read what `reconcile` needs (`observe`), call it, apply
its Decision and patch the status (`reconcile_once`); plus the small parts that keep that cheap
under load: `Coalescer` (one reconcile per job at a time), `ChildFilter` (skip the watch events of
children that change nothing a reconcile reads), `EventQueue` (events posted in the background, after
the status patch), `SharedReads` (one GET for a burst of jobs reading the same object); and
`progress_pass`: the running stage's progress read from its rank-0 pod's /metrics into
`status.trainerStatus` (progress.py decides what; one optimistic-locked status PATCH per job per pass,
only when something changed).
kopf is not imported here: handlers.py wires watch events and the resync loop to this.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional

from forgetless.api.schema import API_VERSION, KIND
from forgetless.api.sweep import API_VERSION as SWEEP_API_VERSION
from forgetless.api.sweep import KIND as SWEEP_KIND
from forgetless.lifecycle import TERMINAL_PHASES

from forgetless_operator import children
from forgetless_operator.children import LABEL_JOB, LABEL_STAGE, OperatorConfig
from forgetless_operator.decision import (
    CreateObject,
    Decision,
    DeleteObject,
    Observed,
    PatchObject,
    RecordBaselineCache,
    requested,
)
from forgetless_operator.kube import ApiError, KubeClient
from forgetless_operator.metrics import OperatorMetrics
from forgetless_operator.observation import child_signature, index_jobs, owned_by, quiet_pod
from forgetless_operator.progress import same_progress, scrape_target, trainer_status
from forgetless.timefmt import fmt_time
from forgetless_operator.reconcile import permission_denied_status, reconcile
from forgetless_operator.sweep_reconcile import LABEL_SWEEP, reconcile_sweep

log = logging.getLogger("forgetless.operator")
LEGACY_FINALIZER = "forgetless.dev/finalizer"  # added by versions with a per-object kopf timer; removed on resync


def merge_patch(old: Any, new: Any) -> dict:
    """The RFC 7386 merge patch turning `old` into `new` (both dicts)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(before, dict):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif value != before:
            patch[key] = value
    return patch


_MISSING = object()


class Coalescer:
    """One run at a time per key: a trigger while a run is in progress marks the key dirty, and the
    run repeats once afterwards (however many triggers came). A run that returns False (it failed)
    is not repeated; the resync loop retries it.

    A trigger may say `needed`: a check made only once the run in progress is over, whether it
    still calls for a repeat (a watch event that raced the run's own writes: the echo of its status
    patch, or of the Job it created, arriving before the response did). The run repeats when any
    trigger without a check came or any check says yes."""

    def __init__(self) -> None:
        self._running: set[Any] = set()
        self._dirty: dict[Any, list[Optional[Callable[[], bool]]]] = {}

    def running(self, key: Any) -> bool:
        return key in self._running

    async def run(self, key: Any, once: Callable[[], Awaitable[bool]],
                  needed: Optional[Callable[[], bool]] = None) -> None:
        if key in self._running:
            self._dirty.setdefault(key, []).append(needed)
            return
        self._running.add(key)
        try:
            while True:
                self._dirty.pop(key, None)
                if not await once():
                    return
                checks = self._dirty.pop(key, None)
                if checks is None or not any(check is None or check() for check in checks):
                    return
        finally:
            self._running.discard(key)
            self._dirty.pop(key, None)

    def forget(self, key: Any) -> None:
        if key not in self._running:
            self._dirty.pop(key, None)


class ChildFilter:
    """Watch events of stage Jobs and Pods that cannot change a reconcile's Decision: the
    `child_signature` (what reconcile reads of a child) is remembered per child, from the create
    response of a Job the operator made and from every event; an event whose signature is the one
    already seen is skipped (the Job controller's status updates: active, ready, startTime; a pod
    going Running), and so is the first sight of a quiet pod (`quiet_pod`: alive, nothing to report,
    which to reconcile is the same as no pod). DELETED events and everything else trigger.

    Skipping is safe: a reconcile already ran (or is queued) after the event that carried the same
    signature, and it read the children fresh. Memory holds the `LIMIT` most recent children; one
    forgotten is treated as unseen (a Job then triggers once more). Time-based work and missed
    transitions are covered by the resync loop, which never skips."""

    LIMIT = 20_000

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, str, str], tuple] = OrderedDict()

    @staticmethod
    def _key(kind: str, body: Any) -> tuple[str, str, str]:
        meta = body.get("metadata") or {}
        return kind, meta.get("namespace", ""), meta.get("name", "")

    def _remember(self, key: tuple[str, str, str], signature: tuple) -> None:
        self._seen[key] = signature
        self._seen.move_to_end(key)
        while len(self._seen) > self.LIMIT:
            self._seen.popitem(last=False)

    def created(self, kind: str, body: Any) -> None:
        """The operator created this child (the create's response): its first events echo it."""
        self._remember(self._key(kind, body), child_signature(kind, body))

    def needs_reconcile(self, kind: str, body: Any, event_type: str | None = None) -> bool:
        key = self._key(kind, body)
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return True
        signature = child_signature(kind, body)
        known = self._seen.get(key)
        self._remember(key, signature)
        if known is None:
            return not (kind == "Pod" and quiet_pod(body))
        return known != signature


class SharedReads:
    """GETs of objects many jobs read (a PVC, the baseline-cache ConfigMap), shared for `ttl` seconds:
    a burst of new jobs costs one request, not one per job. Staleness is harmless here (a late cache
    entry means one more baseline run; a PVC is re-checked on the next resync)."""

    def __init__(self, kube: KubeClient, ttl: float) -> None:
        self.kube, self.ttl = kube, ttl
        self._reads: dict[tuple[str, str, str], tuple[float, asyncio.Future]] = {}

    async def get(self, kind: str, namespace: str, name: str) -> dict | None:
        key = (kind, namespace, name)
        loop = asyncio.get_running_loop()
        cached = self._reads.get(key)
        if cached is None or cached[0] < loop.time():
            future = asyncio.ensure_future(self.kube.get("v1", kind, namespace, name))
            cached = (loop.time() + self.ttl, future)
            self._reads[key] = cached
            if len(self._reads) > 1024:
                self._reads = {k: v for k, v in self._reads.items() if v[0] >= loop.time()}
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            self._reads.pop(key, None)
            raise


class EventQueue:
    """Events posted in the background by `workers` tasks, oldest first: a reconcile is done once its
    status is patched, and in a burst of new jobs their Job creates and status patches are not
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


@dataclass
class LiveTarget:
    """A job with a running stage whose progress can be read: where, and the object version it was seen at."""

    stage: str
    url: str
    resource_version: str
    trainer_status: Optional[dict]


@dataclass
class Runtime:
    """Operator-wide state: the API client, settings and metrics (one per process or per test)."""

    kube: KubeClient
    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    instance: str = "forgetless-operator"
    cache_key: Optional[Callable[..., Any]] = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    shared_ttl: float = 1.0
    _coalescer: "Coalescer" = field(default_factory=lambda: Coalescer())
    _children: "ChildFilter" = field(default_factory=lambda: ChildFilter())
    _fingerprints: dict[tuple[str, str], str] = field(default_factory=dict)
    _tasks: set[asyncio.Future] = field(default_factory=set)
    _shared: "SharedReads | None" = None
    scrape: Optional[Callable[[str], Awaitable[str]]] = None  # a pod's /metrics text (tests inject one)
    scrape_timeout: float = 3.0
    _live: dict[tuple[str, str], LiveTarget] = field(default_factory=dict)
    _scrape_session: Any = None  # aiohttp.ClientSession of the progress reads (no API credentials)
    _events: "EventQueue | None" = None

    async def post_events(self, obj: dict, events: list) -> None:
        """Queue the Decision's events (EventQueue: posted in the background, in order)."""
        if self._events is None:
            self._events = EventQueue(self._post)
        now = fmt_time(self.clock())
        for event in events:
            await self._events.put(obj, event, now)

    async def drain_events(self, timeout: float = 5.0) -> None:
        if self._events is not None:
            await self._events.drain(timeout)

    async def shared_get(self, kind: str, namespace: str, name: str) -> dict | None:
        """A GET of an object many jobs read, shared for `shared_ttl` seconds (see SharedReads)."""
        if self._shared is None:
            self._shared = SharedReads(self.kube, self.shared_ttl)
        return await self._shared.get(kind, namespace, name)

    # Watch events that only echo the operator's own writes are skipped: a FineTuneJob whose
    # generation, labels, deletion mark and status are what the last reconcile wrote (kopf's own
    # finalizer/annotation edits, our status patch), and child events that change nothing reconcile
    # reads (ChildFilter: the echo of a child just created, the Job controller's status counts, a new
    # Pending pod).
    # Time-based work (deadline, TTL) and errors are covered by the resync timer, which never skips.

    async def on_finetunejob(self, namespace: str, name: str, body: Any) -> None:
        key = (namespace, name)
        known, seen = self._fingerprints.get(key), fingerprint(body)
        if known == seen:
            return
        # First sight of a job (created, or listed at start-up): its watch body is as fresh as a GET
        # and cannot predate a write of ours, so the first reconcile uses it and saves that GET.
        # Every later reconcile re-reads the object. An event during a reconcile of the job is
        # judged after it: the echo of its status patch can come before the patch's response.
        await self.trigger(namespace, name, first_sight=body if known is None else None,
                           needed=lambda: self._fingerprints.get(key) != seen)

    async def on_child(self, kind: str, namespace: str, job: str, body: Any, event_type: str | None = None) -> None:
        if self._coalescer.running((namespace, job)):  # judged after it: it may be creating this child
            await self.trigger(namespace, job, needed=lambda: self._children.needs_reconcile(kind, body, event_type))
            return
        if not self._children.needs_reconcile(kind, body, event_type):
            return
        await self.trigger(namespace, job)

    async def trigger(self, namespace: str, name: str, first_sight: Optional[dict] = None,
                      needed: Optional[Callable[[], bool]] = None) -> None:
        """Reconcile the job now, or once more after the reconcile that is running (Coalescer; with
        `needed`, only if it says so then)."""
        bodies = [first_sight]  # only the first run of this trigger may use the watch body

        async def once() -> bool:
            return await self._reconcile_logged(namespace, name, bodies.pop() if bodies else None)

        await self._coalescer.run((namespace, name), once, needed)

    async def _reconcile_logged(self, namespace: str, name: str, body: Optional[dict] = None) -> bool:
        try:
            await self.reconcile_once(namespace, name, body)
        except Exception as exc:  # noqa: BLE001 - counted, logged; the resync loop retries
            self.metrics.error(namespace)
            log.warning("reconcile %s/%s failed: %s", namespace, name, exc)
            return False
        return True

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        self._fingerprints.pop((namespace, name), None)
        self._live.pop((namespace, name), None)
        self._coalescer.forget((namespace, name))

    # ------------------------------------------------------------------ FineTuneSweeps

    async def on_sweep(self, namespace: str, name: str, body: Any) -> None:
        if self._fingerprints.get(("sweep", namespace, name)) == fingerprint(body):
            return
        await self.trigger_sweep(namespace, name)

    async def trigger_sweep(self, namespace: str, name: str) -> None:
        async def once() -> bool:
            try:
                await self.reconcile_sweep_once(namespace, name)
            except Exception as exc:  # noqa: BLE001 - counted, logged; the resync loop retries
                self.metrics.error(namespace)
                log.warning("reconcile of sweep %s/%s failed: %s", namespace, name, exc)
                return False
            return True

        await self._coalescer.run(("sweep", namespace, name), once)

    def forget_sweep(self, namespace: str, name: str) -> None:
        self.metrics.sweeps.forget(namespace, name)
        self._fingerprints.pop(("sweep", namespace, name), None)
        self._coalescer.forget(("sweep", namespace, name))

    async def reconcile_sweep_once(self, namespace: str, name: str) -> Decision | None:
        """One pass of sweep_reconcile for a FineTuneSweep: its trials are the FineTuneJobs labelled with it."""
        sweep = await self.kube.get(SWEEP_API_VERSION, SWEEP_KIND, namespace, name)
        if sweep is None:
            self.forget_sweep(namespace, name)
            return None
        jobs = await self.kube.list(API_VERSION, KIND, namespace, f"{LABEL_SWEEP}={name}")
        owned = {j["metadata"]["name"]: j for j in jobs if owned_by(j, sweep["metadata"]["uid"])}
        decision = reconcile_sweep(sweep, owned, self.clock())
        results = await asyncio.gather(*(self.apply(a) for a in decision.actions), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        old = dict(sweep.get("status") or {})
        old.pop("kopf", None)
        patch = merge_patch(old, decision.status)
        written = sweep
        if patch:
            written = await self.kube.patch(SWEEP_API_VERSION, SWEEP_KIND, namespace, name, {"status": patch},
                                            subresource="status")
        self._fingerprints[("sweep", namespace, name)] = fingerprint(written)
        await self.post_events(sweep, decision.events)
        self.metrics.observe_sweep(namespace, name, decision.status)
        return decision

    async def resync_pass(self, namespaces: list[str] | None) -> int:
        """List the FineTuneJobs (None: all namespaces) and reconcile, in the background, each one with
        time-based work left; strip the legacy finalizer. Returns how many were triggered."""
        scopes = namespaces or [None]
        listed = await asyncio.gather(*(self.kube.list(API_VERSION, KIND, ns) for ns in scopes))
        sweeps = await asyncio.gather(*(self._list_sweeps(ns) for ns in scopes))
        triggered = 0
        for sweep in (item for items in sweeps for item in items):
            meta = sweep.get("metadata") or {}
            if (sweep.get("status") or {}).get("phase") not in ("Succeeded", "Failed") and not meta.get("deletionTimestamp"):
                triggered += 1
                self.spawn(self.trigger_sweep(meta.get("namespace", ""), meta.get("name", "")))
        for ftj in (item for items in listed for item in items):
            meta = ftj.get("metadata") or {}
            namespace, name = meta.get("namespace", ""), meta.get("name", "")
            if LEGACY_FINALIZER in (meta.get("finalizers") or []):
                remaining = [f for f in meta["finalizers"] if f != LEGACY_FINALIZER]
                self.spawn(self.kube.patch(API_VERSION, KIND, namespace, name,
                                           {"metadata": {"finalizers": remaining or None}}))
            if needs_resync(ftj):
                triggered += 1
                self.spawn(self.trigger(namespace, name))
        return triggered

    async def _list_sweeps(self, namespace: str | None) -> list[dict]:
        try:
            return await self.kube.list(SWEEP_API_VERSION, SWEEP_KIND, namespace)
        except ApiError as exc:
            if exc.status == 404:  # the FineTuneSweep CRD is not installed: nothing to resync
                return []
            raise

    async def observe(self, ftj: dict) -> Observed:
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = ftj.get("status") or {}
        if meta.get("deletionTimestamp"):
            return Observed()
        if status.get("phase") in TERMINAL_PHASES:
            if not hand_off_pending(ftj):
                return Observed()  # only the TTL is left to watch
            spec_cm, services = await asyncio.gather(self._legacy_spec_configmap(ftj), self._inference_services(ftj))
            configmaps = {spec_cm["metadata"]["name"]: spec_cm} if spec_cm is not None else {}
            return Observed(configmaps=configmaps, inference_services=services)
        if not status.get("specHash"):
            # Not started: no children are expected (one left by a crash between create and status
            # patch makes the create answer 409 AlreadyExists, which is success), so only read what
            # preflight and the baseline-cache decision need.
            cache, missing = await asyncio.gather(
                self.shared_get("ConfigMap", namespace, self.config.baseline_cache_configmap),
                self._missing_claims(ftj),
            )
            return Observed(baseline_cache=dict((cache or {}).get("data") or {}), missing_claims=frozenset(missing))
        selector = f"{LABEL_JOB}={name}"
        jobs, pods, services, spec_cm = await asyncio.gather(
            self.kube.list("batch/v1", "Job", namespace, selector),
            self.kube.list("v1", "Pod", namespace, selector),
            self.kube.list("v1", "Service", namespace, selector),
            self._legacy_spec_configmap(ftj),
        )
        current, superseded = index_jobs(jobs)
        observed = Observed(jobs=current, superseded_jobs=superseded,
                            services={s["metadata"]["name"]: s for s in services})
        for pod in pods:
            stage = (pod["metadata"].get("labels") or {}).get(LABEL_STAGE)
            if stage:
                observed.pods.setdefault(stage, []).append(pod)
        if spec_cm is not None:
            observed.configmaps[spec_cm["metadata"]["name"]] = spec_cm
        observed.inference_services = await self._inference_services(ftj)
        baseline = (status.get("stages") or {}).get("baseline") or {}
        if "baseline" not in observed.jobs and baseline.get("phase") not in ("Succeeded", "Skipped"):
            cache = await self.shared_get("ConfigMap", namespace, self.config.baseline_cache_configmap)
            observed.baseline_cache = dict((cache or {}).get("data") or {})
        return observed

    async def _legacy_spec_configmap(self, ftj: dict) -> dict | None:
        """The `<job>-spec` ConfigMap, read only for a job started by an operator before
        status.startedSpec (whose reconcile then copies it there)."""
        if (ftj.get("status") or {}).get("startedSpec"):
            return None
        meta = ftj["metadata"]
        return await self.kube.get("v1", "ConfigMap", meta["namespace"], children.spec_configmap_name(meta["name"]))

    async def _inference_services(self, ftj: dict) -> dict:
        target = inference_service_ref(ftj)
        if target is None:
            return {}
        namespace = target.get("namespace") or ftj["metadata"]["namespace"]
        found = await self.kube.get("serving.kserve.io/v1beta1", "InferenceService", namespace, target["name"])
        return {(namespace, target["name"]): found}

    async def _missing_claims(self, ftj: dict) -> set[str]:
        from forgetless.api.schema import FineTuneJobSpec

        try:
            spec = FineTuneJobSpec.model_validate(ftj.get("spec") or {})
        except ValueError:
            return set()
        names = sorted(children.claims(spec))
        found = await asyncio.gather(
            *(self.shared_get("PersistentVolumeClaim", ftj["metadata"]["namespace"], c) for c in names)
        )
        return {c for c, obj in zip(names, found) if obj is None}

    async def reconcile_once(self, namespace: str, name: str, body: Optional[dict] = None) -> Decision | None:
        ftj = body if body is not None else await self.kube.get(API_VERSION, KIND, namespace, name)
        if ftj is None:
            self.forget(namespace, name)
            return None
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
        old = dict(ftj.get("status") or {})
        old.pop("kopf", None)
        patch = merge_patch(old, decision.status)
        deleted_itself = any(isinstance(a, DeleteObject) and (a.kind, a.namespace, a.name) == (KIND, namespace, name)
                             for a in decision.actions)
        written = ftj
        if patch and not deleted_itself:  # with no finalizer a deleted job is gone at once: nothing to patch
            try:
                written = await self.kube.patch(API_VERSION, KIND, namespace, name, {"status": patch},
                                                subresource="status")
            except ApiError as exc:
                if exc.status != 404:
                    raise
                deleted_itself = True  # deleted meanwhile (by a user): its events still tell what happened
        if not deleted_itself:
            self._fingerprints[(namespace, name)] = fingerprint(written)
            self._track_progress(namespace, name, written, observed)
        await self.post_events(ftj, decision.events)
        if deleted_itself:
            self.forget(namespace, name)
        else:
            self.metrics.observe(namespace, name, old, decision.status)
        return decision

    # ------------------------------------------------------------------ live progress

    def _track_progress(self, namespace: str, name: str, written: dict, observed: Observed) -> None:
        """Remember where the running stage's progress can be read (or forget it: no stage running)."""
        status = written.get("status") or {}
        target = scrape_target(status, observed.pods)
        version = (written.get("metadata") or {}).get("resourceVersion")
        if target is None or not version:
            self._live.pop((namespace, name), None)
            return
        self._live[(namespace, name)] = LiveTarget(target[0], target[1], version, status.get("trainerStatus"))

    async def _scrape(self, url: str) -> str:
        """A pod's /metrics text, GET with a plain session (never the API server's credentials)."""
        if self.scrape is not None:
            return await self.scrape(url)
        import aiohttp

        if self._scrape_session is None or self._scrape_session.closed:
            self._scrape_session = aiohttp.ClientSession()
        async with self._scrape_session.get(url, timeout=aiohttp.ClientTimeout(total=self.scrape_timeout)) as response:
            response.raise_for_status()
            return await response.text()

    async def progress_pass(self, concurrency: int = 32) -> int:
        """Read each running stage's progress and write the changed ones to status.trainerStatus (the
        PATCH carries the resourceVersion the job was seen at: a reconcile that wrote meanwhile wins, and
        the next one re-tracks). A pod that does not answer is skipped; returns how many were written."""
        gate = asyncio.Semaphore(concurrency)

        async def one(key: tuple[str, str], target: LiveTarget) -> bool:
            async with gate:
                try:
                    text = await self._scrape(target.url)
                except Exception as exc:  # noqa: BLE001 - a pod still loading, or gone: next pass
                    log.debug("progress of %s/%s: %s unreachable: %s", *key, target.url, exc)
                    return False
            new = trainer_status(target.stage, text, fmt_time(self.clock()), job=key[1])
            if new is None or same_progress(new, target.trainer_status) or self._live.get(key) is not target:
                return False
            patch = {"metadata": {"resourceVersion": target.resource_version},
                     "status": {"trainerStatus": merge_patch(target.trainer_status or {}, new)}}
            try:
                written = await self.kube.patch(API_VERSION, KIND, key[0], key[1], patch, subresource="status")
            except ApiError as exc:
                if exc.status in (404, 409):  # deleted, or written meanwhile: the next reconcile re-tracks
                    if self._live.get(key) is target:
                        self._live.pop(key, None)
                    return False
                raise
            self._fingerprints[key] = fingerprint(written)
            if self._live.get(key) is target:
                target.resource_version = (written.get("metadata") or {}).get("resourceVersion", "")
                target.trainer_status = (written.get("status") or {}).get("trainerStatus")
            self.metrics.progress(key[0], key[1], (written.get("status") or {}).get("trainerStatus"))
            return True

        results = await asyncio.gather(*(one(k, t) for k, t in list(self._live.items())), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.metrics.error("")
                log.warning("progress update failed: %s", result)
        return sum(1 for r in results if r is True)

    async def close(self) -> None:
        if self._scrape_session is not None:
            await self._scrape_session.close()
            self._scrape_session = None
        await self.kube.close()

    async def _permission_denied(self, ftj: dict, denied: list[tuple[str, str, str, str]]) -> None:
        meta = ftj["metadata"]
        for verb, kind, namespace, why in denied:
            log.error("forbidden: the operator may not %s %s in namespace %s (for FineTuneJob %s/%s): %s; grant it "
                      "in the operator's (Cluster)Role", verb, kind.lower() + "s", namespace or "-", meta["namespace"],
                      meta["name"], why)
        status = permission_denied_status(ftj, denied, self.clock())
        old = dict(ftj.get("status") or {})
        old.pop("kopf", None)
        patch = merge_patch(old, status)
        if not patch:
            return
        try:
            written = await self.kube.patch(API_VERSION, KIND, meta["namespace"], meta["name"], {"status": patch},
                                            subresource="status")
            self._fingerprints[(meta["namespace"], meta["name"])] = fingerprint(written)
        except ApiError as exc:
            log.error("could not record the missing permission on FineTuneJob %s/%s either: %s",
                      meta["namespace"], meta["name"], exc)

    async def _post(self, ftj: dict, event: Any, now: str) -> None:
        body = children.event(ftj, event.reason, event.message, event.type, now, self.instance)
        try:
            await self.kube.create(body)
        except ApiError as exc:  # an event is worth a log line, not a failed reconcile
            if exc.status == 403:
                log.error("forbidden: the operator may not create events in namespace %s (event %s for %s): %s; "
                          "grant it in the operator's (Cluster)Role", ftj["metadata"]["namespace"], event.reason,
                          ftj["metadata"]["name"], exc)
            else:
                log.warning("posting event %s for %s failed: %s", event.reason, ftj["metadata"]["name"], exc)

    async def apply(self, action: Any) -> None:
        kube = self.kube
        if isinstance(action, CreateObject):
            created = await kube.create(action.obj)
            if created and action.obj["kind"] in ("Job", "Pod"):
                self._children.created(action.obj["kind"], created)
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
            "metadata": {"name": action.name, "namespace": action.namespace, "labels": dict(children.MANAGED_BY)},
            "data": {k: v for k, v in action.data.items() if v is not None},
        }
        if not await self.kube.create(body):  # created meanwhile by another job's reconcile
            await self.kube.patch("v1", "ConfigMap", action.namespace, action.name, {"data": action.data})


def inference_service_ref(ftj: Any) -> dict | None:
    """spec.output.handOff.inferenceService of a FineTuneJob body, if any (read raw: no validation)."""
    target = ((((ftj.get("spec") or {}).get("output") or {}).get("handOff") or {}).get("inferenceService"))
    return target if isinstance(target, dict) and target.get("name") else None


def hand_off_pending(ftj: Any) -> bool:
    """A Succeeded job whose InferenceService has not been pointed at its model yet."""
    status = ftj.get("status") or {}
    handed = (status.get("handOff") or {}).get("inferenceService") or {}
    return (inference_service_ref(ftj) is not None and status.get("phase") == "Succeeded"
            and bool(status.get("promoted")) and handed.get("phase") != "Patched")


def needs_resync(ftj: Any) -> bool:
    """Whether the resync loop reconciles this FineTuneJob: all but those finished for good (terminal,
    no TTL to wait for, no hand-off pending) and those being deleted."""
    meta, spec, status = ftj.get("metadata") or {}, ftj.get("spec") or {}, ftj.get("status") or {}
    if meta.get("deletionTimestamp"):
        return False
    if status.get("phase") in TERMINAL_PHASES:
        return spec.get("ttlSecondsAfterFinished") is not None or hand_off_pending(ftj)
    return True


def peering_allows(peering: dict | None, identity: str, priority: int, now: datetime) -> bool:
    """kopf's rule (kopf/_core/engines/peering.py): this replica acts unless another live peer in the
    peering object's status has the same or a higher priority. No peering object: it acts."""
    from datetime import timedelta

    for peer, info in ((peering or {}).get("status") or {}).items():
        if peer == identity or not isinstance(info, dict):
            continue
        try:
            seen = datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
            alive = seen + timedelta(seconds=int(info.get("lifetime", 60))) > now
        except ValueError:
            continue
        if alive and int(info.get("priority", 0)) >= priority:
            return False
    return True


def fingerprint(body: Any) -> str:
    """What a FineTuneJob's reconcile depends on, besides children and the clock."""
    meta = body.get("metadata") or {}
    status = {k: v for k, v in (body.get("status") or {}).items() if k != "kopf"}
    return json.dumps([meta.get("uid"), meta.get("generation"), meta.get("labels"), meta.get("deletionTimestamp"),
                       body.get("spec"), status], sort_keys=True, default=str)
