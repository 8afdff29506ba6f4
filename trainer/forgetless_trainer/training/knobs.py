"""Memory and speed knobs of `spec.training`: the load dtype (`precision`), the attention kernel
(`attention`) and gradient checkpointing (`gradientCheckpointing`). Packing is training/packing.py.

- precision: the model is loaded in the dtype DeepSpeed trains in (bf16/fp16 halve the memory
  of loading; fp32 on CPU with `auto`).
- attention `auto`: `flash_attention_2` when the `flash_attn` package is installed and a CUDA GPU
  is present, else transformers' own choice (SDPA when the architecture supports it, else eager);
  an explicit value is passed as `attn_implementation` (flash-attention without a GPU or the
  package is an error naming the field).
- gradientCheckpointing: activation (gradient) checkpointing with `use_reentrant=False` before LoRA wraps
  the model: the non-reentrant variant needs no `enable_input_require_grads` with frozen
  embeddings, and `use_cache` is turned off (no KV cache while training).
"""

from __future__ import annotations

import importlib.util
from typing import Any

from forgetless.errors import StageError


def _flash_available() -> bool:
    import torch

    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def attention_implementation(value: str) -> str | None:
    """`training.attention` -> the `attn_implementation` to load with (None: transformers decides)."""
    if value == "auto":
        return "flash_attention_2" if _flash_available() else None
    if value == "flash_attention_2" and not _flash_available():
        raise StageError(
            "training.attention flash_attention_2 needs a CUDA GPU and the flash-attn package; "
            "use auto, sdpa or eager"
        )
    return value


def load_dtype(precision: str) -> Any:
    """The torch dtype of a resolved precision (bf16/fp16/fp32)."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def enable_gradient_checkpointing(model: Any) -> Any:
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name (the old one warns)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    return model
