"""Operator metrics and health: /metrics (Prometheus text), /healthz (liveness), /readyz (readiness).

The metric names are those of `forgetless.metrics.ForgettingMetrics` (docs/contracts.md). Values
are derived from the FineTuneJob status the operator writes, so a restarted operator serves the
same gauges; counters and the stage-duration histogram count transitions this process saw.
Per-job series are removed when the FineTuneJob is deleted.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forgetless.api.schema import PROMOTING_VERDICTS
from forgetless.api.sweep import BestTrialStatus, TrialStatus
from forgetless.metrics import ForgettingMetrics
from forgetless.sweep_metrics import SweepMetrics

from forgetless.timefmt import parse_time


class OperatorMetrics:
    def __init__(self, metrics: ForgettingMetrics | None = None) -> None:
        self.metrics = metrics or ForgettingMetrics()
        self.sweeps = SweepMetrics(self.metrics.registry)  # one registry: one /metrics
        self._phases: dict[tuple[str, str], str] = {}
        self._counts: dict[tuple[str, str], int] = {}  # (namespace, phase) -> jobs
        self._namespaces: set[str] = set()

    def observe(self, namespace: str, name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        """Update the series of one job after a reconcile (old/new: its status before and after)."""
        m = self.metrics
        self._namespaces.add(namespace)
        phase = new.get("phase")
        if phase:
            self._set_phase(namespace, name, phase)
        old_stages = old.get("stages") or {}
        for stage, record in (new.get("stages") or {}).items():
            before = old_stages.get(stage) or {}
            if record.get("phase") in ("Succeeded", "Failed") and before.get("phase") != record.get("phase"):
                start, end = parse_time(record.get("startTime")), parse_time(record.get("completionTime"))
                if start and end and end >= start:
                    m.stage_duration.labels(namespace, stage).observe((end - start).total_seconds())
        self.metrics.record_progress(namespace, name, new.get("trainerStatus"))
        baseline = dict(new.get("baselineScores") or {})
        final = dict(new.get("finalScores") or {})
        gate = new.get("gate") or {}
        if baseline or final:
            m.record_scores(namespace, name, baseline, final, gate.get("taskGain"))
        if gate:
            m.record_rescue(namespace, name, gate.get("rescue"))
            if not old.get("gate"):
                m.record_verdict(namespace, name, gate["verdict"])
            else:
                m.gate_passed.labels(namespace, name).set(1 if gate["verdict"] in PROMOTING_VERDICTS else 0)

    def progress(self, namespace: str, name: str, trainer_status: Mapping[str, Any] | None) -> None:
        """The running stage's progress, after the progress pass wrote it."""
        self.metrics.record_progress(namespace, name, trainer_status)

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget_job(namespace, name)
        self._set_phase(namespace, name, None)

    def observe_sweep(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """The sweep series from the status the reconcile wrote (trials by verdict, the best's scores)."""
        trials = [TrialStatus.model_validate(t) for t in status.get("trials") or []]
        best = BestTrialStatus.model_validate(status["best"]) if status.get("best") else None
        self.sweeps.record(namespace, name, trials, best)

    def error(self, namespace: str) -> None:
        self.metrics.reconcile_errors.labels(namespace).inc()

    def _set_phase(self, namespace: str, name: str, phase: str | None) -> None:
        """Move one job between phase counts (None: gone) and publish that namespace's counts."""
        before = self._phases.pop((namespace, name), None)
        if before == phase:
            if phase is not None:
                self._phases[(namespace, name)] = phase
            return
        if before is not None:
            self._counts[(namespace, before)] -= 1
        if phase is not None:
            self._phases[(namespace, name)] = phase
            self._counts[(namespace, phase)] = self._counts.get((namespace, phase), 0) + 1
        self.metrics.set_phase_counts({k: v for k, v in self._counts.items() if k[0] == namespace}, [namespace])

    def exposition(self) -> bytes:
        return generate_latest(self.metrics.registry)


def make_app(metrics: OperatorMetrics, ready: Callable[[], bool], alive: Callable[[], bool] = lambda: True) -> web.Application:
    async def metrics_view(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.exposition())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n") if alive() else web.Response(status=503, text="operator stopped\n")

    async def readyz(_: web.Request) -> web.Response:
        return web.Response(text="ready\n") if ready() else web.Response(status=503, text="starting\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def start_server(app: web.Application, port: int, host: str = "0.0.0.0") -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
