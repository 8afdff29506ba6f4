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

from forgetless_trainer.stages import StageError


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


def init_process_group() -> None:
    import deepspeed
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")


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
