"""Loading the base model and tokenizer named by a FineTuneJob (`spec.model`).

`model.name` is one of
- `bundled:<name>`: a model shipped with forgetless (`forgetless.bundled.resolve(ref, "model")`),
  or one shipped in a Python package as GGUF (`forgetless.model_sources.PACKAGED_MODELS`, e.g.
  `bundled:smollm2-135m-instruct`);
- a path ending in `.gguf` (local or in `model.pvc`): a GGUF file. GGUF sources are converted
  once into a cached model folder (`forgetless_trainer.gguf_conversion`) and loaded from there;
- a path: absolute, `~`-relative, relative to `base_dir` when given, else to the current directory, or a
  path inside `model.pvc` (mounted at `$FORGETLESS_PVC_ROOT/<claim>` in pods);
- otherwise a Hugging Face hub id (`org/model`), passed through with `model.revision`; the token
  comes from env `HF_TOKEN` (the operator exposes `model.tokenSecretRef` under that name).

A name that looks like a path (starts with `/`, `.` or `~`, or has a `pvc`) but does not exist is
an error naming the path, never a silent hub lookup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from forgetless import bundled, locations, model_sources
from forgetless.api.schema import ModelSpec
from forgetless.errors import StageError


class ModelLoadError(StageError):
    """The model named by the spec cannot be found or loaded (message says which and how to fix)."""


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name in {".", ".."}


def resolve_model_location(model_spec: ModelSpec, base_dir: Path | None = None) -> str:
    """The string to hand to `from_pretrained`: a local directory, or a hub id."""
    name = model_spec.name
    if model_sources.needs_conversion(name):
        return str(_converted_gguf(model_spec, base_dir))
    if bundled.is_bundled(name):
        try:
            return str(bundled.resolve(name, "model"))
        except bundled.UnknownBundledAsset as exc:
            packaged = ", ".join(model_sources.available_packaged())
            raise ModelLoadError(f"spec.model.name: {exc}; from packages: {packaged}") from exc
    if model_spec.pvc is not None or _looks_like_path(name):
        path = locations.resolve_path(name, pvc=model_spec.pvc, kind="model", base_dir=base_dir)
        if not path.exists():
            raise ModelLoadError(
                f"model.name: no model at {path} (set model.name to a directory holding config.json, "
                "a Hugging Face id, or bundled:<name>)"
            )
        return str(path)
    relative = (base_dir / name) if base_dir is not None else Path(name)
    if relative.exists():
        return str(relative)
    return name


def _converted_gguf(model_spec: ModelSpec, base_dir: Path | None) -> Path:
    from forgetless_trainer.gguf_conversion import ensure_converted

    try:
        gguf = model_sources.gguf_source(model_spec.name, pvc=model_spec.pvc, base_dir=base_dir)
        return ensure_converted(gguf)
    except model_sources.ModelSourceError as exc:
        raise ModelLoadError(str(exc)) from exc
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # an architecture or quantization transformers cannot read
        raise ModelLoadError(
            f"spec.model.name: cannot convert the GGUF file of {model_spec.name!r}: {exc} (transformers reads GGUF "
            "files of the architectures it lists in transformers.integrations.ggml; convert other files to a "
            "Hugging Face folder yourself and set spec.model.name to it)"
        ) from exc


def _hub_kwargs(model_spec: ModelSpec, location: str) -> dict[str, Any]:
    if Path(location).exists():
        return {}
    kwargs: dict[str, Any] = {}
    if model_spec.revision:
        kwargs["revision"] = model_spec.revision
    token = os.environ.get("HF_TOKEN")
    if token:
        kwargs["token"] = token
    return kwargs


def load_tokenizer(location: str, **kwargs: Any):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
    return tokenizer


def load_base_tokenizer(model_spec: ModelSpec, base_dir: Path | None = None):
    """The base model's tokenizer alone (no weights): cheap, for what depends on the prompt format only."""
    location = resolve_model_location(model_spec, base_dir)
    return load_tokenizer(location, **_hub_kwargs(model_spec, location))


def load_model_and_tokenizer(
    model_spec: ModelSpec,
    *,
    adapter_path: Path | None = None,
    dtype: Any = None,
    base_dir: Path | None = None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer), model in eval mode.

    With `adapter_path`: a peft adapter there (adapter_config.json) is loaded on top of the base
    model; a full model saved there (config.json) is loaded instead of the base model. The
    tokenizer is taken from `adapter_path` when it holds one, else from the base model.
    """
    from transformers import AutoModelForCausalLM

    location = resolve_model_location(model_spec, base_dir)
    kwargs = _hub_kwargs(model_spec, location)
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    adapter = Path(adapter_path) if adapter_path is not None else None
    if adapter is not None and not adapter.exists():
        raise ModelLoadError(f"no adapter or model at {adapter}")
    is_full = adapter is not None and (adapter / "config.json").exists() and not (adapter / "adapter_config.json").exists()
    if adapter is not None and not is_full and not (adapter / "adapter_config.json").exists():
        raise ModelLoadError(f"{adapter} holds neither a peft adapter (adapter_config.json) nor a model (config.json)")
    tok_kwargs = {k: v for k, v in kwargs.items() if k not in ("dtype", "attn_implementation")}
    has_tokenizer = adapter is not None and any(
        (adapter / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")
    )
    try:
        tokenizer = load_tokenizer(str(adapter)) if has_tokenizer else load_tokenizer(location, **tok_kwargs)
        if is_full:
            model = AutoModelForCausalLM.from_pretrained(str(adapter), **({"dtype": dtype} if dtype is not None else {}))
        else:
            model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {model_spec.name!r} from {location}: {exc}") from exc
    if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer
