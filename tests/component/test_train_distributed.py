"""Multi-process training on CPU (gloo): two ranks under torchrun, and two "pods" of an Indexed Job
(rank from JOB_COMPLETION_INDEX), end with identical weights; rank/env handling.

The two-process runs take ~11 s each with one thread per process (25-28 s on a host busy with
other work), so they are not marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from forgetless_trainer.stages import StageError  # noqa: E402
from forgetless_trainer.training import distributed  # noqa: E402
from tests.component.test_train_stage import DIST_ENV, REPO, clean_env, make_job  # noqa: E402

WORKER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from forgetless.api.manifests import load_job
    from forgetless_trainer.training.loop import train

    job_path, workdir = sys.argv[1], sys.argv[2]
    result = train(load_job(Path(job_path)), Path(workdir))
    rank = int(os.environ["RANK"])
    assert not torch.distributed.is_initialized(), "train() must leave no process group behind"
    weights = {n: p.detach().clone() for n, p in result.model.named_parameters() if p.requires_grad}
    torch.save(weights, os.path.join(workdir, f"rank{rank}.pt"))
    json.dump(result.summary, open(os.path.join(workdir, f"summary{rank}.json"), "w"))
    """
)


@pytest.mark.parametrize("launcher", ["torchrun", "indexed-job"])
def test_two_ranks_end_with_identical_weights(tmp_path, manifest, tiny_model_dir, launcher):
    job = make_job(
        manifest, tiny_model_dir, tmp_path / "data",
        method={"type": "full"}, deepspeed={"zeroStage": 2},
        training={"maxSteps": 4, "learningRate": 1e-3, "checkpointIntervalSteps": 2},
        mitigation={"ewc": {"fisherSamples": 8}},
        resources={"workers": 2}, output={"pvc": {"claimName": "shared"}},
    )
    job_path = tmp_path / "job.json"
    job_path.write_text(json.dumps(job.model_dump(by_alias=True, exclude_none=True, mode="json")))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    workdir = tmp_path / "work"
    workdir.mkdir()
    port = str(distributed.free_port())
    if launcher == "torchrun":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
               str(worker), str(job_path), str(workdir)]
        procs = [subprocess.Popen(cmd, cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)]
    else:  # two pods: only JOB_COMPLETION_INDEX differs; WORLD_SIZE comes from spec.resources.workers
        procs = [
            subprocess.Popen([sys.executable, str(worker), str(job_path), str(workdir)], cwd=REPO,
                             env=clean_env(JOB_COMPLETION_INDEX=str(i), MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(2)
        ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(o[-3000:] for o in outputs)

    rank0, rank1 = (torch.load(workdir / f"rank{r}.pt") for r in range(2))
    assert rank0.keys() == rank1.keys() and len(rank0) > 0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    summary = json.loads((workdir / "summary0.json").read_text())
    assert summary["worldSize"] == 2 and summary["steps"] == 4
    # each rank reports a fingerprint of its own weights (its pod's termination message): they agree
    other = json.loads((workdir / "summary1.json").read_text())
    assert (summary["rank"], other["rank"]) == (0, 1)
    assert summary["weightsFingerprint"] == other["weightsFingerprint"]
    assert summary["weightsFingerprint"].startswith("sha256:")
    # 36 train + 9 general = 45 examples → 23 per rank → 6 micro-batches of ≤ 4 per rank per epoch
    assert summary["epochSize"] == 45 and summary["totalSteps"] == 4
    assert (workdir / "train" / "output" / "config.json").is_file()
    assert sorted(p.name for p in (workdir / "train" / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert {p.name for p in (workdir / "train" / "checkpoints" / "step-4").iterdir()} >= {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    }
    base = torch.load(workdir / "rank0.pt")  # and training moved them
    from forgetless_trainer.modeling import load_model_and_tokenizer

    start, _ = load_model_and_tokenizer(job.spec.model)
    assert any(not torch.equal(base[n], p) for n, p in start.named_parameters())


@pytest.fixture
def no_dist_env(monkeypatch):
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_gets_defaults_and_a_free_port(no_dist_env):
    import os

    assert distributed.setup_env() == distributed.Ranks(0, 1, 0)
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and 1024 < int(os.environ["MASTER_PORT"]) < 65536


def test_indexed_job_rank_comes_from_the_completion_index(no_dist_env):
    no_dist_env.setenv("JOB_COMPLETION_INDEX", "3")
    no_dist_env.setenv("MASTER_PORT", "29500")
    assert distributed.setup_env(workers=4) == distributed.Ranks(3, 4, 0)


def test_torchrun_env_wins_over_the_completion_index(no_dist_env):
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "JOB_COMPLETION_INDEX": "0", "MASTER_PORT": "1"}.items():
        no_dist_env.setenv(name, value)
    assert distributed.setup_env(workers=8) == distributed.Ranks(1, 2, 1)


@pytest.mark.parametrize(
    "env, needle",
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "outside 0..WORLD_SIZE-1"),
        ({"RANK": "x"}, "env RANK='x' is not an integer"),
        ({"RANK": "1", "WORLD_SIZE": "2"}, "MASTER_PORT must be set"),
    ],
)
def test_bad_distributed_env_fails_clearly(no_dist_env, env, needle):
    for name, value in env.items():
        no_dist_env.setenv(name, value)
    with pytest.raises(StageError, match=needle):
        distributed.setup_env()


def test_deepspeed_config_from_the_spec(manifest):
    from forgetless.api.schema import parse_job
    from forgetless_trainer.training.config import deepspeed_config, lr_lambda

    spec = parse_job(manifest(spec={
        "training": {"batchSize": 8, "gradientAccumulationSteps": 4, "maxGradNorm": 0.5, "precision": "bf16"},
        "deepspeed": {"zeroStage": 3, "offloadOptimizer": True, "offloadParams": True},
    })).spec
    cfg = deepspeed_config(spec, world_size=3)
    assert cfg["train_batch_size"] == 96 and cfg["gradient_clipping"] == 0.5 and cfg["bf16"] == {"enabled": True}
    assert cfg["zero_optimization"] == {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": False},
                                        "offload_param": {"device": "cpu", "pin_memory": False}}
    cosine = lr_lambda("cosine", total_steps=10, warmup=2)
    assert [round(cosine(s), 4) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    assert lr_lambda("linear", 10, 0)(5) == 0.5 and lr_lambda("constant", 10, 5)(9) == 1.0
    with pytest.raises(ValueError, match="offloadOptimizer needs zeroStage 1, 2 or 3"):  # the schema refuses it
        parse_job(manifest(spec={"deepspeed": {"zeroStage": 0, "offloadOptimizer": True}}))


RENDEZVOUS = textwrap.dedent(
    """
    import sys, torch
    from forgetless.errors import StageError
    from forgetless_trainer.training import distributed
    try:
        distributed.init_process_group(distributed.Ranks(rank=int(sys.argv[1]), world_size=2, local_rank=0))
    except StageError as exc:
        print(exc)
        sys.exit(4 if not torch.distributed.is_initialized() else 5)
    sys.exit(0)
    """
)


@pytest.mark.parametrize("rank", [0, 1])
def test_a_missing_peer_fails_the_rendezvous_fast_and_says_so(rank):
    """A lone rank (its peer's pod failed or was never scheduled) gives up after the rendezvous
    timeout with a message naming the problem, instead of torch's 30-minute store timeout.
    (A fresh process: an in-process test may already hold a single-rank process group.)"""
    import time

    port = distributed.free_port()
    env = clean_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **{distributed.RENDEZVOUS_TIMEOUT_ENV: "2"})
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", RENDEZVOUS, str(rank)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 4, done.stdout + done.stderr[-2000:]
    assert time.monotonic() - began < 60
    assert "a peer is missing" in done.stdout
    assert f"rank {rank} of 2 waited 2 s at 127.0.0.1:{port}" in done.stdout
