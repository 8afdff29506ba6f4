"""The baseline cache: evaluate a base model on a suite once, reuse it for every later job.

The baseline (the base model's item-level results on the regression suite) depends only on
(model weights, suite content, evaluator version, limit). Two keys address the same entry:

- the **weights key** `w-…` = sha256 of (model id, model version, suite digest, evaluator
  version, limit; and, when the format detector is learned, a digest of the task answers it learns
  from — the suite digest already covers the job's held-out task items), where the model version is a content digest of the model directory's files
  for local / PVC / bundled models, the resolved commit of a Hugging Face snapshot, or else
  the requested revision. This key is exact: it changes whenever the weights or the items do.
  Computed by the trainer (`weights_cache_key`), which can read the weights.
- the **spec key** `s-…` = `spec_cache_key(spec)` = sha256 of what the FineTuneJob *names*
  (model name, revision, pvc; the regression suite reference; limit; evaluator version; the task
  data reference and how the task and format leaks are scored; and the
  forgetless version for `bundled:` assets, which change with releases). Pure and cheap: the
  operator uses it to decide, before starting any pod, that the baseline stage can be skipped.

The baseline stage stores every entry under both keys. A spec-key hit is trusted only as far
as names are immutable; consumers therefore check the entry's suite digest against the suite
they loaded (`BaselineCache.get(key, suite_digest=…)`), and the evaluate stage falls back to
evaluating the base model itself when no entry matches. Mutable names (a hub model without a
pinned commit, a ConfigMap suite that is edited in place) can at worst cost that re-evaluation,
never a wrong comparison against a different suite.

Where: locally `$FORGETLESS_CACHE_DIR`, default `~/.cache/forgetless/baselines`; in the
cluster the operator sets FORGETLESS_CACHE_DIR to `<output pvc>/.forgetless-cache/baselines`.
Each entry is one JSON file `<key>.json` (written atomically: tmp file + rename), holding the
evaluation result document (suite, digest, tasks, items, scores) plus `cacheKeys` and `model`.
Torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from forgetless import __version__ as FORGETLESS_VERSION
from forgetless import atomic
from forgetless.api.schema import FineTuneJobSpec
from forgetless.contract import CACHE_DIR_ENV

EVALUATOR_VERSION = "2"
"""Bump when the evaluator's prompts, decoding or scorers change in a way that changes scores."""

DEFAULT_CACHE_DIR = Path("~/.cache/forgetless/baselines")
"""Inside the output PVC; the operator sets FORGETLESS_CACHE_DIR to `<pvc mount>/<this>`."""

_KEY = re.compile(r"^[ws]-[0-9a-f]{40}$")
_HASH_CHUNK = 1 << 20


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR).expanduser()


def document_digest(document: Mapping[str, Any]) -> str:
    """40 hex digits of sha256 over the canonical JSON of `document`: the body of every cache key."""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:40]


def prompt_identity(spec: FineTuneJobSpec) -> dict[str, Any] | None:
    """What, besides the model and the suite, decides how the suite is prompted: a chat template set
    in the spec, or `dataset.format: chat` (ChatML for a model without a template of its own).
    None for the default (the model's own template, or the raw format): existing keys stay."""
    dataset = spec.dataset
    template = getattr(dataset, "chat_template", None)
    if template is None and dataset.format != "chat":
        return None
    return {"chatTemplate": template, "format": dataset.format}


def weights_cache_key(
    model_id: str, model_version: str, suite_digest: str, limit: int | None, evaluator_version: str = EVALUATOR_VERSION,
    prompt: dict[str, Any] | None = None, task_digest: str | None = None,
) -> str:
    """The exact key: (model id, weights digest or commit, suite digest, evaluator version, limit,
    prompt format when not the default, the digest of the task answers the format detector learned from
    when it learned)."""
    document: dict[str, Any] = {"model": model_id, "version": model_version, "suite": suite_digest,
                                "evaluator": evaluator_version, "limit": limit}
    if prompt is not None:
        document["prompt"] = prompt
    if task_digest is not None:
        document["taskAnswers"] = task_digest
    return "w-" + document_digest(document)


def spec_cache_key(spec: FineTuneJobSpec, evaluator_version: str = EVALUATOR_VERSION) -> str:
    """The operator's key: pure function of what the spec names (see the module doc)."""
    model = spec.model
    suite = spec.regression.suite
    document: dict[str, Any] = {
        "model": {
            "name": model.name,
            "revision": model.revision,
            "pvc": model.pvc.to_wire() if model.pvc else None,
        },
        "suite": suite.to_wire(),
        "limit": spec.regression.limit,
        "evaluator": evaluator_version,
        # the job's own held-out task is part of what the baseline scores, and its answers train the format detector
        "task": {"data": spec.dataset.task.to_wire(), "format": spec.dataset.format,
                 "scoring": spec.regression.task.to_wire(), "formatLeak": spec.regression.format_leak.to_wire()},
    }
    prompt = prompt_identity(spec)
    if prompt is not None:
        document["prompt"] = prompt
    if model.name.startswith("bundled:") or (suite.path or "").startswith("bundled:"):
        document["forgetless"] = FORGETLESS_VERSION
    if suite.pvc is not None:  # read_only is a mount detail, not content
        document["suite"]["pvc"].pop("readOnly", None)
    if model.pvc is not None:
        document["model"]["pvc"].pop("readOnly", None)
    return "s-" + document_digest(document)


def directory_digest(path: Path, patterns: Iterable[str] = ("*",)) -> str:
    """sha256 over the relative names and contents of the files under `path` (sorted), skipping
    README/.git and other non-weight clutter. For a model directory: its weights + config."""
    path = Path(path)
    files = sorted(
        p for pattern in patterns for p in path.rglob(pattern)
        if p.is_file() and ".git" not in p.parts and not p.name.lower().startswith("readme") and not p.name.startswith(".")
    )
    if not files:
        raise FileNotFoundError(f"{path}: no files to digest")
    digest = hashlib.sha256()
    for file in dict.fromkeys(files):
        digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


class BaselineCache:
    """A directory of `<key>.json` entries (see the module doc)."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else cache_dir()

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a baseline cache key: {key!r} (expected w-… or s-… with 40 hex digits)")
        return self.directory / f"{key}.json"

    def get(self, key: str, *, suite_digest: str | None = None) -> dict[str, Any] | None:
        """The entry under `key`, or None (absent, unreadable, or for another suite digest)."""
        path = self.path(key)
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or "items" not in document:
            return None
        if suite_digest is not None and document.get("digest") != suite_digest:
            return None
        return document

    def put(self, keys: Iterable[str], document: Mapping[str, Any], *, model: str | None = None) -> list[Path]:
        """Store `document` (an evaluation result document) under every key; atomic per file."""
        keys = list(dict.fromkeys(keys))
        entry = dict(document)
        entry["cacheKeys"] = keys
        entry["model"] = model
        entry["storedAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.directory.mkdir(parents=True, exist_ok=True)
        text = json.dumps(entry, sort_keys=True)
        written = []
        for key in keys:
            target = self.path(key)
            written.append(atomic.write_text(target, text))
        return written
