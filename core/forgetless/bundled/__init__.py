"""Assets shipped with forgetless: the tiny pretrained world model, its data and its suite.

`bundled:<name>` references in a FineTuneJob resolve here, so the embedded default needs no
network: `bundled:tiny-world` (model), `bundled:support-tickets` and `bundled:general` (data),
`bundled:world-v1` (regression suite). See scripts/pretrain_world.py for how they were made.

For real English instruct models: `bundled:support-triage-en` and `bundled:calendar-requests-en`
(tasks), `bundled:rehearsal-prompts-en` (the prompt pool of self-rehearsal, the default general data
of every model but the tiny world), `bundled:general-chat-en` (SmolLM2's own answers, made once
offline), `bundled:general-en-v1` and `-v2` (suites), built by the scripts named in their folders
and scripts/build_rehearsal_prompts.py, build_self_rehearsal.py, build_general_en_suite.py. The
real model `bundled:smollm2-135m-instruct` is not in this folder: it comes from a Python package
(forgetless.model_sources).
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "bundled:"
ROOT = Path(__file__).resolve().parent
KINDS = {"model": "models", "data": "data", "suite": "suites"}


class UnknownBundledAsset(LookupError):
    pass


def is_bundled(ref: str) -> bool:
    return ref.startswith(PREFIX)


def available(kind: str) -> list[str]:
    folder = ROOT / KINDS[kind]
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def resolve(ref: str, kind: str) -> Path:
    """`bundled:<name>` -> the directory holding it; `kind` is model, data or suite."""
    if not is_bundled(ref):
        raise ValueError(f"{ref!r} is not a bundled reference (expected {PREFIX}<name>)")
    name = ref[len(PREFIX):]
    path = ROOT / KINDS[kind] / name
    if not name or "/" in name or not path.is_dir():
        choices = ", ".join(PREFIX + n for n in available(kind)) or "none installed"
        raise UnknownBundledAsset(f"no bundled {kind} named {name!r} (available: {choices})")
    return path
