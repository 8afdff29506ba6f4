"""LoRA (peft): low-rank adapters on the chosen linear layers; the base weights stay frozen.

`method.lora.targetModules` takes module names (q_proj, v_proj, ...) or `all-linear` (every
linear layer but the output head, peft's own rule). The base model's weights are never touched
(peft freezes them and adds A/B matrices beside them; B starts at 0, so the model starts equal
to the base). The output is the adapter alone (`save_pretrained` of the PeftModel).
"""

from __future__ import annotations

from typing import Any

from forgetless_trainer.methods.base import Method
from forgetless_trainer.mitigations.base import TrainContext
from forgetless.errors import StageError


class Lora(Method):
    name = "lora"
    trains_base_weights = False

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        from peft import LoraConfig, get_peft_model

        spec = ctx.spec.method.lora
        targets = list(spec.target_modules)
        config = LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(model, config)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ == "Linear"})
            raise StageError(
                f"method.lora.targetModules {targets}: {exc} (linear modules of this model: {', '.join(names)}, or all-linear)"
            ) from exc
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model
