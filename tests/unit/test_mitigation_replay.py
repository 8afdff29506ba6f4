"""Replay: the reservoir buffer, how earlier jobs' buffers are found, and the replay share of an epoch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from forgetless.api.schema import ReplaySource, parse_job
from forgetless_trainer import data as D
from forgetless_trainer.mitigations.base import TrainContext, find_job_artifact
from forgetless_trainer.mitigations.replay import Replay, read_buffer, reservoir, write_buffer
from forgetless.errors import StageError


def items(n: int, tag: str = "a") -> list[D.Example]:
    return [D.Example(f"{tag}{i}", "r", source=tag) for i in range(n)]


def test_reservoir_keeps_size_order_and_is_seeded():
    stream = items(1000)
    kept = reservoir(stream, 50, seed=1)
    assert len(kept) == 50 and len(set(kept)) == 50
    assert kept == sorted(kept, key=stream.index)
    assert kept == reservoir(stream, 50, seed=1) != reservoir(stream, 50, seed=2)
    assert reservoir(items(10), 50, seed=1) == items(10)


def test_reservoir_is_uniform_over_the_stream():
    hits = Counter()
    stream = list(range(100))
    for seed in range(400):
        hits.update(reservoir(stream, 10, seed))
    # each item is kept with probability 1/10 → expected 40 hits in 400 runs; first and last halves alike
    first, last = sum(hits[i] for i in range(50)), sum(hits[i] for i in range(50, 100))
    assert abs(first - last) < 0.15 * (first + last)
    assert min(hits.values()) > 15 and max(hits.values()) < 70


def test_buffer_round_trip_keeps_the_origin(tmp_path):
    path = tmp_path / "replay_buffer.jsonl"
    write_buffer(path, [D.Example("p", "r", source="job-a"), D.Example("", "t", "text", "job-b")])
    assert read_buffer(path) == [D.Example("p", "r", source="job-a"), D.Example("", "t", "text", "job-b")]


def ctx_for(workdir: Path, manifest, replay=None) -> TrainContext:
    spec = {"mitigation": {"replay": replay or {}}}
    return TrainContext(job=parse_job(manifest(metadata={"name": "second"}, spec=spec)), workdir=workdir, base_dir=workdir.parent)


def test_sources_resolve_work_dir_output_dir_file_and_sibling_job(tmp_path, manifest):
    buffer = tmp_path / "first" / "train" / "replay_buffer.jsonl"
    buffer.parent.mkdir(parents=True)
    (buffer.parent / "output").mkdir()
    write_buffer(buffer, items(3))
    ctx = ctx_for(tmp_path / "second", manifest)
    for source in (
        ReplaySource(fineTuneJob="first"),
        ReplaySource(path=str(tmp_path / "first")),
        ReplaySource(path=str(tmp_path / "first" / "train")),
        ReplaySource(path=str(tmp_path / "first" / "train" / "output")),
        ReplaySource(path=str(buffer)),
        ReplaySource(path="first"),  # relative to the manifest's directory
    ):
        assert find_job_artifact(source, ctx, "replay_buffer.jsonl", "src") == buffer
    with pytest.raises(StageError, match=r"src: no replay_buffer.jsonl for fineTuneJob 'zzz' \(looked in its work dir .*zzz\)"):
        find_job_artifact(ReplaySource(fineTuneJob="zzz"), ctx, "replay_buffer.jsonl", "src")


def test_replay_share_comes_from_the_named_buffers(tmp_path, manifest):
    for name, n in (("a", 5), ("b", 7)):
        path = tmp_path / name / "train" / "replay_buffer.jsonl"
        path.parent.mkdir(parents=True)
        write_buffer(path, items(n, name))
    ctx = ctx_for(tmp_path / "second", manifest, {"fraction": 0.3, "sources": [{"fineTuneJob": "a"}, {"path": str(tmp_path / "b")}]})
    replay = Replay()
    parts = replay.mix_parts(ctx)
    assert [p.name for p in parts] == ["replay"] and len(parts[0].examples) == 12
    epoch = D.build_epoch(items(28, "task"), parts, 0, seed=0)
    counts = Counter(e.source for e in epoch)
    assert counts["a"] + counts["b"] == D.round_half_up(0.3 * len(epoch)) == 12
    assert replay.summary()["replayExamples"] == 12
