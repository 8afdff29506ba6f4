"""How many CPU threads torch uses in this process, chosen once and said in one line.

torch's default is every core of the machine, which is wrong twice over: a process pinned to some
cores (taskset, a cgroup cpuset, a CI runner) oversubscribes them, and two processes that each take
all cores slow each other several-fold (OpenMP threads spinning against each other: measured ~7× on
2 cores). So a run takes the cores it may use (`os.sched_getaffinity`), and an explicit
`OMP_NUM_THREADS` (or `FORGETLESS_THREADS`) wins.

Idle OpenMP threads also sleep instead of spinning (`OMP_WAIT_POLICY=PASSIVE`, unless set): with
spinning threads, one other busy process on a 2-core machine made a 2-thread run ~15× slower
(150 LoRA steps of the bundled model: 400 s instead of 27 s; its evaluation 30× slower); with
passive threads the same run beside two busy processes took 90 s. It must be in the environment
before torch (libgomp) loads: `prepare_environment()` is the first thing the torch commands do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from forgetless.contract import THREADS_ENV


def prepare_environment(env: dict[str, str] | None = None) -> None:
    """Before torch is imported: idle OpenMP threads sleep (OMP_WAIT_POLICY=PASSIVE) unless set."""
    env = os.environ if env is None else env
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def choose(env: Mapping[str, str] | None = None, cpus: int | None = None) -> tuple[int, str]:
    """(threads, the reason in words): FORGETLESS_THREADS, else OMP_NUM_THREADS, else the usable CPUs."""
    env = os.environ if env is None else env
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = env.get(name, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                threads = 0
            if threads >= 1:
                return threads, f"from {name}"
            raise ValueError(f"{name}={value!r} is not a positive whole number of threads")
    cpus = usable_cpus() if cpus is None else cpus
    return cpus, f"the CPUs this process may use; set {THREADS_ENV} to choose"


def configure(env: Mapping[str, str] | None = None) -> str:
    """Set torch's thread count (and OMP_NUM_THREADS for child libraries); the one line to print."""
    threads, why = choose(env)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    import torch

    torch.set_num_threads(threads)
    return f"torch threads: {threads} ({why})"
