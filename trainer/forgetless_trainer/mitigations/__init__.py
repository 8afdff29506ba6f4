"""Forgetting mitigations, one module each behind `Mitigation` (base.py), picked from the spec here.

`build(spec, probe=...)` returns them in the order they run: the method (lora | full) first (it
decides the trainable parameters), then the data mixers, then EWC (its Fisher needs the
trainable parameters), then the stopping rules. Every entry of `REGISTRY` is
(name, "is it on in this spec?", factory); adding a mitigation is adding a module and one row.
"""

from __future__ import annotations

from typing import Any, Callable

from forgetless.api.schema import FineTuneJobSpec
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext, TrainerView


def _lora(spec, probe):
    from forgetless_trainer.mitigations.lora import Lora

    return Lora()


def _full(spec, probe):
    from forgetless_trainer.mitigations.full import Full

    return Full()


def _mixing(spec, probe):
    from forgetless_trainer.mitigations.data_mixing import DataMixing

    return DataMixing()


def _replay(spec, probe):
    from forgetless_trainer.mitigations.replay import Replay

    return Replay()


def _ewc(spec, probe):
    from forgetless_trainer.mitigations.ewc import Ewc

    return Ewc()


def _early(spec, probe):
    from forgetless_trainer.mitigations.early_stopping import EarlyStopping

    return EarlyStopping.from_spec(spec.mitigation.early_stopping)


def _budget(spec, probe):
    from forgetless_trainer.mitigations.forgetting_budget import ForgettingBudget

    budget = spec.mitigation.forgetting_budget
    mixing = spec.mitigation.data_mixing.general_fraction
    return ForgettingBudget(
        budget.max_drop, budget.probe_interval_steps, probe=probe.get("probe"), probe_factory=probe.get("factory"),
        regression=spec.regression,
        on_breach=budget.on_breach, max_adjustments=budget.max_adjustments,
        learning_rate_factor=budget.learning_rate_factor, general_fraction_step=budget.general_fraction_step,
        max_general_fraction=budget.max_general_fraction, base_general_fraction=mixing,
    )


REGISTRY: list[tuple[str, Callable[[FineTuneJobSpec], bool], Callable[..., Mitigation]]] = [
    ("lora", lambda s: s.method.type == "lora", _lora),
    ("full", lambda s: s.method.type == "full", _full),
    ("data_mixing", lambda s: s.mitigation.data_mixing.general_fraction > 0, _mixing),
    ("replay", lambda s: s.mitigation.replay is not None, _replay),
    ("ewc", lambda s: s.mitigation.ewc is not None, _ewc),
    ("early_stopping", lambda s: s.mitigation.early_stopping is not None, _early),
    ("forgetting_budget", lambda s: s.mitigation.forgetting_budget is not None, _budget),
]


def build(
    spec: FineTuneJobSpec, *, probe: Callable[[Any, Any], dict[str, float]] | None = None, probe_factory=None
) -> list[Mitigation]:
    """The mitigations `spec` turns on, in run order. `probe` (or `probe_factory()`) feeds the forgetting budget."""
    extras = {"probe": probe, "factory": probe_factory}
    return [factory(spec, extras) for _, enabled, factory in REGISTRY if enabled(spec)]


def names(spec: FineTuneJobSpec) -> list[str]:
    return [name for name, enabled, _ in REGISTRY if enabled(spec)]


__all__ = ["Mitigation", "Stop", "TrainContext", "TrainerView", "REGISTRY", "build", "names"]
