"""The one registry shape: `{name: "module:Class"}`, the class building itself with `from_spec`.

Methods (forgetless_trainer.methods), mitigations (forgetless_trainer.mitigations) and stages
(forgetless_trainer.stages) each keep such a dict; `resolve` imports only the entry asked for, so a
job pays for the modules it uses (a registry of trainer classes stays importable without torch).
"""

from __future__ import annotations

import importlib
from typing import Any, Mapping


def resolve(registry: Mapping[str, str], name: str) -> Any:
    """The class registered under `name` ("module:Class"), imported now."""
    try:
        target = registry[name]
    except KeyError:
        raise KeyError(f"{name!r} is not registered (choose one of {', '.join(registry)})") from None
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def build(registry: Mapping[str, str], name: str, spec: Any, extras: Mapping[str, Any] | None = None) -> Any:
    """`resolve(registry, name).from_spec(spec, extras)`."""
    return resolve(registry, name).from_spec(spec, dict(extras or {}))
