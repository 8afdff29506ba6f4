"""Ranks and the process group, for one process, torchrun, and pods of an Indexed Job.

The usual env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) is read as torchrun sets
it. In a Kubernetes Indexed Job the pod's rank may only be in JOB_COMPLETION_INDEX: it is used
when RANK is absent (and LOCAL_RANK defaults to 0, one worker per pod). A single process with
nothing set gets RANK 0, WORLD_SIZE 1, MASTER_ADDR 127.0.0.1 and a free MASTER_PORT, because
DeepSpeed always builds a process group. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from forgetless.contract import RENDEZVOUS_TIMEOUT_ENV
from forgetless.errors import StageError


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _int_env(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise StageError(f"env {name}={value!r} is not an integer") from None


def setup_env(workers: int = 1) -> Ranks:
    """Fill in the missing distributed env vars (see the module docstring); returns the ranks.

    `workers` (spec.resources.workers) is the WORLD_SIZE fallback when only JOB_COMPLETION_INDEX is set.
    """
    env = os.environ
    if "RANK" not in env and "JOB_COMPLETION_INDEX" in env:
        env["RANK"] = env["JOB_COMPLETION_INDEX"]
        env.setdefault("WORLD_SIZE", str(workers))
    env.setdefault("RANK", "0")
    env.setdefault("WORLD_SIZE", "1")
    env.setdefault("LOCAL_RANK", "0")
    env.setdefault("MASTER_ADDR", "127.0.0.1")
    ranks = Ranks(_int_env("RANK"), _int_env("WORLD_SIZE"), _int_env("LOCAL_RANK"))
    if not 0 <= ranks.rank < ranks.world_size:
        raise StageError(f"env RANK={ranks.rank} is outside 0..WORLD_SIZE-1 (WORLD_SIZE={ranks.world_size})")
    if "MASTER_PORT" not in env:
        if ranks.world_size > 1:
            raise StageError("env MASTER_PORT must be set when WORLD_SIZE > 1 (all ranks must agree on it)")
        env["MASTER_PORT"] = str(free_port())
    return ranks


def device_for(local_rank: int):
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS = 180.0
"""How long the ranks wait for each other at start. torch's default is 30 min (TCPStore); a rank whose
peer is gone (its pod failed, or a lone retried pod) must fail soon, with a message that says so."""
COLLECTIVE_TIMEOUT_SECONDS = 1800.0
"""After the rendezvous: a collective may wait this long (a probe or a checkpoint on rank 0)."""


def rendezvous_timeout() -> float:
    value = os.environ.get(RENDEZVOUS_TIMEOUT_ENV)
    if not value:
        return DEFAULT_RENDEZVOUS_TIMEOUT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise StageError(f"env {RENDEZVOUS_TIMEOUT_ENV}={value!r} is not a number of seconds") from None
    if seconds <= 0:
        raise StageError(f"env {RENDEZVOUS_TIMEOUT_ENV}={value!r} must be > 0")
    return seconds


def init_process_group(ranks: Ranks | None = None) -> None:
    """Join the process group. With several ranks the rendezvous (a TCPStore on MASTER_ADDR:MASTER_PORT)
    waits at most `rendezvous_timeout()` and fails with a StageError naming the missing peer."""
    from datetime import timedelta

    import deepspeed
    import torch
    import torch.distributed as dist

    from forgetless_trainer import quiet

    quiet.quiet_deepspeed()  # DeepSpeed set its log level when imported
    if dist.is_initialized():
        return
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if ranks is not None and ranks.world_size > 1:
        host, port = os.environ["MASTER_ADDR"], _int_env("MASTER_PORT")
        seconds = rendezvous_timeout()
        try:
            store = dist.TCPStore(host, port, ranks.world_size, is_master=ranks.rank == 0,
                                  timeout=timedelta(seconds=seconds), wait_for_workers=True)
        except Exception as exc:  # DistStoreError / DistNetworkError / RuntimeError, by torch version
            waited_for = "the other ranks to connect" if ranks.rank == 0 else "rank 0 (the master)"
            raise StageError(
                f"rendezvous failed: rank {ranks.rank} of {ranks.world_size} waited {seconds:.0f} s at "
                f"{host}:{port} for {waited_for}; a peer is missing (its pod failed, was deleted or was not "
                f"scheduled). A multi-worker group restarts as a whole; this rank gives up "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from exc
        dist.init_process_group(backend, store=store, rank=ranks.rank, world_size=ranks.world_size,
                                timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_SECONDS))
    with quiet.library_stdout():  # DeepSpeed prints "… deepspeed_shm_comm_op built successfully" every time
        deepspeed.init_distributed(dist_backend=backend)


def shutdown() -> None:
    """End a multi-rank run cleanly: wait for every rank, then destroy the process group.

    Without it a rank that exits first can take its gloo/shm connections down while the others are
    still tearing down theirs, and a rank dies at interpreter exit with "terminate called without an
    active exception" (seen in CI, rarely) although training finished. A single-rank group is left
    alone: in-process callers (tests, benchmarks) train several times in one process.
    """
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any rank."""
    import torch
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def sum_all(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())
