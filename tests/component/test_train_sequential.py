"""Sequential fine-tuning: a later job replays an earlier job's buffer, and online EWC chains the
earlier job's Fisher and anchor; a huge λ keeps full fine-tuning at θ*."""

from __future__ import annotations

import json
from collections import Counter

import pytest

torch = pytest.importorskip("torch")

from forgetless_trainer import data as D  # noqa: E402
from forgetless_trainer.training import loop  # noqa: E402
from forgetless_trainer.training.loop import train  # noqa: E402
from tests.component.test_train_stage import make_job, trainable, write_data  # noqa: E402


def test_replay_draws_from_the_earlier_jobs_buffer(tmp_path, manifest, tiny_model_dir, monkeypatch):
    jobs = tmp_path / "jobs"
    first = make_job(manifest, tiny_model_dir, tmp_path / "data-a", name="job-a", mitigation={"replay": {"bufferSize": 10}})
    summary_a = train(first, jobs / "job-a").summary
    buffer_a = jobs / "job-a" / "train" / "replay_buffer.jsonl"
    records = [json.loads(line) for line in buffer_a.read_text().splitlines()]
    assert len(records) == summary_a["replayBufferSize"] == 10 and {r["source"] for r in records} == {"job-a"}
    task_a = {(json.loads(l)["prompt"]) for l in (tmp_path / "data-a" / "task.jsonl").read_text().splitlines()}
    assert {r["prompt"] for r in records} <= task_a

    epochs: list[list[D.Example]] = []
    real_build = D.build_epoch

    def recording(*args, **kwargs):
        epochs.append(real_build(*args, **kwargs))
        return epochs[-1]

    monkeypatch.setattr(loop.D, "build_epoch", recording)
    write_data(tmp_path / "data-b", seed=1)
    second = make_job(manifest, tiny_model_dir, tmp_path / "data-b", name="job-b",
                      mitigation={"replay": {"bufferSize": 50, "fraction": 0.25, "sources": [{"fineTuneJob": "job-a"}]}})
    summary_b = train(second, jobs / "job-b").summary
    assert summary_b["replaySources"] == [str(buffer_a)] and summary_b["replayExamples"] == 10
    trained_on = Counter(e.source for e in epochs[0])
    size = len(epochs[0])
    assert trained_on["job-a"] == D.round_half_up(0.25 * size) == summary_b["epochComposition"]["replay"]
    assert {e.prompt for e in epochs[0] if e.source == "job-a"} == {r["prompt"] for r in records}
    buffer_b = [json.loads(l) for l in (jobs / "job-b" / "train" / "replay_buffer.jsonl").read_text().splitlines()]
    assert len(buffer_b) == 46 and Counter(r["source"] for r in buffer_b) == {"job-a": 10, "job-b": 36}


def test_online_ewc_chains_fisher_and_anchor_across_jobs(tmp_path, manifest, tiny_model_dir):
    jobs = tmp_path / "jobs"
    ewc = {"fisherSamples": 16, "lambda": 100.0, "online": True}
    first = make_job(manifest, tiny_model_dir, tmp_path / "data", name="job-a", method={"type": "full"},
                     training={"maxSteps": 3, "learningRate": 1e-3}, mitigation={"ewc": ewc})
    result_a = train(first, jobs / "job-a")
    state_a = torch.load(jobs / "job-a" / "train" / "ewc_state.pt", weights_only=True)
    final_a = trainable(result_a.model)
    assert state_a["method"] == "full" and set(state_a["anchor"]) == set(final_a)
    assert all(torch.equal(state_a["anchor"][n], final_a[n]) for n in final_a)  # anchor = final weights

    second = make_job(manifest, tiny_model_dir, tmp_path / "data", name="job-b", method={"type": "full"},
                      training={"maxSteps": 3, "learningRate": 1e-3},
                      mitigation={"ewc": {**ewc, "decay": 0.5, "previous": {"fineTuneJob": "job-a"}}})
    trainer = loop.Trainer(second, jobs / "job-b")
    trainer.setup()
    ewc_b = next(m for m in trainer.mitigations if m.name == "ewc")
    fisher_b, anchor_b = ewc_b.fisher.as_dict(), ewc_b.anchor.as_dict()
    for name, prev in state_a["fisher"].items():
        assert torch.all(fisher_b[name] >= 0.5 * prev - 1e-12)  # F = γ·F_prev + F_new with F_new ≥ 0
        assert torch.equal(anchor_b[name], state_a["anchor"][name])  # anchor = job A's final weights
    assert not all(torch.allclose(fisher_b[n], 0.5 * p) for n, p in state_a["fisher"].items())  # F_new was added
    summary_b = trainer.run().summary
    assert summary_b["ewcPrevious"].endswith("job-a/train/ewc_state.pt") and summary_b["ewcPenalty"] > 0


def test_huge_lambda_keeps_full_fine_tuning_at_the_anchor(tmp_path, manifest, tiny_model_dir):
    def run(lam: float | None):
        mitigation = {"dataMixing": {"generalFraction": 0.0}}
        if lam is not None:
            mitigation["ewc"] = {"fisherSamples": 32, "lambda": lam}
        job = make_job(manifest, tiny_model_dir, tmp_path / "data", method={"type": "full"}, deepspeed={"zeroStage": 1},
                       training={"maxSteps": 12, "learningRate": 1e-3, "warmupRatio": 0.0, "lrScheduler": "constant"},
                       mitigation=mitigation)
        trainer = loop.Trainer(job, tmp_path / f"work-{lam}")
        trainer.setup()
        start = trainable(trainer.model)
        trainer.run()
        end = trainable(trainer.model)
        ewc = next((m for m in trainer.mitigations if m.name == "ewc"), None)
        return {n: end[n] - start[n] for n in end}, ewc.fisher.as_dict() if ewc else None

    free, _ = run(None)
    pinned, fisher = run(1e9)

    def weighted(delta):  # Σ F(θ−θ*)²: the distance EWC measures
        return sum(float((fisher[n] * delta[n] ** 2).sum()) for n in delta)

    one_step = sum(float(f.sum()) for f in fisher.values()) * 1e-3**2  # Σ F·lr²: every parameter one Adam step away
    print(f"free {weighted(free):.3e} pinned {weighted(pinned):.3e} one step {one_step:.3e}")
    assert weighted(free) > 5 * one_step  # without EWC, training walks away from θ*
    assert weighted(pinned) < one_step  # with a huge λ it stays within about one step of θ*
    assert weighted(pinned) < weighted(free) / 50
