"""Checkpoints and resume: a run interrupted after a checkpoint and restarted ends with exactly the
weights of an uninterrupted run (weights, optimizer, scheduler, data position and RNG restored)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from forgetless_trainer.training import checkpoint  # noqa: E402
from forgetless_trainer.training.loop import train  # noqa: E402
from tests.component.test_train_stage import make_job, trainable  # noqa: E402


class Crash(RuntimeError):
    pass


@pytest.mark.parametrize(
    "spec",
    [
        # LoRA with dropout (RNG matters), ZeRO-2, accumulation, EWC and mixing, crossing an epoch boundary
        {"method": {"lora": {"r": 4, "dropout": 0.2}}, "deepspeed": {"zeroStage": 2},
         "training": {"epochs": 2, "gradientAccumulationSteps": 2}, "mitigation": {"ewc": {"fisherSamples": 8}}},
        # full fine-tuning without ZeRO, linear schedule
        {"method": {"type": "full"}, "deepspeed": {"zeroStage": 0},
         "training": {"epochs": 2, "lrScheduler": "linear", "learningRate": 1e-3}},
    ],
    ids=["lora-zero2-ewc", "full-zero0"],
)
def test_resumed_run_equals_uninterrupted_run(tmp_path, manifest, tiny_model_dir, spec):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", **spec)
    straight = train(job, tmp_path / "straight")
    expected = trainable(straight.model)
    total = straight.summary["steps"]
    crash_at = 6 if total > 8 else total - 1  # after the checkpoint at step 4: steps 5-6 are lost and redone

    def crash(step: int) -> None:
        if step == crash_at:
            raise Crash(f"killed at step {step}")

    with pytest.raises(Crash):
        train(job, tmp_path / "interrupted", after_step=crash)
    checkpoints = tmp_path / "interrupted" / "train" / "checkpoints"
    assert checkpoint.latest(checkpoints)[0] == 4
    assert not (tmp_path / "interrupted" / "train" / "output").exists()

    resumed = train(job, tmp_path / "interrupted")
    assert resumed.summary["resumedFromStep"] == 4
    assert resumed.summary["steps"] == total and resumed.summary["finalLoss"] == straight.summary["finalLoss"]
    # the general KL's base is the untouched model, not the checkpoint the resume loads (full: cached before it)
    assert resumed.summary["generalKL"] == straight.summary["generalKL"] > 0
    history = resumed.summary["generalKLHistory"]
    assert history[0] == [0, 0.0] and [s for s, _ in history].count(0) == 1
    got = trainable(resumed.model)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    assert any(not torch.equal(expected[n], v) for n, v in trainable(job_start_model(job)).items() if n in expected)


def job_start_model(job):
    """The model before training, to show training moved the weights the test compares."""
    from forgetless_trainer.methods import method_for
    from forgetless_trainer.mitigations.base import TrainContext
    from forgetless_trainer.modeling import load_model_and_tokenizer

    torch.manual_seed(job.spec.training.seed)
    model, _ = load_model_and_tokenizer(job.spec.model)
    return method_for(job.spec).configure_model(model, TrainContext(job=job, workdir=None))


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    folder = tmp_path / "checkpoints"
    (folder / "step-4").mkdir(parents=True)
    (folder / "step-4" / checkpoint.MARKER).write_text("4\n")
    (folder / "step-8").mkdir()  # no marker: a crash while renaming/writing
    (folder / ".tmp-step-12" / "step-12").mkdir(parents=True)
    assert checkpoint.latest(folder) == (4, folder / "step-4")
    assert checkpoint.latest(tmp_path / "none") is None


def test_a_finished_run_restarted_rewrites_its_output_without_training(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"maxSteps": 3})
    first = train(job, tmp_path / "work")
    expected = trainable(first.model)
    import shutil

    shutil.rmtree(tmp_path / "work" / "train" / "output")  # e.g. the pod died before the summary was reported
    again = train(job, tmp_path / "work")
    assert again.summary["steps"] == 3 and again.summary["resumedFromStep"] == 3
    assert again.summary["stoppedReason"] == "max_steps"
    assert (tmp_path / "work" / "train" / "output" / "adapter_config.json").is_file()
    assert all(torch.equal(v, expected[n]) for n, v in trainable(again.model).items())


def _train_until_killed_at_step_9(job, workdir) -> None:
    """Train with checkpoints at steps 4 and 8, killed after step 9."""
    def crash(step: int) -> None:
        if step == 9:
            raise Crash(f"killed at step {step}")

    with pytest.raises(Crash):
        train(job, workdir, after_step=crash)


def test_a_truncated_shard_is_skipped_and_training_resumes_from_the_last_intact_checkpoint(
        tmp_path, manifest, tiny_model_dir, capsys):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"maxSteps": 10, "checkpointIntervalSteps": 4})
    straight = train(job, tmp_path / "straight")
    workdir = tmp_path / "work"

    _train_until_killed_at_step_9(job, workdir)
    checkpoints = workdir / "train" / "checkpoints"
    assert [n for n, _ in checkpoint.complete_checkpoints(checkpoints)] == [4, 8]
    newest = checkpoints / "step-8"
    shard = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # the volume filled up mid-write
    capsys.readouterr()

    resumed = train(job, workdir)
    err = capsys.readouterr().err
    assert "skipping checkpoint step-8" in err and shard.name in err and "bytes when written" in err
    assert resumed.summary["resumedFromStep"] == 4 and resumed.summary["steps"] == 10
    assert resumed.summary["finalLoss"] == straight.summary["finalLoss"]  # redone from step 4: the same run
    # step 8 was written again by the resumed run, intact; the damaged one was set aside, then pruned
    assert checkpoint.damage(newest) is None and not list(checkpoints.glob("damaged-*"))
    assert all(torch.equal(v, trainable(straight.model)[n]) for n, v in trainable(resumed.model).items())


def test_an_unreadable_checkpoint_is_set_aside_so_the_retry_resumes_from_the_one_before(
        tmp_path, manifest, tiny_model_dir):
    from forgetless.errors import StageError

    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"maxSteps": 10, "checkpointIntervalSteps": 4})
    workdir = tmp_path / "work"

    _train_until_killed_at_step_9(job, workdir)
    checkpoints = workdir / "train" / "checkpoints"
    shard = max(((checkpoints / "step-8").rglob("*.pt")), key=lambda p: p.stat().st_size)
    shard.write_bytes(b"\0" * shard.stat().st_size)  # same size, garbage content: the size check cannot see it
    with pytest.raises(StageError, match="checkpoint step-8 could not be loaded.*moved aside"):
        train(job, workdir)
    assert (checkpoints / "damaged-step-8").is_dir() and not (checkpoints / "step-8").exists()
    retried = train(job, workdir)  # the pod's retry
    assert retried.summary["resumedFromStep"] == 4 and retried.summary["steps"] == 10
