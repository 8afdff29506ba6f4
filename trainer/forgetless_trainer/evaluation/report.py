"""The forgetting report: gate verdict JSON, Markdown and a PNG chart (matplotlib, Agg backend).

`write_report(gate_result, baseline_scores, final_scores, out_dir) -> {"json", "markdown", "png", ...}`
Files: `gate.json` (the gate's full result, its status.gate form, and the scores),
`report.md` (verdict, reasons, per-category table with the drop's bounds), `report.png`
(baseline vs final per category, the final score's bounds as error bars, and the target task).
With a forgetting budget, its account goes in the Markdown and `budget.png` draws the probe's mean
general score over training with the budget line and the adjustments, and the general
KL(base‖model) at the same probes on a second axis (with `maxKL` when the budget runs on it).
With a rescue, `rescue.png` draws task score and share kept over α.
Every file is written to a temporary name and renamed, so a crash leaves no half report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from forgetless import atomic
from forgetless.gate import GateResult
from forgetless.lifecycle import CATEGORIES as GENERAL_CATEGORIES
from forgetless.lifecycle import TASK_CATEGORY, mean_general_score

JSON_NAME, MARKDOWN_NAME, PNG_NAME = "gate.json", "report.md", "report.png"
BUDGET_PNG_NAME = "budget.png"
RESCUE_PNG_NAME = "rescue.png"


def report_document(gate: GateResult, baseline: Mapping[str, float], final: Mapping[str, float]) -> dict[str, Any]:
    return {"gate": gate.to_dict(), "status": gate.to_status(), "baselineScores": dict(baseline), "finalScores": dict(final)}


def render_markdown(gate: GateResult, baseline: Mapping[str, float], final: Mapping[str, float]) -> str:
    pct = f"{gate.confidence:.1%}".replace(".0%", "%")
    lines = [
        "# Forgetting report",
        "",
        f"**Verdict: {gate.verdict}**" + ("" if gate.verdict in ("Passed", "NoTaskGain", "Rescued") else f" (onRegression: {gate.on_regression})"),
        "",
    ]
    if gate.reasons:
        lines += ["Reasons:", ""] + [f"- {reason}" for reason in gate.reasons] + [""]
    lines += [
        f"Drops are baseline − final (absolute, 0–1); bounds are one-sided {pct} bounds from a paired "
        f"bootstrap over items ({gate.bootstrap_samples} resamples, seed {gate.seed}). A category fails only "
        "when its lower bound is above its threshold.",
        "",
        "| category | baseline | final | drop | lower bound | upper bound | threshold | result |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in gate.categories:
        lines.append(
            f"| {c.category} | {c.baseline:.3f} | {c.final:.3f} | {c.drop:+.3f} | {c.drop_lower:+.3f} | "
            f"{c.drop_upper:+.3f} | {c.threshold:.3f} | {'pass' if c.passed else 'FAIL'} |"
        )
    mean_failed = gate.mean_drop_lower > gate.max_mean_drop
    lines.append(
        f"| **mean** | | | {gate.mean_drop:+.3f} | {gate.mean_drop_lower:+.3f} | {gate.mean_drop_upper:+.3f} | "
        f"{gate.max_mean_drop:.3f} | {'FAIL' if mean_failed else 'pass'} |"
    )
    lines.append("")
    if gate.task_gain is not None:
        lines.append(
            f"Target task: {baseline.get(TASK_CATEGORY, float('nan')):.3f} → {final.get(TASK_CATEGORY, float('nan')):.3f}, "
            f"gain {gate.task_gain:+.3f} (bounds [{gate.task_gain_lower:+.3f}, {gate.task_gain_upper:+.3f}], "
            f"required: {gate.task_requirement})."
        )
    else:
        lines.append("Target task: not in the suite (no task gain measured).")
    if gate.notes:
        lines += ["", "What the scores rest on:", ""] + [f"- {note}" for note in gate.notes]
    lines += ["", f"![baseline vs final]({PNG_NAME})", ""]
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    """Lay out, write atomically as PNG, release the figure."""
    fig.tight_layout()
    with atomic.atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _pyplot().close(fig)
    return path


def render_png(gate: GateResult, baseline: Mapping[str, float], final: Mapping[str, float], path: Path) -> Path:
    plt = _pyplot()
    categories = [c for c in gate.categories] or []
    names = [c.category for c in categories] or [c for c in GENERAL_CATEGORIES if c in baseline]
    has_task = gate.task_gain is not None and TASK_CATEGORY in baseline and TASK_CATEGORY in final
    fig, axes = plt.subplots(
        1, 2 if has_task else 1, figsize=(10 if has_task else 8, 4.2),
        gridspec_kw={"width_ratios": [len(names) or 1, 1.3]} if has_task else None, squeeze=False,
    )
    ax = axes[0][0]
    positions = list(range(len(names)))
    width = 0.38
    base_values = [baseline.get(n, 0.0) for n in names]
    final_values = [final.get(n, 0.0) for n in names]
    ax.bar([p - width / 2 for p in positions], base_values, width, label="baseline", color="#8da0cb")
    errors = None
    if categories:
        # final = baseline − drop, so the drop's bounds give the final score's bounds
        low = [max(0.0, c.drop_upper - c.drop) for c in categories]
        high = [max(0.0, c.drop - c.drop_lower) for c in categories]
        errors = [low, high]
    colours = ["#66c2a5" if c.passed else "#fc8d62" for c in categories] or "#66c2a5"
    ax.bar([p + width / 2 for p in positions], final_values, width, yerr=errors, capsize=4, label="final", color=colours)
    for c, p in zip(categories, positions):
        top = final.get(c.category, 0.0) + max(0.0, c.drop - c.drop_lower) + 0.02
        ax.annotate(f"{-c.drop:+.2f}", (p + width / 2, min(1.05, top)), ha="center", fontsize=8)
    ax.set_xticks(positions)
    ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"General skills — gate {gate.verdict} (mean drop {gate.mean_drop:+.3f})", fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    if has_task:
        tax = axes[0][1]
        gain_errors = [[max(0.0, gate.task_gain - gate.task_gain_lower)], [max(0.0, gate.task_gain_upper - gate.task_gain)]]
        tax.bar([0], [baseline[TASK_CATEGORY]], 0.6, color="#8da0cb")
        tax.bar([1], [final[TASK_CATEGORY]], 0.6, yerr=gain_errors, capsize=4, color="#66c2a5")
        tax.set_xticks([0, 1])
        tax.set_xticklabels(["baseline", "final"], fontsize=8)
        tax.set_ylim(0, 1.1)
        tax.set_title(f"Target task (gain {gate.task_gain:+.3f})", fontsize=10)
    return _save(fig, path)


def has_budget(train: Mapping[str, Any] | None) -> bool:
    """Did the train stage run a forgetting budget (on the probe or on the general KL)?"""
    return bool(train) and bool(train.get("probeHistory") or train.get("budgetSignal"))


def budget_markdown(train: Mapping[str, Any]) -> str:
    """The forgetting budget's account: probes, the budget line, the general KL, every adjustment."""
    history = train.get("probeHistory") or []
    baseline = train.get("probeBaseline")
    kl_signal = train.get("budgetSignal") == "kl"
    lines = ["## Forgetting budget", ""]
    if kl_signal:
        lines.append(f"Signal: the general KL(base‖model), maxKL {train.get('budgetMaxKL')} nats/token; forward passes "
                     f"only ({train.get('probeSeconds', 0):.1f} s of checks).")
    elif baseline is not None and train.get("budgetMaxDrop") is not None:
        lines.append(f"Probe baseline {baseline:.3f}; budget line {baseline - train['budgetMaxDrop']:.3f} "
                     f"(maxDrop {train['budgetMaxDrop']}); {len(history)} probes.")
    if train.get("generalKL") is not None:
        lines.append(f"General KL(base‖model) at the end: {train['generalKL']:.4f} nats/token "
                     f"({train.get('generalKLTokens', '?')} answer tokens of the general probe items).")
    adjustments = train.get("adjustments") or []
    if adjustments:
        def number(value: Any, fmt: str) -> str:
            return format(value, fmt) if value is not None else "—"

        lines += ["", "| step | probe mean | general KL | rolled back to | learning-rate scale | extra general data |",
                  "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {a['step']} | {number(a.get('probeMean'), '.3f')} | {number(a.get('generalKL'), '.4f')} | "
                  f"{a['rolledBackToStep']} | {a['learningRateScale']:g} | {a['extraGeneralFraction']:.0%} |"
                  for a in adjustments]
    else:
        lines.append("No adjustments: every probe stayed within budget." if train.get("stoppedReason") != "forgetting_budget"
                     else "Training stopped at the first breach (onBreach: Stop).")
    if train.get("stoppedReason") == "forgetting_budget" and train.get("message"):
        lines += ["", f"Stopped: {train['message']}"]
    lines += ["", f"![probe score and general KL over training]({BUDGET_PNG_NAME})", ""]
    return "\n".join(lines)


def render_budget_png(train: Mapping[str, Any], path: Path) -> Path:
    """Probe mean over steps, the budget line, each adjustment marked; the general KL on a second axis."""
    plt = _pyplot()
    history = train.get("probeHistory") or []
    kl_history = train.get("generalKLHistory") or []
    kl_signal = train.get("budgetSignal") == "kl"
    fig, ax = plt.subplots(figsize=(8, 3.6))
    handles = []
    if history:
        handles += ax.plot([s for s, _ in history], [v for _, v in history], marker="o", ms=3, color="#3b6ea8",
                           label="probe mean")
    baseline, max_drop = train.get("probeBaseline"), train.get("budgetMaxDrop")
    if history and baseline is not None and max_drop is not None and not kl_signal:
        handles.append(ax.axhline(baseline - max_drop, color="#d95f02", ls="--", lw=1, label=f"budget (−{max_drop})"))
    kl_ax = ax.twinx() if history else ax
    if kl_history:
        handles += kl_ax.plot([s for s, _ in kl_history], [v for _, v in kl_history], marker="s", ms=3,
                              color="#1b9e77", label="general KL (nats/token)")
        kl_ax.set_ylabel("KL(base‖model), nats/token")
        kl_ax.set_ylim(bottom=0)
    if kl_signal and train.get("budgetMaxKL") is not None:
        handles.append(kl_ax.axhline(train["budgetMaxKL"], color="#d95f02", ls="--", lw=1,
                                     label=f"budget (maxKL {train['budgetMaxKL']})"))
    for number, adjustment in enumerate(train.get("adjustments") or [], start=1):
        at = adjustment.get("stepsTaken", adjustment["step"])
        ax.axvline(at, color="#7570b3", ls=":", lw=1)
        # x in steps, y in axes fraction: the label stands inside the plot whatever the scales
        ax.annotate(f"adj {number}: back to step {adjustment['rolledBackToStep']}, lr×{adjustment['learningRateScale']:g}, "
                    f"+{adjustment['extraGeneralFraction']:.0%} general", (at, 0.98), xycoords=ax.get_xaxis_transform(),
                    fontsize=7, rotation=90, va="top", ha="right")
    ax.set_xlabel("optimizer steps taken (a rollback re-runs steps)")
    if history:
        ax.set_ylabel("mean general score (probe)")
    ax.set_title("Forgetting budget" + (" (signal: general KL)" if kl_signal else ""), fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="center right", fontsize=8)
    return _save(fig, path)


def rescue_markdown(gate: GateResult, baseline_mean: float | None, unrescued: Mapping[str, float] | None) -> str:
    """regression.rescue's account: every α tried, on which half, and what was found."""
    rescue = gate.rescue or {}
    lines = ["## Rescue by weight interpolation", "",
             f"θ(α) = θ₀ + α·(θ − θ₀), α chosen on one half of the suite's items and confirmed on the other; "
             f"{rescue.get('evaluations')} of {rescue.get('maxEvaluations')} half-suite evaluations spent. "
             f"Outcome: **{rescue.get('outcome')}** — {rescue.get('message')}.", ""]
    if unrescued:
        mean = mean_general_score(unrescued)
        kept = f", {mean / baseline_mean:.1%} kept" if mean is not None and baseline_mean else ""
        lines += [f"The fine-tuned model (α = 1): task {unrescued.get(TASK_CATEGORY, float('nan')):.3f}{kept}.", ""]
    lines += ["| # | α | half | task | kept | gate |", "|---:|---:|---|---:|---:|---|"]
    for number, trial in enumerate(rescue.get("trials") or [], start=1):
        task = f"{trial['taskScore']:.3f}" if trial.get("taskScore") is not None else "–"
        kept = f"{trial['kept']:.1%}" if trial.get("kept") is not None else "–"
        lines.append(f"| {number} | {trial['alpha']:g} | {trial['half']} | {task} | {kept} | {trial['verdict']} |")
    lines += ["", f"![task score and share kept over α]({RESCUE_PNG_NAME})", ""]
    return "\n".join(lines)


def render_rescue_png(gate: GateResult, baseline_mean: float | None, path: Path) -> Path:
    """Task score and share kept over α (the choice half's trials, the confirmation marked), with the
    share the gate's maxMeanDrop allows."""
    plt = _pyplot()
    rescue = gate.rescue or {}
    trials = sorted(rescue.get("trials") or [], key=lambda t: t["alpha"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    for half, marker, filled in (("choice", "o", True), ("confirmation", "s", False)):
        chosen = [t for t in trials if t["half"] == half]
        if not chosen:
            continue
        alphas = [t["alpha"] for t in chosen]
        style = dict(marker=marker, ms=5, ls="-" if half == "choice" else "none")
        if not filled:
            style["mfc"] = "none"
        ax.plot(alphas, [t.get("kept") or 0.0 for t in chosen], color="#1b9e77", label=f"share kept ({half})", **style)
        ax.plot(alphas, [t.get("taskScore") or 0.0 for t in chosen], color="#7570b3", label=f"task score ({half})", **style)
    if baseline_mean:
        ax.axhline(1.0 - gate.max_mean_drop / baseline_mean, color="#d95f02", ls="--", lw=1,
                   label=f"kept at maxMeanDrop {gate.max_mean_drop:g}")
    if rescue.get("alpha") is not None:
        ax.axvline(rescue["alpha"], color="#444444", ls=":", lw=1, label=f"promoted α = {rescue['alpha']:g}")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("α (0 = base model, 1 = fine-tuned)")
    ax.set_ylabel("score / share")
    ax.set_title(f"Rescue by interpolation — {rescue.get('outcome')}", fontsize=10)
    ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def write_report(
    gate_result: GateResult, baseline_scores: Mapping[str, float], final_scores: Mapping[str, float], out_dir: Path,
    train_summary: Mapping[str, Any] | None = None, unrescued_scores: Mapping[str, float] | None = None,
    evidence: list[dict[str, Any]] | None = None,
) -> dict[str, Path]:
    """The report files; with a train summary that used the forgetting budget, its account and plot too;
    with a rescue (gate_result.rescue), its trials and the curve over α (`unrescued_scores`: the
    fine-tuned model's scores when a rescued model replaced it)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = report_document(gate_result, baseline_scores, final_scores)
    markdown = render_markdown(gate_result, baseline_scores, final_scores)
    written: dict[str, Path] = {}
    if evidence:
        from forgetless_trainer.evaluation.evidence import evidence_markdown

        document["evidence"] = list(evidence)
        markdown += "\n" + evidence_markdown(evidence)
    if has_budget(train_summary):
        document["forgettingBudget"] = {k: train_summary.get(k) for k in (
            "probeBaseline", "budgetMaxDrop", "probeHistory", "adjustments", "stoppedReason",
            "budgetSignal", "budgetMaxKL", "generalKL", "generalKLHistory", "probeSeconds")}
        markdown += "\n" + budget_markdown(train_summary)
        written["budget_png"] = render_budget_png(train_summary, out_dir / BUDGET_PNG_NAME)
    if gate_result.rescue:
        baseline_mean = mean_general_score(baseline_scores)
        document["unrescuedScores"] = dict(unrescued_scores) if unrescued_scores else None
        markdown += "\n" + rescue_markdown(gate_result, baseline_mean, unrescued_scores)
        written["rescue_png"] = render_rescue_png(gate_result, baseline_mean, out_dir / RESCUE_PNG_NAME)
    written["json"] = atomic.write_bytes(out_dir / JSON_NAME, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode())
    written["markdown"] = atomic.write_bytes(out_dir / MARKDOWN_NAME, markdown.encode())
    written["png"] = render_png(gate_result, baseline_scores, final_scores, out_dir / PNG_NAME)
    return written
