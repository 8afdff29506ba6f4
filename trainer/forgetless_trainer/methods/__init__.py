"""Training methods: `lora` (frozen base, adapters trained) and `full` (every weight trained).

A method is not a mitigation: exactly one runs per job, it decides which parameters train, and
what it means for the rest is a property of the method, asked here and nowhere else:

- `configure_model(model, ctx) -> model`  choose the trainable parameters (runs before every mitigation's);
- `trains_base_weights`                    the base model's own weights change (full) or stay frozen (lora):
                                           checkpoints leave frozen weights out, online EWC carries the
                                           previous anchor over only for base weights;
- `summary()`                              trainable parameters, merged into the train summary.

Nothing outside this package compares `spec.method.type` with a string.
"""

from __future__ import annotations

from forgetless import registry
from forgetless.api.schema import FineTuneJobSpec
from forgetless_trainer.methods.base import Method

REGISTRY = {"lora": "forgetless_trainer.methods.lora:Lora", "full": "forgetless_trainer.methods.full:Full"}
"""`spec.method.type` -> "module:Class" (forgetless.registry)."""


def method_for(spec: FineTuneJobSpec) -> Method:
    """The job's method, built from the spec (the Trainer builds it once)."""
    return registry.build(REGISTRY, spec.method.type, spec)


__all__ = ["Method", "REGISTRY", "method_for"]
