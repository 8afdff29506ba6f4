"""Full fine-tuning: every parameter of the base model is trained; the output is the whole model."""

from __future__ import annotations

from typing import Any

from forgetless_trainer.methods.base import Method
from forgetless_trainer.mitigations.base import TrainContext


class Full(Method):
    name = "full"
    trains_base_weights = True

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        for param in model.parameters():
            param.requires_grad_(True)
        self.trainable = sum(p.numel() for p in model.parameters())
        return model
