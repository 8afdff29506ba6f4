"""Baseline cache keys and the cache directory: hits, misses, digests, the spec key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless.api.schema import FineTuneJobSpec
from forgetless.baseline_cache import (
    BaselineCache, cache_dir, directory_digest, spec_cache_key, weights_cache_key,
)

SPEC = {
    "model": {"name": "org/model", "revision": "abc"},
    "dataset": {"task": {"path": "bundled:support-tickets"}},
    "regression": {"suite": {"path": "suites/mine"}},
}


def spec(**patch) -> FineTuneJobSpec:
    document = json.loads(json.dumps(SPEC))
    for dotted, value in patch.items():
        node = document
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return FineTuneJobSpec.model_validate(document)


def test_spec_key_is_pure_and_tracks_what_the_spec_names():
    base = spec_cache_key(spec())
    assert base == spec_cache_key(spec()) and base.startswith("s-")
    # what does not change the baseline does not change the key
    assert spec_cache_key(spec(**{"training.epochs": 9, "method.type": "full"})) == base
    assert spec_cache_key(spec(**{"regression.thresholds": {"maxCategoryDrop": 0.2}})) == base
    # what does, does
    changed = {
        spec_cache_key(spec(**{"model.revision": "def"})),
        spec_cache_key(spec(**{"model.name": "org/other"})),
        spec_cache_key(spec(**{"regression.suite": {"path": "suites/other"}})),
        spec_cache_key(spec(**{"regression.limit": 10})),
        spec_cache_key(spec(), evaluator_version="older"),
        spec_cache_key(spec(**{"model.pvc": {"claimName": "models"}})),
        # the prompt format: a chat template in the spec, or chat data (ChatML for a template-less model)
        spec_cache_key(spec(**{"dataset.chatTemplate": "{{ messages }}"})),
        spec_cache_key(spec(**{"dataset.format": "chat"})),
        # the job's own task: its data is scored (held out) and teaches the format detector
        spec_cache_key(spec(**{"dataset.task": {"path": "data/other-task.jsonl"}})),
        spec_cache_key(spec(**{"regression.task": {"scorer": "Similarity"}})),
        spec_cache_key(spec(**{"regression.formatLeak": {"detector": "Learned"}})),
    }
    assert base not in changed and len(changed) == 11
    assert weights_cache_key("m", "v", "d", None) != weights_cache_key("m", "v", "d", None, prompt={"format": "chat"})
    # the mount mode of a volume is not content
    assert spec_cache_key(spec(**{"model.pvc": {"claimName": "models", "readOnly": False}})) == spec_cache_key(
        spec(**{"model.pvc": {"claimName": "models"}})
    )


def test_weights_key_covers_every_component():
    base = weights_cache_key("m", "sha256:1", "sha256:s", None)
    variants = [
        weights_cache_key("m2", "sha256:1", "sha256:s", None),
        weights_cache_key("m", "sha256:2", "sha256:s", None),
        weights_cache_key("m", "sha256:1", "sha256:t", None),
        weights_cache_key("m", "sha256:1", "sha256:s", 5),
        weights_cache_key("m", "sha256:1", "sha256:s", None, evaluator_version="9"),
    ]
    assert base.startswith("w-") and base not in variants and len(set(variants)) == 5


def test_directory_digest_follows_content(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 100)
    (tmp_path / "README.md").write_text("hello")
    first = directory_digest(tmp_path)
    (tmp_path / "README.md").write_text("reworded")  # prose does not count
    assert directory_digest(tmp_path) == first
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    assert directory_digest(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        directory_digest(tmp_path / "empty-nothing")


def test_cache_hit_miss_and_suite_digest_check(tmp_path):
    cache = BaselineCache(tmp_path / "cache")
    key_w, key_s = weights_cache_key("m", "v", "sha256:s", None), spec_cache_key(spec())
    assert cache.get(key_w) is None  # miss on an empty cache
    document = {"suite": "mini", "digest": "sha256:s", "items": [{"task": "t", "id": "1"}], "tasks": {"t": "format"}}
    written = cache.put([key_w, key_s], document, model="m")
    assert [p.name for p in written] == [f"{key_w}.json", f"{key_s}.json"]
    hit = cache.get(key_s, suite_digest="sha256:s")
    assert hit is not None and hit["items"] == document["items"] and hit["cacheKeys"] == [key_w, key_s]
    assert cache.get(key_s, suite_digest="sha256:other") is None  # same name, other suite content
    assert cache.get(weights_cache_key("m", "v2", "sha256:s", None)) is None
    # a corrupt entry is a miss, not a crash
    cache.path(key_w).write_text("{not json")
    assert cache.get(key_w) is None
    assert not list(cache.directory.glob("*.tmp"))


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FORGETLESS_CACHE_DIR", str(tmp_path / "x"))
    assert cache_dir() == tmp_path / "x"
    assert BaselineCache().directory == tmp_path / "x"
    monkeypatch.delenv("FORGETLESS_CACHE_DIR")
    assert cache_dir() == Path("~/.cache/forgetless/baselines").expanduser()


def test_keys_are_validated():
    with pytest.raises(ValueError, match="not a baseline cache key"):
        BaselineCache(Path("/tmp")).path("../../etc/passwd")


def test_a_model_directory_is_hashed_once_per_process_until_its_files_change(tmp_path, monkeypatch):
    """The baseline stage keys the baseline and the self-rehearsal caches on the same model version."""
    from forgetless.api.schema import ModelSpec
    from forgetless_trainer.evaluation import runner

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    calls = []
    real = runner.directory_digest
    monkeypatch.setattr(runner, "directory_digest", lambda path: calls.append(path) or real(path))
    spec = ModelSpec(name=str(tmp_path))
    first = runner.model_identity(spec)
    assert runner.model_identity(spec) == first and len(calls) == 1
    (tmp_path / "model.safetensors").write_bytes(b"other weights")
    assert runner.model_identity(spec) != first and len(calls) == 2
