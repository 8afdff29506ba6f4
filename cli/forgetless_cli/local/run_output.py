"""What `forgetless run` shows while and after it runs: the Prometheus endpoint (`metrics_server`,
the forgetting metrics and the trainer's live metrics on one port) and the per-category table
(`render_table`)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Any, Iterator

from forgetless.lifecycle import mean_general_score

class _CombinedRegistry:
    """Serve several prometheus registries on one port."""

    def __init__(self, *registries: Any) -> None:
        self.registries = registries

    def collect(self) -> Iterator[Any]:
        for registry in self.registries:
            yield from registry.collect()


@contextmanager
def metrics_server(port: int | None, forgetting: Any) -> Iterator[None]:
    if port is None:
        yield
        return
    from prometheus_client import start_http_server

    from forgetless_trainer import live_metrics

    registry = _CombinedRegistry(forgetting.registry, live_metrics.REGISTRY)
    try:
        server, thread = start_http_server(port, registry=registry)  # type: ignore[arg-type]
    except OSError as exc:  # metrics are an aid: a taken port must never cost a run
        print(f"warning: cannot serve metrics on port {port} ({exc}); running without them", file=sys.stderr)
        yield
        return
    print(f"metrics: http://127.0.0.1:{port}/metrics", file=sys.stderr)
    try:
        yield
    finally:
        server.shutdown()
        thread.join(timeout=5)


def render_table(status: dict[str, Any], baseline: dict[str, float], final: dict[str, float]) -> str:
    """The per-category table `forgetless run` prints, from the gate's `status.gate` form."""
    rows = [f"{'category':<22} {'baseline':>8} {'final':>7} {'drop':>7} {'drop interval':>17} {'max':>6}  result"]
    for verdict in status.get("categories", []):
        interval = f"[{verdict['dropLower']:+.3f}, {verdict['dropUpper']:+.3f}]"
        rows.append(
            f"{verdict['category']:<22} {verdict['baseline']:8.3f} {verdict['final']:7.3f} {verdict['drop']:+7.3f} "
            f"{interval:>17} {verdict['threshold']:6.3f}  {'pass' if verdict['passed'] else 'FAIL'}"
        )
    mean_base, mean_final = mean_general_score(baseline, among=final), mean_general_score(final, among=baseline)
    if mean_base is not None and mean_final is not None:
        rows.append(f"{'mean general':<22} {mean_base:8.3f} {mean_final:7.3f} {status['meanDrop']:+7.3f}")
    if "task" in baseline and "task" in final:
        lower = status.get("taskGainLower")
        bound = f" (lower bound {lower:+.3f})" if lower is not None else ""
        rows.append(f"{'task (target)':<22} {baseline['task']:8.3f} {final['task']:7.3f} gain "
                    f"{final['task'] - baseline['task']:+.3f}{bound}")
    rows += [f"note: {note}" for note in status.get("notes", [])]
    rows.append(f"verdict: {status['verdict']}")
    rows += [f"  - {reason}" for reason in status.get("reasons", [])]
    rescue = status.get("rescue")
    if rescue:
        found = f"α = {rescue['alpha']:g}" if rescue.get("alpha") is not None else "no α"
        rows.append(f"rescue: {rescue['outcome']} ({found}; {rescue['evaluations']} of {rescue['maxEvaluations']} "
                    "half-suite evaluations)" + ("; the category rows are the confirmation half at that α, the mean "
                                                 "and task rows all items" if rescue.get("alpha") is not None else ""))
    return "\n".join(rows)
