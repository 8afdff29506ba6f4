"""Forgetting mitigations, one module each behind `Mitigation` (base.py), picked from the spec here.

`build(spec, probe=...)` returns the hooks in the order they run: the training method
(forgetless_trainer.methods: lora | full) first (it decides the trainable parameters), then the
data mixers, then EWC (its Fisher needs the trainable parameters), then the stopping rules. Every
entry of `REGISTRY` is (name, "is it on in this spec?", "module:Class"); the class builds itself
with `from_spec(spec, extras)`. Adding a mitigation is adding a module and one row.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from forgetless.api.schema import FineTuneJobSpec
from forgetless_trainer.mitigations.base import Mitigation, Stop, TrainContext, TrainerView

_HERE = "forgetless_trainer.mitigations"
REGISTRY: list[tuple[str, Callable[[FineTuneJobSpec], bool], str]] = [
    ("data_mixing", lambda s: s.mitigation.data_mixing.general_fraction > 0, f"{_HERE}.data_mixing:DataMixing"),
    ("replay", lambda s: s.mitigation.replay is not None, f"{_HERE}.replay:Replay"),
    ("ewc", lambda s: s.mitigation.ewc is not None, f"{_HERE}.ewc:Ewc"),
    ("early_stopping", lambda s: s.mitigation.early_stopping is not None, f"{_HERE}.early_stopping:EarlyStopping"),
    ("forgetting_budget", lambda s: s.mitigation.forgetting_budget is not None,
     f"{_HERE}.forgetting_budget:ForgettingBudget"),
]


def _load(target: str) -> type[Mitigation]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build(
    spec: FineTuneJobSpec, *, probe: Callable[[Any, Any], dict[str, float]] | None = None, probe_factory=None
) -> list[Mitigation]:
    """The method and the mitigations `spec` turns on, in run order. `probe` (or `probe_factory()`)
    feeds the forgetting budget."""
    from forgetless_trainer.methods import method_for

    extras = {"probe": probe, "factory": probe_factory}
    return [method_for(spec)] + [_load(target).from_spec(spec, extras)
                                 for _, enabled, target in REGISTRY if enabled(spec)]


def names(spec: FineTuneJobSpec) -> list[str]:
    """The method's name, then the mitigations' (as in the train summary)."""
    return [spec.method.type] + [name for name, enabled, _ in REGISTRY if enabled(spec)]


__all__ = ["Mitigation", "Stop", "TrainContext", "TrainerView", "REGISTRY", "build", "names"]
