"""GGUF model sources -> a cached, plain transformers model folder (see forgetless.model_sources).

transformers loads a GGUF file (`from_pretrained(folder, gguf_file=name)`: dequantized to fp32),
but refuses `save_pretrained` on the result ("The model is quantized with gguf and is not
serializable") and marks its config with a `quantization_config`. So the conversion rebuilds a
plain model of the same class from the config without it, copies the weights in with
`load_state_dict(strict=True)` (every tensor accounted for; tied embeddings stay tied), and saves
it with safetensors next to the tokenizer (which carries the GGUF's chat template). The result
loads like any model directory (0.6 s instead of ~1 min for the GGUF) and is what training,
evaluation and promotion see.

Once per cache folder: `ensure_converted` takes an exclusive lock next to the target, converts into
a unique staging folder and renames it into place (`forgetless.atomic`), so concurrent ranks and
stages on one volume convert once and never see a partial folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from forgetless import atomic, model_sources

MARKER = ".forgetless-conversion.json"
"""Written into a converted folder (hidden: not part of the model's digest for baseline caching)."""


def is_converted(folder: Path) -> bool:
    return (folder / MARKER).is_file() and (folder / "config.json").is_file()


def convert(gguf: Path, out: Path) -> dict:
    """Convert one GGUF file into `out` (an existing, empty folder); return the conversion record."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    began = time.perf_counter()
    gguf = Path(gguf)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict["architectures"] = [type(loaded).__name__]
    config = type(loaded.config)(**config_dict)
    plain = type(loaded)(config)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.generation_config = loaded.generation_config
    del loaded
    plain.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    record = {
        "source": str(gguf),
        "source_sha256": model_sources.file_digest(gguf),
        "conversion_version": model_sources.CONVERSION_VERSION,
        "architecture": type(plain).__name__,
        "parameters": sum(p.numel() for p in plain.parameters()),
        "seconds": round(time.perf_counter() - began, 1),
    }
    (Path(out) / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for path in Path(out).iterdir():  # safetensors writes 0600; other pods of the volume must read it
        path.chmod(0o644)
    return record


def ensure_converted(gguf: Path, cache_dir: Path | None = None, field: str = "spec.model.name") -> Path:
    """The converted folder of `gguf`, converting it first when no complete one exists."""
    target = model_sources.converted_dir(gguf, cache_dir)
    if is_converted(target):
        return target
    model_sources.check_converter(field)
    with atomic.exclusive_lock(target.with_name(f".{target.name}.lock")):
        if is_converted(target):  # another rank or stage converted it while we waited
            return target
        print(f"[model] converting {gguf} to {target} (once per cache folder)", file=sys.stderr, flush=True)
        with atomic.atomic_directory(target) as staging:
            record = convert(gguf, staging)
        print(f"[model] converted in {record['seconds']} s ({record['parameters']:,} parameters)",
              file=sys.stderr, flush=True)
    return target
