"""Training methods: `lora` (frozen base, adapters trained) and `full` (every weight trained).

A method is not a mitigation: exactly one runs per job, it decides which parameters train, and
what it means for the rest is a property of the method, asked here and nowhere else:

- `configure_model(model, ctx) -> model`  choose the trainable parameters (runs before every mitigation);
- `trains_base_weights`                    the base model's own weights change (full) or stay frozen (lora):
                                           checkpoints leave frozen weights out, online EWC carries the
                                           previous anchor over only for base weights;
- `summary()`                              trainable parameters, merged into the train summary.

Nothing outside this package compares `spec.method.type` with a string.
"""

from __future__ import annotations

import importlib
from typing import Any

from forgetless.api.schema import FineTuneJobSpec
from forgetless_trainer.mitigations.base import Mitigation

REGISTRY = {"lora": "forgetless_trainer.methods.lora:Lora", "full": "forgetless_trainer.methods.full:Full"}


class Method(Mitigation):
    """The method's hooks are Mitigation hooks (it runs first in the same list); plus what it is."""

    trains_base_weights: bool = True

    def summary(self) -> dict[str, Any]:
        return {"trainableParameters": getattr(self, "trainable", 0)}


def method_for(spec: FineTuneJobSpec) -> Method:
    module, _, name = REGISTRY[spec.method.type].partition(":")
    return getattr(importlib.import_module(module), name)()
