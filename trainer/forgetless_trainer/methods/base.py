"""What a training method is (its own small base: a method is not a mitigation)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forgetless_trainer.mitigations.base import TrainContext


class Method:
    """Exactly one runs per job, before every mitigation: it chooses the trainable parameters."""

    name: str = "method"
    trains_base_weights: bool = True
    """The base model's own weights change (full) or stay frozen (lora)."""

    @classmethod
    def from_spec(cls, spec: Any, extras: dict[str, Any]) -> "Method":
        """Built by the registry from the job spec (a method reads its options from `ctx.spec`)."""
        return cls()

    def configure_model(self, model: Any, ctx: "TrainContext") -> Any:
        """Choose the trainable parameters (peft adapters, or every weight); returns the model to train."""
        return model

    def summary(self) -> dict[str, Any]:
        """Merged into the train stage's summary."""
        return {"trainableParameters": getattr(self, "trainable", 0)}
