"""The DeepSpeed config and the learning-rate schedule, generated from the FineTuneJob spec.

The optimizer (torch AdamW) and the scheduler (a LambdaLR) are client objects handed to
`deepspeed.initialize`, so no fused op is compiled and the schedule is ours: linear warmup over
ceil(warmupRatio · total) steps, then cosine or linear decay to 0, or constant. DeepSpeed owns
micro-batching bookkeeping, gradient accumulation, clipping (`maxGradNorm`), ZeRO 0–3, CPU
offload and bf16/fp16.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from forgetless.api.schema import FineTuneJobSpec
from forgetless.errors import StageError


def resolve_precision(precision: str) -> str:
    """`auto` → bf16 on a CUDA device with bf16 support, fp32 otherwise. fp16 needs a GPU."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise StageError("training.precision fp16 needs a CUDA GPU; use bf16 or fp32 (or auto) on CPU")
    return precision


def deepspeed_config(spec: FineTuneJobSpec, world_size: int) -> dict[str, Any]:
    training, ds = spec.training, spec.deepspeed
    precision = resolve_precision(training.precision)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:  # zeroStage >= 1: a schema rule
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "train_batch_size": training.batch_size * training.gradient_accumulation_steps * world_size,
        "gradient_clipping": training.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "torch_adam": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return math.ceil(warmup_ratio * total_steps)


def lr_lambda(kind: str, total_steps: int, warmup: int) -> Callable[[int], float]:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if kind == "constant":
            return 1.0
        span = max(total_steps - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        if kind == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
