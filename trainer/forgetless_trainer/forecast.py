"""The forecast before training: how far the task is from what the base model knows.

The baseline stage measures the base model's mean per-token loss (nats, response tokens only, the
training format of the train stage: its chat template or the raw `prompt =>` format, `maxSeqLength`)
on a sample of `SAMPLE` records of the task data (`dataset.task`, its training split) and of the
model's own answers (forgetless.general_data.forecast_reference: self-rehearsal for every model but
the tiny world, whatever `dataset.general` names, so a task's distance does not depend on which
general file a job configures, falling back to the named data when the model's answers could not be
made; the world's sentences for the tiny world), and defines

    distance = taskLoss − generalLoss          (nats per token)

the extra surprise the task's answers hold for the model over what it already says. Fine-tuning has
to move the model by about that much on the task, and the further it moves the more it forgets
("RL's Razor": forgetting tracks KL(π₀‖π); a task far from the model needs a large KL to learn).

Bands and what they suggest:

| band     | distance        | suggestion                                                                 |
|----------|-----------------|----------------------------------------------------------------------------|
| near     | < NEAR          | LoRA, 0–20 % general data, the method's default learning rate              |
| moderate | NEAR … FAR      | LoRA + 30 % general data (the seed rule), default learning rate            |
| far      | ≥ FAR           | LoRA + ≥ 50 % general data; full fine-tuning only with a forgetting budget |

A policy meets a suggestion (`meets`) with the suggested method and at least the suggested share of
rehearsal (general data plus replay), or with a forgetting budget that adds general data when it
breaches. NEAR and FAR are fitted, not chosen: `benchmarks/forecast_calibration.py` measures the
distance of each (model, task) and picks the edges that predict the most measured outcomes (`fit_bands`);
tests/unit/test_forecast.py refits its committed observations and fails when they differ. How well it
predicts, misses included: docs/benchmarks.md, "Forecast calibration".

The summary's `forecast` holds {taskLoss, generalLoss, distance, band, suggestion, records,
reference, policyMeetsSuggestion}; the stage prints one line. It costs two forward passes over 64
short records; when the data cannot be read the forecast is skipped with a line saying why and the
stage goes on (the forecast is advice, never a reason to fail).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

SAMPLE = 64
NEAR = 1.1495
FAR = 7.2463
"""Fitted by benchmarks/forecast_calibration.py on 40 measured outcomes (2026-12-07): each edge midway between two
measured task distances (0.03 | 2.27 and 3.28 | 11.21 nats/token); benchmarks/results/forecast_calibration.json."""
BATCH = 16

SUGGESTIONS: dict[str, dict[str, Any]] = {
    "near": {"method": "lora", "generalFraction": 0.0, "learningRate": "default",
             "text": "LoRA, 0-20 % general data, the default learning rate"},
    "moderate": {"method": "lora", "generalFraction": 0.3, "learningRate": "default",
                 "text": "LoRA + 30 % general data (the seed rule), the default learning rate"},
    "far": {"method": "lora", "generalFraction": 0.5, "learningRate": "default",
            "text": "LoRA + at least 50 % general data; full fine-tuning only with a forgetting budget"},
}


def band(distance: float, near: float | None = None, far: float | None = None) -> str:
    near = NEAR if near is None else near
    far = FAR if far is None else far
    return "near" if distance < near else "moderate" if distance < far else "far"


def policy_of(spec: Any) -> dict[str, Any]:
    """What the forecast compares with its suggestion: the method, the share of every epoch that is
    rehearsal (general data plus replay of earlier data) and whether a forgetting budget adds general
    data itself when it breaches (onBreach Adjust with a step; a budget that only stops adds none)."""
    m = spec.mitigation
    budget = m.forgetting_budget
    return {"method": spec.method.type,
            "rehearsalShare": round(m.data_mixing.general_fraction + (m.replay.fraction if m.replay else 0.0), 6),
            "budgetAddsData": bool(budget is not None and budget.on_breach == "Adjust"
                                   and budget.general_fraction_step > 0)}


def meets(suggestion: dict[str, Any], policy: dict[str, Any]) -> bool:
    """Does a policy (`policy_of`) train at least as gently as `suggestion`? (A forgetting budget that
    adds general data stands in for the mixing a full fine-tune lacks.)"""
    if policy["budgetAddsData"]:
        return True
    return policy["method"] == suggestion["method"] and policy["rehearsalShare"] >= suggestion["generalFraction"] - 1e-9


def held(verdict: str) -> bool:
    """The outcome the forecast predicts: the general skills held (the gate did not fail; NoTaskGain
    and Warned count as held: they are about the task, or within the thresholds)."""
    return verdict != "Failed"


def agreement(observations: list[dict[str, Any]], near: float, far: float) -> int:
    """How many observations ({distance, policy, verdict}) the forecast with these bands predicts right."""
    return sum(meets(SUGGESTIONS[band(o["distance"], near, far)], o["policy"]) == held(o["verdict"])
               for o in observations)


def fit_bands(observations: list[dict[str, Any]]) -> tuple[float, float, int]:
    """(near, far, right): the band edges that predict the most observed outcomes. Candidates are the
    midpoints between consecutive measured distances (an edge as far from the data as the data allow),
    or one below all of them; among equally good pairs the lowest edges win (when the data cannot
    tell, a task is called the farther band: more mixing, not less)."""
    distances = sorted({round(o["distance"], 4) for o in observations})
    candidates = [distances[0] - 1.0] + [round((a + b) / 2, 4) for a, b in zip(distances, distances[1:])]
    candidates += [distances[-1] + 1.0]
    best: tuple[int, float, float] | None = None
    for near in candidates:
        for far in candidates:
            if far < near:
                continue
            right = agreement(observations, near, far)
            if best is None or right > best[0]:
                best = (right, near, far)
    assert best is not None
    return best[1], best[2], best[0]


def _sample(examples: list[Any], n: int, seed: int) -> list[Any]:
    if len(examples) <= n:
        return list(examples)
    return random.Random(f"forecast-{seed}").sample(list(examples), n)


def mean_loss(model: Any, encoder: Any, examples: list[Any]) -> float:
    """Mean per-token NLL over the labelled (response) tokens of `examples`."""
    from forgetless_trainer import data as D

    return D.mean_token_nll(model, encoder, examples, BATCH, next(model.parameters()).device)


def forecast(spec: Any, model: Any, tokenizer: Any, base_dir: Path | None = None, n: int = SAMPLE,
             workdir: Path | None = None) -> dict[str, Any]:
    """The forecast of `spec` for the (base) `model`; raises StageError when the data cannot be read."""
    from forgetless.general_data import forecast_reference, general_data
    from forgetless_trainer import chat
    from forgetless_trainer import data as D
    from forgetless_trainer.evaluation.own_task import training_records
    from forgetless_trainer.self_rehearsal import general_examples, has_rehearsal

    task = training_records(spec, base_dir)
    choice = forecast_reference(spec)
    if choice.kind == "selfRehearsal" and spec.dataset.general is not None and not has_rehearsal(workdir):
        choice = general_data(spec)  # the model's own answers could not be made: the job's named data
    general = general_examples(spec, workdir, base_dir, choice)
    template = chat.install_template(tokenizer, spec.dataset, base_dir)
    encoder = D.Encoder(tokenizer, spec.training.max_seq_length,
                        chat=chat.ChatFormat(tokenizer, template) if template else None)
    seed = spec.training.seed
    task_loss = mean_loss(model, encoder, _sample(task, n, seed))
    general_loss = mean_loss(model, encoder, _sample(general, n, seed))
    distance = task_loss - general_loss
    which = band(distance)
    suggestion = SUGGESTIONS[which]
    return {
        "taskLoss": round(task_loss, 4),
        "generalLoss": round(general_loss, 4),
        "distance": round(distance, 4),
        "band": which,
        "suggestion": dict(suggestion),
        "records": min(n, len(task)) + min(n, len(general)),
        "reference": choice.kind,
        "policyMeetsSuggestion": meets(suggestion, policy_of(spec)),
    }


def line(result: dict[str, Any]) -> str:
    """The one forecast line the baseline stage prints."""
    verdict = ("this job's policy is at least that gentle" if result["policyMeetsSuggestion"]
               else "this job's policy is harsher than that: expect forgetting")
    reference = "its own answers" if result.get("reference") == "selfRehearsal" else "general"
    return (f"forecast: task loss {result['taskLoss']:.2f} vs {reference} {result['generalLoss']:.2f} nats/token, "
            f"distance {result['distance']:+.2f} ({result['band']}); suggests {result['suggestion']['text']}; "
            f"{verdict}")


def run_forecast(spec: Any, base_dir: Path | None = None, model: Any = None, tokenizer: Any = None,
                 log=print, workdir: Path | None = None) -> dict[str, Any] | None:
    """The forecast for the baseline stage: loads the base model when not given; None (and a line) when
    the data or the model cannot be read."""
    from forgetless.errors import StageError

    try:
        if model is None:
            from forgetless_trainer.modeling import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(spec.model, base_dir=base_dir)
        result = forecast(spec, model, tokenizer, base_dir, workdir=workdir)
    except StageError as exc:  # data or model not reachable: say so, the stage goes on
        log(f"forecast skipped: {exc}")
        return None
    except Exception as exc:  # noqa: BLE001 - advice must never fail the baseline stage
        log(f"forecast skipped: {type(exc).__name__}: {exc}")
        return None
    log(line(result))
    return result
