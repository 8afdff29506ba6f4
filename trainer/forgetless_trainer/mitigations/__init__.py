"""Forgetting mitigations, one module each behind `Mitigation` (base.py), picked from the spec here.

`build(spec, probe=...)` returns the mitigations the spec turns on (`spec.mitigation.turned_on()`)
in the order they run: the data mixers, then EWC (its Fisher needs the trainable parameters the
method chose before it), then the stopping rules. The training method is not one of them
(forgetless_trainer.methods: it runs first, and the Trainer builds it). `REGISTRY` has the one
registry shape (forgetless.registry): name -> "module:Class", the class building itself with
`from_spec(spec, extras)`. Adding a mitigation is adding a module, its spec field and one entry.
"""

from __future__ import annotations

from typing import Any, Callable

from forgetless import registry
from forgetless.api.schema import FineTuneJobSpec
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext, TrainerView

_HERE = "forgetless_trainer.mitigations"
REGISTRY: dict[str, str] = {
    "data_mixing": f"{_HERE}.data_mixing:DataMixing",
    "replay": f"{_HERE}.replay:Replay",
    "ewc": f"{_HERE}.ewc:Ewc",
    "self_distillation": f"{_HERE}.self_distillation:SelfDistillation",
    "early_stopping": f"{_HERE}.early_stopping:EarlyStopping",
    "forgetting_budget": f"{_HERE}.forgetting_budget:ForgettingBudget",
}
"""Run order. Each key is a field of the spec's `mitigation` block."""


def build(
    spec: FineTuneJobSpec, *, probe: Callable[[Any, Any], dict[str, float]] | None = None, probe_factory=None
) -> list[Mitigation]:
    """The mitigations `spec` turns on, in run order. `probe` (or `probe_factory()`) feeds the
    forgetting budget."""
    extras = {"probe": probe, "factory": probe_factory}
    return [registry.build(REGISTRY, name, spec, extras) for name in names(spec)]


def names(spec: FineTuneJobSpec) -> list[str]:
    """The mitigations `spec` turns on, in run order."""
    on = spec.mitigation.turned_on()
    return [name for name in REGISTRY if name in on]


__all__ = ["Mitigation", "Stop", "TrainContext", "TrainerView", "REGISTRY", "build", "names"]
