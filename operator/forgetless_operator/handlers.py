"""The kopf edge: watch FineTuneJobs, FineTuneSweeps and the FineTuneJobs' children and hand each event
to its controller (runtime.Runtime: finetunejob/controller.py, finetunesweep/controller.py); the
resync and progress loops; the operator's main.

Triggers (all level-triggered: each one re-reads everything and reconciles the owning job):
- every watch event of a FineTuneJob (`@kopf.on.event`; DELETED drops the job's metric series),
- every watch event of a batch/v1 Job or Pod labelled `forgetless.dev/job` (server-side label
  selector, so the operator never lists unrelated pods) that changes what a reconcile reads of it
  (the kit's ChildFilter with the read plan's child signature: not the Job controller's counts, not
  a new Pending pod),
- one operator-wide progress loop (`progress_loop`): every `--progress-seconds` (15) it reads each
  running stage's progress from its rank-0 pod's /metrics into `status.trainerStatus`
  (features/progress.py LiveProgress; a PATCH only when it changed),
- one operator-wide resync loop (`resync_loop`): every `--resync-seconds` it lists the FineTuneJobs
  and reconciles each one the read plan says still has work (readplan.needs_resync: deadlines, TTL,
  retries after API errors, a pending hand-off).
Triggers for the same job coalesce: while one reconcile runs, further triggers mark the job dirty
and it runs once more afterwards. Nothing is kept in memory that matters for correctness; the
state is the FineTuneJob status and the children (see reconcile.py).

No finalizer: only `@kopf.on.event` handlers are registered, so kopf writes nothing to a new object
(no finalizer, no diff-base annotation, no progress) and a FineTuneJob is deleted at once even with
no operator running; the children go through owner-reference garbage collection. (A per-object
`@kopf.timer` would make kopf's finalizer mandatory: an extra PATCH and watch round before the first
reconcile of every new job, and every job stuck in Terminating once the operator is uninstalled.)
Peering: `--standalone` for one replica; otherwise kopf peering with the given name (needs the
KopfPeering / ClusterKopfPeering CRDs from the chart) so that only one replica acts; kopf pauses
the watch handlers of a paused replica, and the resync loop reads the same peering object
(`peering_allows`) and skips its pass while another live peer has the same or a higher priority.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import kopf

from forgetless.api.schema import GROUP, PLURAL, VERSION
from forgetless.api.sweep import PLURAL as SWEEP_PLURAL
from forgetless.vocabulary import LABEL_JOB, LABEL_SWEEP, PREFIX

from forgetless_operator.finetunejob.children import OperatorConfig
from forgetless_operator.kit.client import KubeClient
from forgetless_operator.kit.peering import peering_allows
from forgetless_operator.metrics import make_app, start_server
from forgetless_operator.runtime import Runtime

log = logging.getLogger("forgetless.operator")
PEERING_API = "kopf.dev/v1"


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
            runtime.jobs.forget(namespace, name)
            return
        await runtime.jobs.on_event(namespace, name, dict(body))
        sweep = (dict(body).get("metadata") or {}).get("labels", {}).get(LABEL_SWEEP)
        if sweep:  # a trial (or a sweep's best job) changed: its sweep decides what comes next
            runtime.spawn(runtime.sweeps.trigger(namespace, sweep))

    @kopf.on.event(GROUP, VERSION, SWEEP_PLURAL, registry=registry)
    async def finetunesweep_event(event: dict, namespace: str, name: str, body: Any, **_: Any) -> None:
        if event.get("type") == "DELETED":
            runtime.sweeps.forget(namespace, name)  # its trials go by owner-reference garbage collection
            return
        await runtime.sweeps.on_event(namespace, name, dict(body))

    @kopf.on.event("batch", "v1", "jobs", labels=child, registry=registry)
    async def stage_job_event(event: dict, namespace: str, labels: dict, **_: Any) -> None:
        await runtime.jobs.on_child("Job", namespace, labels[LABEL_JOB], event.get("object") or {}, event.get("type"))

    @kopf.on.event("v1", "pods", labels=child, registry=registry)
    async def stage_pod_event(event: dict, namespace: str, labels: dict, **_: Any) -> None:
        await runtime.jobs.on_child("Pod", namespace, labels[LABEL_JOB], event.get("object") or {}, event.get("type"))

    return registry


def build_settings(peering_name: str | None, clusterwide: bool) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
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
    progress_seconds: float = 15.0  # 0: no progress reading (status.trainerStatus stays as reconciles set it)
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
            if options.peering is not None and not await _peering_allows(runtime, options, settings, identity):
                continue
            await runtime.resync_pass(namespaces)
        except Exception as exc:  # noqa: BLE001 - the loop must outlive API errors
            runtime.metrics.error("")
            log.warning("resync pass failed: %s", exc)


async def progress_loop(runtime: Runtime, options: Options, settings: kopf.OperatorSettings, identity: str,
                        ready: asyncio.Event) -> None:
    """Every `options.progress_seconds`: read the running stages' progress into status.trainerStatus
    (Runtime.progress_pass), skipped while kopf peering pauses this replica."""
    await ready.wait()
    while True:
        await asyncio.sleep(options.progress_seconds)
        try:
            if options.peering is not None and not await _peering_allows(runtime, options, settings, identity):
                continue
            await runtime.progress_pass()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive API errors
            runtime.metrics.error("")
            log.warning("progress pass failed: %s", exc)


async def _peering_allows(runtime: Runtime, options: Options, settings: kopf.OperatorSettings, identity: str) -> bool:
    where = None if options.all_namespaces else options.namespaces[0]
    kind = "ClusterKopfPeering" if options.all_namespaces else "KopfPeering"
    peering = await runtime.kube.get(PEERING_API, kind, where, options.peering)
    return peering_allows(peering, identity, settings.peering.priority, runtime.clock())


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
    progress_task: Optional[asyncio.Task] = None
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
        if options.progress_seconds > 0:
            progress_task = asyncio.create_task(progress_loop(runtime, options, settings, identity, ready))
        await operator_task
    finally:
        for task in (resync_task, progress_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await runtime.drain_events()  # what the last reconciles decided, before the client closes
        await server.cleanup()
        await runtime.close()
