"""The kopf edge: watch FineTuneJobs and their children, call `reconcile`, apply its Decision.

Triggers (all level-triggered: each one re-reads everything and reconciles the owning job):
- every watch event of a FineTuneJob (`@kopf.on.event`; DELETED drops the job's metric series),
- every watch event of a batch/v1 Job or Pod labelled `forgetless.dev/job` (server-side label
  selector, so the operator never lists unrelated pods),
- one operator-wide resync loop (`resync_loop`): every `--resync-seconds` it lists the FineTuneJobs
  and reconciles each one that still has time-based work (deadlines, TTL, retries after API errors,
  a pending hand-off).
Triggers for the same job coalesce: while one reconcile runs, further triggers mark the job dirty
and it runs once more afterwards. Nothing is kept in memory that matters for correctness; the
state is the FineTuneJob status and the children (see reconcile.py).

No finalizer: only `@kopf.on.event` handlers are registered, so kopf writes nothing to a new object
(no finalizer, no diff-base annotation, no progress) and a FineTuneJob is deleted at once even with
no operator running; the children go through owner-reference garbage collection. (A per-object
`@kopf.timer` would make kopf's finalizer mandatory: an extra PATCH and watch round before the first
reconcile of every new job, and every job stuck in Terminating once the operator is uninstalled.)
The finalizer `forgetless.dev/finalizer` that earlier versions added is removed by the resync loop.
Peering: `--standalone` for one replica; otherwise kopf peering with the given name (needs the
KopfPeering / ClusterKopfPeering CRDs from the chart) so that only one replica acts; kopf pauses
the watch handlers of a paused replica, and the resync loop reads the same peering object
(`peering_allows`) and skips its pass while another live peer has the same or a higher priority.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import kopf

from forgetless.api.schema import API_VERSION, GROUP, KIND, PLURAL, VERSION
from forgetless.lifecycle import TERMINAL_PHASES

from forgetless_operator import children
from forgetless_operator.children import LABEL_JOB, LABEL_STAGE, OperatorConfig
from forgetless_operator.kube import ApiError, KubeClient
from forgetless_operator.metrics import OperatorMetrics, make_app, start_server
from forgetless_operator.reconcile import (
    CreateObject,
    Decision,
    DeleteObject,
    Observed,
    PatchObject,
    RecordBaselineCache,
    index_jobs,
    reconcile,
)

log = logging.getLogger("forgetless.operator")
LEGACY_FINALIZER = "forgetless.dev/finalizer"  # added by versions with a per-object kopf timer; removed on resync
PEERING_API = "kopf.dev/v1"


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


def login(logger: Any = log, **kwargs: Any) -> Any:
    """In-cluster service account, else the kubeconfig (via the kubernetes client, which handles exec
    plugins), else kopf's own kubeconfig parser."""
    info = kopf.login_with_service_account(logger=logger, **kwargs)
    if info is None:
        # the kubernetes client freezes $KUBECONFIG when it is first imported: read it now (and put the
        # client's default back afterwards: other users of the client in this process keep theirs)
        from kubernetes.config import kube_config

        frozen = kube_config.KUBE_CONFIG_DEFAULT_LOCATION
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION = os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            info = kopf.login_via_client(logger=logger, **kwargs)
        except Exception as exc:  # noqa: BLE001 - fall back to kopf's parser
            logger.debug("login via the kubernetes client failed: %s", exc)
            info = None
        finally:
            kube_config.KUBE_CONFIG_DEFAULT_LOCATION = frozen
    return info or kopf.login_with_kubeconfig(logger=logger, **kwargs)


@dataclass
class _JobState:
    running: bool = False
    dirty: bool = False


@dataclass
class Runtime:
    """Operator-wide state: the API client, settings and metrics (one per process or per test)."""

    kube: KubeClient
    config: OperatorConfig = field(default_factory=OperatorConfig)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    instance: str = "forgetless-operator"
    cache_key: Optional[Callable[..., Any]] = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    _jobs: dict[tuple[str, str], _JobState] = field(default_factory=dict)
    _fingerprints: dict[tuple[str, str], str] = field(default_factory=dict)
    _echoes: set[tuple[str, str, str, str]] = field(default_factory=set)
    _tasks: set[asyncio.Future] = field(default_factory=set)
    shared_ttl: float = 1.0
    _shared: dict[tuple[str, str, str], tuple[float, asyncio.Future]] = field(default_factory=dict)

    async def shared_get(self, kind: str, namespace: str, name: str) -> dict | None:
        """GET of an object many jobs read (a PVC, the baseline-cache ConfigMap), shared for `shared_ttl`
        seconds: a burst of new jobs costs one request, not one per job. Staleness is harmless here
        (a late cache entry means one more baseline run; a PVC is re-checked on the next resync)."""
        key = (kind, namespace, name)
        loop = asyncio.get_running_loop()
        cached = self._shared.get(key)
        if cached is None or cached[0] < loop.time():
            future = asyncio.ensure_future(self.kube.get("v1", kind, namespace, name))
            cached = (loop.time() + self.shared_ttl, future)
            self._shared[key] = cached
            if len(self._shared) > 1024:
                self._shared = {k: v for k, v in self._shared.items() if v[0] >= loop.time()}
        try:
            return await asyncio.shield(cached[1])
        except Exception:
            self._shared.pop(key, None)
            raise

    # Watch events that only echo the operator's own writes are skipped: a FineTuneJob whose
    # generation, labels, deletion mark and status are what the last reconcile wrote (kopf's own
    # finalizer/annotation edits, our status patch), and the ADDED event of a child just created.
    # Time-based work (deadline, TTL) and errors are covered by the resync timer, which never skips.

    async def on_finetunejob(self, namespace: str, name: str, body: Any) -> None:
        if self._fingerprints.get((namespace, name)) == fingerprint(body):
            return
        await self.trigger(namespace, name)

    async def on_child(self, kind: str, namespace: str, job: str, body: Any) -> None:
        meta = body.get("metadata") or {}
        echo = (kind, namespace, meta.get("name", ""), meta.get("resourceVersion", ""))
        if echo in self._echoes:
            self._echoes.discard(echo)
            return
        await self.trigger(namespace, job)

    async def trigger(self, namespace: str, name: str) -> None:
        state = self._jobs.setdefault((namespace, name), _JobState())
        if state.running:
            state.dirty = True
            return
        state.running = True
        try:
            while True:
                state.dirty = False
                try:
                    await self.reconcile_once(namespace, name)
                except Exception as exc:  # noqa: BLE001 - counted, logged; the resync timer retries
                    self.metrics.error(namespace)
                    log.warning("reconcile %s/%s failed: %s", namespace, name, exc)
                    return
                if not state.dirty:
                    return
        finally:
            state.running = False

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget(namespace, name)
        self._fingerprints.pop((namespace, name), None)
        state = self._jobs.get((namespace, name))
        if state is not None and not state.running:
            del self._jobs[(namespace, name)]

    async def resync_pass(self, namespaces: list[str] | None) -> int:
        """List the FineTuneJobs (None: all namespaces) and reconcile, in the background, each one with
        time-based work left; strip the legacy finalizer. Returns how many were triggered."""
        listed = await asyncio.gather(*(self.kube.list(API_VERSION, KIND, ns) for ns in (namespaces or [None])))
        triggered = 0
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

    async def observe(self, ftj: dict) -> Observed:
        meta = ftj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        status = ftj.get("status") or {}
        if meta.get("deletionTimestamp"):
            return Observed()
        if status.get("phase") in TERMINAL_PHASES:
            if not hand_off_pending(ftj):
                return Observed()  # only the TTL is left to watch
            spec_cm, services = await asyncio.gather(
                self.kube.get("v1", "ConfigMap", namespace, children.spec_configmap_name(name)),
                self._inference_services(ftj),
            )
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
            self.kube.get("v1", "ConfigMap", namespace, children.spec_configmap_name(name)),
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

    async def reconcile_once(self, namespace: str, name: str) -> Decision | None:
        ftj = await self.kube.get(API_VERSION, KIND, namespace, name)
        if ftj is None:
            self.forget(namespace, name)
            return None
        observed = await self.observe(ftj)
        decision = reconcile(ftj, observed, self.clock(), self.config, cache_key=self.cache_key)
        results = await asyncio.gather(*(self.apply(a) for a in decision.actions), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result  # the status is not patched: the next reconcile redoes the whole step
        old = dict(ftj.get("status") or {})
        old.pop("kopf", None)
        patch = merge_patch(old, decision.status)
        written = ftj
        if patch:
            written = await self.kube.patch(API_VERSION, KIND, namespace, name, {"status": patch}, subresource="status")
        self._fingerprints[(namespace, name)] = fingerprint(written)
        now = children_time(self.clock())
        await asyncio.gather(*(self._post(ftj, event, now) for event in decision.events))
        self.metrics.observe(namespace, name, old, decision.status)
        return decision

    async def _post(self, ftj: dict, event: Any, now: str) -> None:
        body = children.event(ftj, event.reason, event.message, event.type, now, self.instance)
        try:
            await self.kube.create(body)
        except ApiError as exc:  # an event is worth a log line, not a failed reconcile
            log.warning("posting event %s for %s failed: %s", event.reason, ftj["metadata"]["name"], exc)

    async def apply(self, action: Any) -> None:
        kube = self.kube
        if isinstance(action, CreateObject):
            created = await kube.create(action.obj)
            meta = (created or {}).get("metadata") or {}
            if meta.get("resourceVersion") and action.obj["kind"] in ("Job", "Pod"):
                if len(self._echoes) > 10_000:  # echoes whose event never came (watch relist): forget them
                    self._echoes.clear()
                self._echoes.add((action.obj["kind"], meta.get("namespace", ""), meta["name"], meta["resourceVersion"]))
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


def children_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to `runtime`."""
    registry = kopf.OperatorRegistry()
    child = {LABEL_JOB: kopf.PRESENT}

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        return login(**kwargs)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def finetunejob_event(event: dict, namespace: str, name: str, body: Any, **_: Any) -> None:
        if event.get("type") == "DELETED":
            runtime.forget(namespace, name)
            return
        await runtime.on_finetunejob(namespace, name, dict(body))

    @kopf.on.event("batch", "v1", "jobs", labels=child, registry=registry)
    async def stage_job_event(event: dict, namespace: str, labels: dict, **_: Any) -> None:
        await runtime.on_child("Job", namespace, labels[LABEL_JOB], event.get("object") or {})

    @kopf.on.event("v1", "pods", labels=child, registry=registry)
    async def stage_pod_event(event: dict, namespace: str, labels: dict, **_: Any) -> None:
        await runtime.on_child("Pod", namespace, labels[LABEL_JOB], event.get("object") or {})

    return registry


def build_settings(peering_name: str | None, clusterwide: bool) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="forgetless.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # kopf's own events only for problems; ours are explicit
    settings.watching.label_selectors[("batch", "v1", "jobs")] = LABEL_JOB
    settings.watching.label_selectors[("v1", "pods")] = LABEL_JOB
    settings.peering.standalone = peering_name is None
    if peering_name is not None:
        settings.peering.name = peering_name
        settings.peering.mandatory = True
        settings.peering.clusterwide = clusterwide
    return settings


@dataclass
class Options:
    namespaces: list[str]
    all_namespaces: bool = False
    metrics_port: int = 8080
    metrics_host: str = "0.0.0.0"
    peering: str | None = None  # None: standalone
    resync_seconds: float = 30.0
    config: OperatorConfig = field(default_factory=OperatorConfig)
    instance: str = "forgetless-operator"


async def resync_loop(runtime: Runtime, options: Options, settings: kopf.OperatorSettings, identity: str,
                      ready: asyncio.Event) -> None:
    """Every `options.resync_seconds` (after kopf's first listing): one `resync_pass` over the watched
    namespaces, skipped while kopf peering pauses this replica. Errors are counted and logged; the next
    pass retries."""
    await ready.wait()
    namespaces = None if options.all_namespaces else list(options.namespaces)
    while True:
        await asyncio.sleep(options.resync_seconds)
        try:
            if options.peering is not None:
                where = None if options.all_namespaces else namespaces[0]
                kind = "ClusterKopfPeering" if options.all_namespaces else "KopfPeering"
                peering = await runtime.kube.get(PEERING_API, kind, where, options.peering)
                if not peering_allows(peering, identity, settings.peering.priority, runtime.clock()):
                    continue
            await runtime.resync_pass(namespaces)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive API errors
            runtime.metrics.error("")
            log.warning("resync pass failed: %s", exc)


async def run_operator(options: Options, stop_flag: Optional[asyncio.Event] = None) -> None:
    """Run kopf with the forgetless handlers plus the /metrics, /healthz, /readyz server until stopped."""
    settings = build_settings(options.peering, options.all_namespaces)
    runtime = Runtime(kube=KubeClient(lambda: login(settings=settings)), config=options.config,
                      instance=options.instance)
    registry = build_registry(runtime)
    identity = f"{options.instance}@{os.getpid()}"
    ready = asyncio.Event()
    operator_task: Optional[asyncio.Task] = None
    resync_task: Optional[asyncio.Task] = None
    app = make_app(
        runtime.metrics,
        ready=ready.is_set,
        alive=lambda: operator_task is None or not operator_task.done(),
    )
    server = await start_server(app, options.metrics_port, options.metrics_host)
    try:
        operator_task = asyncio.create_task(kopf.operator(
            registry=registry,
            settings=settings,
            standalone=options.peering is None,
            peering_name=options.peering,
            clusterwide=options.all_namespaces,
            namespaces=[] if options.all_namespaces else options.namespaces,
            ready_flag=ready,
            stop_flag=stop_flag,
            identity=identity,  # type: ignore[arg-type]  # kopf.Identity is a NewType of str
        ))
        resync_task = asyncio.create_task(resync_loop(runtime, options, settings, identity, ready))
        await operator_task
    finally:
        if resync_task is not None:
            resync_task.cancel()
            await asyncio.gather(resync_task, return_exceptions=True)
        await server.cleanup()
        await runtime.kube.close()
