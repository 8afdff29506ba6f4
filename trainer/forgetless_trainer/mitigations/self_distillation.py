"""Self-distillation on the general data: keep the base model's answers while learning the task.

Every micro-batch's loss gains β × the mean per-token forward KL(π₀‖π) on the answer tokens of its
general-data rows (those data mixing drew from `dataset.general`; `batch["general"]`). π₀ is the base
model on the same rows: with LoRA the adapter disabled (`with model.disable_adapter():`, nothing
stored), with full fine-tuning a frozen copy made before training (twice the weights in memory).
The reference forward runs in eval mode without gradients.

Data mixing alone trains on the general data's reference answers, which pulls the model towards
those texts; the KL term pulls it towards what the base model itself predicted there, over the
whole distribution of every answer token (learning without forgetting, Li & Hoiem 2016; the same
KL that "RL's Razor" finds forgetting to track, and that training/general_kl.py measures). A batch
without general rows adds nothing. Summary: `selfDistillation` {weight, meanKL (nats per answer
token, over the micro-batches that had general rows), lastKL, batches}.
"""

from __future__ import annotations

import copy
from typing import Any

from forgetless_trainer.data import IGNORE_INDEX
from forgetless_trainer.mitigations.base import Mitigation, TrainContext
from forgetless_trainer.training.general_kl import has_adapter, token_kl


def answer_kl(base_logits: Any, logits: Any, labels: Any) -> Any:
    """Mean over the labelled next-token positions of KL(softmax(base) ‖ softmax(logits)), in fp32."""
    import torch

    positions = labels[:, 1:] != IGNORE_INDEX
    lp0 = torch.log_softmax(base_logits[:, :-1].float(), dim=-1)
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return (token_kl(lp0, lp) * positions).sum() / positions.sum().clamp(min=1)


class SelfDistillation(Mitigation):
    name = "self_distillation"
    wants_sources = True

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.reference: Any = None  # full fine-tuning: the frozen base copy
        self.total, self.batches, self.last = 0.0, 0, None

    @classmethod
    def from_spec(cls, spec: Any, extras: dict[str, Any]) -> "SelfDistillation":
        return cls(spec.mitigation.self_distillation.weight)

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        if not has_adapter(model):
            self.reference = copy.deepcopy(model).eval()
            for parameter in self.reference.parameters():
                parameter.requires_grad_(False)
        return model

    def _base_logits(self, model: Any, input_ids: Any, attention_mask: Any) -> Any:
        import torch

        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.reference is not None:
                    return self.reference(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                with model.disable_adapter():
                    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        finally:
            model.train(was_training)

    def batch_loss_term(self, model: Any, batch: dict[str, Any], logits: Any) -> Any:
        rows = batch.get("general")
        if rows is None or not bool(rows.any()):
            return None
        rows = rows.to(logits.device)
        mask = batch.get("attention_mask")
        base = self._base_logits(model, batch["input_ids"][rows], mask[rows] if mask is not None else None)
        kl = answer_kl(base, logits[rows], batch["labels"][rows])
        value = float(kl.detach())
        self.total, self.batches, self.last = self.total + value, self.batches + 1, value
        return self.weight * kl

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total, "batches": self.batches, "last": self.last}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total, self.batches, self.last = state.get("total", 0.0), state.get("batches", 0), state.get("last")

    def summary(self) -> dict[str, Any]:
        mean = self.total / self.batches if self.batches else None
        return {"selfDistillation": {"weight": self.weight, "meanKL": mean, "lastKL": self.last,
                                     "batches": self.batches}}
