#!/usr/bin/env python3
"""Operator scale: N FineTuneJobs against the in-memory fake Kubernetes API, forgetless next to the floor.

Starts the fake API in this process and `forgetless operator --standalone` as a subprocess (the
real CLI, kopf and handlers), creates N FineTuneJobs (in one burst, or at --rate per second),
and measures for each the time from its creation to the POST of its first child Job
(`<job>-baseline`), plus the operator's resident memory (VmRSS now, VmHWM peak) once every job
has its child. The same burst goes, back to back, to the floor (`benchmarks/floor_operator.py`: a
minimal kopf operator that creates one Job per FineTuneJob and nothing else), and the ratios are
printed with the requests per job. Goals at N=500: the last job's first child ≤ 1.3× the floor's,
p99 ≤ 1.2×, creates ≤ 1.3×, RSS ≤ 250 MB. The fake API answers in-process, so it shows the
operator's own cost, not a real API server's saturation.

Usage: python benchmarks/operator_scale.py [--jobs 50 500] [--rate 0] [--operators floor,forgetless] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("core", "operator", ""):  # "" = the repository root, for tests.support
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

from tests.support.fakeapi import FakeApi, free_port, kubeconfig, serve  # noqa: E402

NS = "bench"



def memory_mb(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


async def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 60.0, path: str = "/readyz") -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {proc.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}{path}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the operator did not become ready")


def operator_command(which: str, port: int) -> list[str]:
    if which == "floor":  # benchmarks/floor_operator.py: one Job per FineTuneJob, nothing else
        return [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", NS, "--liveness",
                f"http://127.0.0.1:{port}/healthz", str(ROOT / "benchmarks" / "floor_operator.py")]
    return [sys.executable, "-m", "forgetless_cli", "operator", "--namespace", NS, "--standalone",
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--resync-seconds", "60"]


async def run_once(n: int, rate: float, workdir: Path, which: str = "forgetless") -> dict:
    api = FakeApi(namespaces=(NS,))
    runner, url = await serve(api)
    config = workdir / f"kubeconfig-{n}"
    config.write_text(json.dumps(kubeconfig(url, NS)))
    api.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "outputs", "namespace": NS},
                "spec": {}})
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(config), "PYTHONPATH": f"{ROOT / 'core'}:{ROOT / 'operator'}:{ROOT / 'cli'}"}
    proc = subprocess.Popen(operator_command(which, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(workdir / f"operator-{which}-{n}.log", "w"))
    try:
        await wait_ready(port, proc, path="/healthz" if which == "floor" else "/readyz")
        await asyncio.sleep(0.5)
        idle = memory_mb(proc.pid)
        cpu_before, own_before = cpu_seconds(proc.pid), time.process_time()
        created: dict[str, float] = {}
        start = time.monotonic()
        for i in range(n):
            name = f"job-{i:04d}"
            created[name] = time.monotonic()
            api.create({
                "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}},
                         "output": {"pvc": {"claimName": "outputs", "readOnly": False}}},
            })
            if rate > 0:
                await asyncio.sleep(max(0.0, start + (i + 1) / rate - time.monotonic()))
            elif i % 25 == 24:
                await asyncio.sleep(0)  # let the server breathe between chunks of the burst
        first_child: dict[str, float] = {}
        deadline = time.monotonic() + 600
        seen = 0
        while len(first_child) < n and time.monotonic() < deadline:
            for request in api.requests[seen:]:
                if request.method == "POST" and request.path.endswith("/jobs"):
                    job = request.body["metadata"]["name"].rsplit("-", 1)[0]
                    first_child.setdefault(job, request.at)
            seen = len(api.requests)
            await asyncio.sleep(0.05)
        total = time.monotonic() - start
        operator_cpu, fake_cpu = cpu_seconds(proc.pid) - cpu_before, time.process_time() - own_before
        await asyncio.sleep(1.0)
        loaded = memory_mb(proc.pid)
        latencies = [first_child[name] - created[name] for name in created if name in first_child]
        duplicates = len([r for r in api.requests if r.method == "POST" and r.path.endswith("/jobs")]) - len(first_child)
        create_done = max(created.values()) - start
        return {
            "operator": which,
            "jobs": n,
            "creates_s": round(create_done, 2),
            "requests_per_job": round(len(api.requests) / n, 2),
            "rate_per_second": rate or "burst",
            "with_child": len(latencies),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "all_children_after_s": round(total, 2),
            "duplicate_job_posts": duplicates,
            "api_requests": len(api.requests),
            "operator_cpu_s": round(operator_cpu, 2),
            "fake_api_cpu_s": round(fake_cpu, 2),
            "rss_idle_mb": round(idle["VmRSS"], 1),
            "rss_mb": round(loaded["VmRSS"], 1),
            "rss_peak_mb": round(loaded["VmHWM"], 1),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rate", type=float, default=0.0, help="FineTuneJobs created per second (0: one burst)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--operators", default="floor,forgetless",
                        help="which to run, back to back: floor (benchmarks/floor_operator.py), forgetless")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        for n in args.jobs:
            pair = {}
            for which in args.operators.split(","):
                result = asyncio.run(run_once(n, args.rate, Path(tmp), which))
                print(json.dumps(result), flush=True)
                results.append(result)
                pair[which] = result
            if {"floor", "forgetless"} <= pair.keys():
                floor, ours = pair["floor"], pair["forgetless"]
                ratio = lambda key: ours[key] / floor[key] if floor.get(key) else float("nan")  # noqa: E731
                print(f"N={n}: forgetless / floor: last first child {ratio('all_children_after_s'):.2f}x (goal <= 1.3), "
                      f"p99 {ratio('p99_s'):.2f}x (<= 1.2), creates {ratio('creates_s'):.2f}x (<= 1.3), "
                      f"requests per job {ours['requests_per_job']} vs {floor['requests_per_job']}, "
                      f"RSS {ours['rss_mb']} MB vs {floor['rss_mb']} MB (<= 250)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
