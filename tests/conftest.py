"""Shared fixtures: a tiny word-level Llama (tests.support.tiny_models.word_level_llama) and job factories."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.support.tiny_models import word_level_llama

REPO_ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer word-level Llama + tokenizer in HF form (~40 k params)."""
    return word_level_llama(tmp_path_factory.mktemp("tiny-model"))


BASE_MANIFEST: dict[str, Any] = {
    "apiVersion": "forgetless.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "test-job"},
    "spec": {
        "model": {"name": "bundled:tiny-world"},
        "dataset": {"task": {"path": "bundled:support-tickets"}},
    },
}


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@pytest.fixture
def manifest() -> Callable[..., dict[str, Any]]:
    """manifest(spec={...}, metadata={...}) -> a FineTuneJob manifest dict merged over a valid base."""

    def make(**patch: Any) -> dict[str, Any]:
        return _merge(BASE_MANIFEST, patch)

    return make


def tool_or_skip(name: str) -> str:
    """Path of an external tool (helm, promtool, lua5.4, kubectl). In CI (FORGETLESS_REQUIRE_TOOLS=1)
    a missing tool fails the test instead of skipping it."""
    import shutil

    for candidate in (REPO_ROOT / ".tools" / "bin" / name, shutil.which(name)):
        if candidate and Path(candidate).exists():
            return str(candidate)
    if os.environ.get("FORGETLESS_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required (FORGETLESS_REQUIRE_TOOLS=1) but not installed; run scripts/install-tools.sh")
    pytest.skip(f"{name} not installed; scripts/install-tools.sh installs it")


@pytest.fixture(scope="session")
def family_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family_model("llama" | "qwen2" | "mistral" | "gemma2" | "phi3") -> a tiny model dir of that
    family with its chat template (tests/support/tiny_models.py), built once per session."""
    from tests.support.tiny_models import build

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build(name, tmp_path_factory.mktemp(f"family-{name}"))
        return built[name]

    return get
