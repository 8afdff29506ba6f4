"""`forgetless sweep`: a FineTuneSweep on this machine, trial by trial (the local twin of the operator).

The search is `forgetless.search.next_actions` (the pure function the operator uses too); this
module only runs what it asks for. Each trial is a FineTuneJob named `<sweep>-t<index>` run by
`forgetless_cli.local.pipeline.execute` in `<workdir>/<trial>` (baseline → train → evaluate); the
baseline stage's cache (forgetless.baseline_cache, keyed by model + suite) makes every trial after
the first reuse one baseline. Trials run with `output.promote: false`; with `promote: best` the
best trial alone is promoted at the end, as the operator does it: its policy runs once more as the
FineTuneJob `<sweep>-best` in its work dir (baseline and training reused), whose evaluate stage
re-runs the gate and promotes (and hands off to MLflow when the template asks).

Successive halving continues a promoted trial in its own work dir: the train and evaluate results
of the previous rung are removed, the train stage resumes from `train/checkpoints` and, since the
spec now asks for more epochs, recomputes its plan and trains on (the learning-rate schedule is
recomputed for the longer horizon, so the rate rises again from where the shorter cosine had
decayed it; warm-up is not repeated once past its steps).

Resumable: every trial's record is written to `<workdir>/sweep.json` (atomically) when it starts and
when it ends; a re-run skips finished trials and resumes an interrupted one from its checkpoints.
`--restart` discards the work dir's trials. `--parallel N` (default: spec.maxParallel) runs up to N
trials at once in worker processes (spawned: each loads its own torch); 1 runs them in-process.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from forgetless import atomic, contract
from forgetless.api.schema import FineTuneJob
from forgetless.api.sweep import FineTuneSweep, TrialStatus, best_job_name, candidate_spec
from forgetless.lifecycle import mean_general_score
from forgetless.search import TrialRequest, next_actions, pareto_front, select_best, trial_metrics
from forgetless.vocabulary import LABEL_SWEEP

SWEEP_FILE = "sweep.json"


class SweepError(Exception):
    """The work dir or a trial cannot go on; the message says what to do."""


@dataclass
class SweepResult:
    workdir: Path
    trials: list[TrialStatus]
    best: Optional[TrialStatus]
    baseline: dict[str, float]
    promoted: Optional[dict[str, Any]]
    train_seconds: float
    report: list[Path]


def trial_job(sweep: FineTuneSweep, request: TrialRequest) -> FineTuneJob:
    metadata: dict[str, Any] = {"name": request.name, "labels": {LABEL_SWEEP: sweep.metadata.name}}
    if sweep.metadata.namespace:
        metadata["namespace"] = sweep.metadata.namespace
    return FineTuneJob.model_validate({"apiVersion": sweep.api_version, "kind": "FineTuneJob", "metadata": metadata,
                                       "spec": request.spec(sweep.spec).to_wire()})


def _reset_for_next_rung(trial_dir: Path) -> None:
    """A continued trial: drop the previous rung's train and evaluate results (checkpoints stay)."""
    contract.summary_path(trial_dir, "train").unlink(missing_ok=True)
    for name in (contract.EVALUATE_DIR, contract.REPORT_DIR):
        shutil.rmtree(trial_dir / name, ignore_errors=True)


def run_trial(job_wire: dict[str, Any], trial_dir: str, continues: bool, quiet_log: bool = False) -> dict[str, Any]:
    """Run one trial (module level: a worker process can call it). Returns its measured numbers."""
    from forgetless_cli.local.pipeline import execute

    job = FineTuneJob.model_validate(job_wire)
    directory = Path(trial_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if continues:
        _reset_for_next_rung(directory)
    atomic.write_text(directory / contract.JOB_FILE, json.dumps(job.to_wire(), indent=2, sort_keys=True))
    name = job.metadata.name
    log = (lambda message: None) if quiet_log else (lambda message: print(f"  {name}: {message}", file=sys.stderr))
    result = execute(job, directory, log=log)
    numbers = trial_metrics(result.baseline, result.final, result.status, result.summaries["train"])
    numbers["baseline"] = result.baseline
    numbers["epochs"] = result.summaries["train"].get("epochs")
    return numbers


def _fresh_rendezvous() -> None:
    """Worker-process initializer: forget a MASTER_PORT inherited from the parent (set when it ran a
    trial in-process), so each single-process trial picks its own free port instead of all binding one."""
    import os

    if os.environ.get("WORLD_SIZE", "1") == "1":
        os.environ.pop("MASTER_PORT", None)


class LocalSweep:
    def __init__(self, sweep: FineTuneSweep, workdir: Path, *, parallel: int | None = None, restart: bool = False,
                 log: Callable[[str], None] | None = None) -> None:
        self.sweep = sweep
        self.workdir = Path(workdir)
        self.parallel = parallel or sweep.spec.max_parallel
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.records: dict[str, TrialStatus] = {}
        self.baseline: dict[str, float] = {}
        self._open(restart)

    # ------------------------------------------------------------------ the record

    def _state_path(self) -> Path:
        return self.workdir / SWEEP_FILE

    def _open(self, restart: bool) -> None:
        wire = self.sweep.model_dump(by_alias=True, exclude_none=True, mode="json")
        wire.pop("status", None)
        path = self._state_path()
        if restart and self.workdir.exists():
            for child in self.workdir.iterdir():
                if child.is_dir() and child.name.startswith(f"{self.sweep.metadata.name}-t"):
                    shutil.rmtree(child)
            path.unlink(missing_ok=True)
        if path.exists():
            state = json.loads(path.read_text())
            if state.get("sweep", {}).get("spec") != wire["spec"]:
                raise SweepError(f"{self.workdir} holds a sweep of a different spec; use another --workdir, "
                                 "or --restart to discard it")
            self.baseline = state.get("baseline", {})
            for item in state.get("trials", []):
                trial = TrialStatus.model_validate(item)
                if trial.phase == "Running":  # interrupted: run it again (it resumes from its checkpoints)
                    if not trial.rung:
                        continue
                    trial = trial.model_copy(update={"phase": "Succeeded", "rung": trial.rung - 1})
                self.records[trial.name] = trial
        self.wire = wire
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._save()

    def _save(self, best: TrialStatus | None = None, promoted: dict[str, Any] | None = None, phase: str = "Running") -> None:
        trials = sorted(self.records.values(), key=lambda t: t.index)
        state = {"sweep": self.wire, "phase": phase, "baseline": self.baseline,
                 "trials": [t.model_dump(by_alias=True, exclude_none=True, mode="json") for t in trials],
                 "trainSeconds": round(self.train_seconds(), 3)}
        if best is not None:
            state["best"] = best.model_dump(by_alias=True, exclude_none=True, mode="json")
        if promoted is not None:
            state["promotedModel"] = promoted
        atomic.write_text(self._state_path(), json.dumps(state, indent=2, sort_keys=True) + "\n")

    def train_seconds(self) -> float:
        """Training time of the whole sweep: each trial's cumulative train seconds (all its rungs)."""
        return sum(t.train_seconds or 0.0 for t in self.records.values())

    # ------------------------------------------------------------------ running

    def _started(self, request: TrialRequest) -> None:
        previous = self.records.get(request.name)
        update = {"phase": "Running", "rung": request.rung, "epochs": request.epochs, "message": None}
        if previous is not None:
            self.records[request.name] = previous.model_copy(update=update)
        else:
            self.records[request.name] = TrialStatus(name=request.name, index=request.index, policy=request.policy, **update)
        self._save()

    def _finished(self, request: TrialRequest, numbers: dict[str, Any] | None, error: str | None) -> None:
        trial = self.records[request.name]
        if error is not None:
            self.records[request.name] = trial.model_copy(update={"phase": "Failed", "message": error[:500]})
            self.log(f"{request.name}: failed: {error}")
        else:
            if numbers.get("baseline") and not self.baseline:
                self.baseline = numbers["baseline"]
            fields = {k: numbers[k] for k in ("task_score", "mean_kept", "verdict", "cost", "train_seconds")}
            self.records[request.name] = trial.model_copy(update={"phase": "Succeeded", **fields})
            done = self.records[request.name]
            self.log(f"{request.name} [rung {request.rung}, {request.epochs:g} epochs] {describe(request.policy)}: "
                     f"task {fmt(done.task_score)} kept {fmt_pct(done.mean_kept)} {done.verdict} "
                     f"({fmt(done.train_seconds, '.0f')} s training)")
        self._save()

    def _job_wire(self, request: TrialRequest) -> dict[str, Any]:
        return trial_job(self.sweep, request).model_dump(by_alias=True, exclude_none=True, mode="json")

    def _run_batch(self, requests: list[TrialRequest]) -> None:
        for request in requests:
            self._started(request)
        if self.parallel <= 1 or len(requests) == 1:
            for request in requests:
                try:
                    numbers = run_trial(self._job_wire(request), str(self.workdir / request.name), request.continues)
                except Exception as exc:  # a trial failing is a result, not the sweep's end
                    self._finished(request, None, f"{type(exc).__name__}: {exc}")
                else:
                    self._finished(request, numbers, None)
            return
        import multiprocessing

        with ProcessPoolExecutor(max_workers=min(self.parallel, len(requests)),
                                 mp_context=multiprocessing.get_context("spawn"), initializer=_fresh_rendezvous) as pool:
            futures = {pool.submit(run_trial, self._job_wire(r), str(self.workdir / r.name), r.continues, True): r
                       for r in requests}
            for future, request in futures.items():
                try:
                    numbers = future.result()
                except Exception as exc:
                    self._finished(request, None, f"{type(exc).__name__}: {exc}")
                else:
                    self._finished(request, numbers, None)

    def run(self) -> SweepResult:
        spec, name = self.sweep.spec, self.sweep.metadata.name
        search = spec.model_copy(update={"max_parallel": self.parallel})  # --parallel overrides maxParallel
        while True:
            plan = next_actions(search, name, self.records.values())
            for pruned in plan.prune:
                self.records[pruned] = self.records[pruned].model_copy(update={"phase": "Pruned"})
                self.log(f"{pruned}: pruned after rung {self.records[pruned].rung}")
            if plan.prune:
                self._save()
            if plan.done:
                break
            if not plan.start:  # nothing to run yet nothing live: cannot happen locally
                raise SweepError("the search is waiting on trials that are not running")
            self._run_batch(plan.start[: self.parallel])
        best = select_best(self.records.values(), spec.objective)
        promoted = None
        if best is not None and spec.promote == "best":
            promoted = self._promote(best)
        trials = sorted(self.records.values(), key=lambda t: t.index)
        phase = "Succeeded" if best is not None else "Failed"
        self._save(best, promoted, phase)
        report = write_report(self.workdir, trials, best, self.baseline, self.sweep)
        return SweepResult(self.workdir, trials, best, self.baseline, promoted, self.train_seconds(), report)

    def _promote(self, best: TrialStatus) -> dict[str, Any] | None:
        """As in a cluster: the best trial's policy runs once more as the FineTuneJob `<sweep>-best` in
        the best trial's work dir, with the template's promotion and hand-off. Its baseline and train
        stages are finished there (reused); its evaluate stage runs again: the gate, then promotion
        and the MLflow hand-off (the one path that promotes)."""
        from forgetless_cli.local.pipeline import execute

        template = self.sweep.spec.template
        if not template.output.promote:
            return None  # the template asks for no promotion at all
        name = best_job_name(self.sweep.metadata.name)
        metadata: dict[str, Any] = {"name": name, "labels": {LABEL_SWEEP: self.sweep.metadata.name}}
        if self.sweep.metadata.namespace:
            metadata["namespace"] = self.sweep.metadata.namespace
        spec = candidate_spec(template, {**best.policy, "training.epochs": best.epochs})
        job = FineTuneJob.model_validate({"apiVersion": self.sweep.api_version, "kind": "FineTuneJob",
                                          "metadata": metadata, "spec": spec.to_wire()})
        directory = self.workdir / best.name
        contract.summary_path(directory, "evaluate").unlink(missing_ok=True)
        result = execute(job, directory, log=lambda message: self.log(f"{name}: {message}"))
        record = result.promoted_model
        if record is None:
            raise SweepError(f"{name} (best trial {best.name}) was not promoted: gate verdict "
                             f"{result.status.get('verdict')}")
        self.log(f"promoted {best.name} as {name}: {record['path']} ({record['digest']})")
        return record


# --------------------------------------------------------------------------- output


def fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_pct(value: Any) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


SHORT = {"method.lora.r": "r", "method.lora.alpha": "alpha", "method.lora.dropout": "dropout",
         "mitigation.dataMixing.generalFraction": "mix", "mitigation.ewc.lambda": "ewc",
         "training.learningRate": "lr", "training.epochs": "epochs", "training.batchSize": "batch",
         "training.warmupRatio": "warmup"}


def describe(policy: dict[str, Any]) -> str:
    return " ".join(f"{SHORT.get(k, k)}={v:g}" if isinstance(v, (int, float)) else f"{SHORT.get(k, k)}={v}"
                    for k, v in policy.items())


def render_trials(trials: list[TrialStatus], best: TrialStatus | None) -> str:
    rows = [f"{'trial':<24} {'policy':<40} {'rung':>4} {'epochs':>6} {'task':>6} {'kept':>7} {'verdict':<10} "
            f"{'cost':>9} {'train s':>8}  phase"]
    for t in sorted(trials, key=lambda t: t.index):
        mark = " *" if best is not None and t.name == best.name else ""
        cost = f"{t.cost:.3g}" if t.cost is not None else "-"
        rows.append(f"{t.name:<24} {describe(t.policy):<40} {t.rung if t.rung is not None else '-':>4} "
                    f"{fmt(t.epochs, 'g'):>6} {fmt(t.task_score):>6} {fmt_pct(t.mean_kept):>7} {t.verdict or '-':<10} "
                    f"{cost:>9} {fmt(t.train_seconds, '.0f'):>8}  {t.phase}{mark}")
    if best is not None:
        rows.append(f"best: {best.name} ({describe(best.policy)}): task {fmt(best.task_score)}, "
                    f"kept {fmt_pct(best.mean_kept)}, cost {best.cost:.3g}")
    else:
        rows.append("best: none (no trial passed the gate)")
    return "\n".join(rows)


def kept_threshold(baseline: dict[str, float], sweep: FineTuneSweep) -> float | None:
    """The share of the mean general score the gate's maxMeanDrop allows: 1 - maxMeanDrop / baseline mean."""
    base_mean = mean_general_score(baseline)
    if not base_mean:
        return None
    return 1.0 - sweep.spec.template.regression.thresholds.max_mean_drop / base_mean


def write_report(workdir: Path, trials: list[TrialStatus], best: TrialStatus | None, baseline: dict[str, float],
                 sweep: FineTuneSweep) -> list[Path]:
    """`report.txt` (the trial table) and `pareto.png` (task score over share of the general score kept)."""
    text = render_trials(trials, best) + "\n"
    table = workdir / "report.txt"
    atomic.write_text(table, text)
    written = [table]
    measured = [t for t in trials if t.task_score is not None and t.mean_kept is not None]
    if not measured:
        return written
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = {t.name for t in pareto_front(measured)}
    fig, ax = plt.subplots(figsize=(7, 5))
    for group, style in (("Passed", dict(marker="o", color="tab:green")), ("other", dict(marker="x", color="tab:red"))):
        chosen = [t for t in measured if (t.verdict in ("Passed", "Warned")) == (group == "Passed")]
        if chosen:
            ax.scatter([t.mean_kept for t in chosen], [t.task_score for t in chosen], label=f"gate {group.lower()}"
                       if group == "Passed" else "gate blocked", **style)
    for t in measured:
        ax.annotate(f"t{t.index}" + (f"/r{t.rung}" if t.rung else ""), (t.mean_kept, t.task_score), fontsize=7,
                    xytext=(3, 3), textcoords="offset points", fontweight="bold" if t.name in front else "normal")
    threshold = kept_threshold(baseline, sweep)
    if threshold is not None:
        ax.axvline(threshold, color="grey", linestyle="--",
                   label=f"gate: maxMeanDrop {sweep.spec.template.regression.thresholds.max_mean_drop:g}")
    if best is not None:
        ax.scatter([best.mean_kept], [best.task_score], s=250, facecolors="none", edgecolors="black", label=f"best {best.name}")
    ax.set_xlabel("share of the base model's mean general score kept")
    ax.set_ylabel("task score")
    ax.set_title(f"FineTuneSweep {sweep.metadata.name}: {sweep.spec.strategy.type}")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    plot = workdir / "pareto.png"
    fig.savefig(plot, dpi=110)
    plt.close(fig)
    written.append(plot)
    return written


def run_local_sweep(sweep: FineTuneSweep, workdir: Path, *, parallel: int | None = None, restart: bool = False,
                    log: Callable[[str], None] | None = None) -> SweepResult:
    began = time.monotonic()
    result = LocalSweep(sweep, workdir, parallel=parallel, restart=restart, log=log).run()
    (log or (lambda m: print(m, file=sys.stderr)))(f"sweep {sweep.metadata.name}: {len(result.trials)} trials, "
                                                    f"{result.train_seconds:.0f} s training, {time.monotonic() - began:.0f} s wall")
    return result
