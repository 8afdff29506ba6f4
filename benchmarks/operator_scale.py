#!/usr/bin/env python3
"""Operator scale: N FineTuneJobs against the in-memory fake Kubernetes API (or a real API server), forgetless next to the floor.

Starts the fake API in this process and `forgetless operator --standalone` as a subprocess (the
real CLI, kopf and handlers), creates N FineTuneJobs (in one burst, or at --rate per second),
and measures for each the time from its creation to the POST of its first child Job
(`<job>-baseline`), plus the operator's resident memory (VmRSS now, VmHWM peak) once every job
has its child. The same burst goes, back to back, to the floor (`benchmarks/floor_operator.py`: a
minimal kopf operator that creates one Job per FineTuneJob and nothing else), and the ratios are
printed with the requests per job. Goals at N=500: the last job's first child ≤ 1.3× the floor's,
p99 ≤ 1.2×, creates ≤ 1.3×, RSS ≤ 250 MB. The fake API answers in-process, so it shows the
operator's own cost, not a real API server's saturation.

With --kubeconfig PATH the same comparison runs against a real API server (e.g. the project's test
control plane, ../shared/k8s/up DIR: kube-apiserver + kube-controller-manager, whose Job controller
creates a Pod per Job, so the operator sees the Pod events a cluster sends): the CRDs from crds/ are
applied, each operator gets a fresh namespace with a PVC `outputs`, the burst is created by
--threads client threads, each job's first child is its first batch/v1 Job ADDED event on a watch
(arrival time, from the start of the FineTuneJob's create request), and the requests are read from
the API server's own `apiserver_request_total` (GET /metrics) before and after, by verb+resource:
those of non-system clients (the operator; the benchmark's own creates subtracted) and, apart, the
kube-controller-manager's. "after" is taken once every Job has its Pod and the operator is quiet.
The namespace is deleted (and waited for) before the next operator runs.

Usage: python benchmarks/operator_scale.py [--jobs 50 500] [--rate 0] [--operators floor,forgetless] [--json out.json]
       python benchmarks/operator_scale.py --kubeconfig $KUBECONFIG --jobs 500 --threads 16 [--repeat 2]
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


OPERATOR_ROOT = ROOT  # --operator-root: the forgetless tree whose operator runs (e.g. an older commit's)
RESYNC_SECONDS = 60


def operator_command(which: str, port: int, namespace: str = NS) -> list[str]:
    if which == "floor":  # benchmarks/floor_operator.py: one Job per FineTuneJob, nothing else
        return [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace, "--liveness",
                f"http://127.0.0.1:{port}/healthz", str(ROOT / "benchmarks" / "floor_operator.py")]
    return [sys.executable, "-m", "forgetless_cli", "operator", "--namespace", namespace, "--standalone",
            "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--resync-seconds", str(RESYNC_SECONDS)]


def start_operator(which: str, namespace: str, config: Path, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    root = OPERATOR_ROOT
    env = {**os.environ, "KUBECONFIG": str(config), "PYTHONPATH": f"{root / 'core'}:{root / 'operator'}:{root / 'cli'}"}
    proc = subprocess.Popen(operator_command(which, port, namespace), env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))
    return proc, port


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_once(n: int, rate: float, workdir: Path, which: str = "forgetless") -> dict:
    api = FakeApi(namespaces=(NS,))
    runner, url = await serve(api)
    config = workdir / f"kubeconfig-{n}"
    config.write_text(json.dumps(kubeconfig(url, NS)))
    api.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "outputs", "namespace": NS},
                "spec": {}})
    proc, port = start_operator(which, NS, config, workdir / f"operator-{which}-{n}.log")
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
        stop(proc)
        await runner.cleanup()


# ---------------------------------------------------------------------------- a real API server

GOALS = "last first child <= 1.3x, p99 <= 1.2x, creates <= 1.3x the floor's, RSS <= 250 MB"
SYSTEM_CLIENTS = ("kube-controller-manager", "kube-apiserver", "kube-scheduler")


def server_requests(api_client) -> dict[tuple[str, str], dict[str, float]]:
    """apiserver_request_total summed by (verb, resource[/subresource]) -> {client class: count}:
    "system" (the control plane's own components, by the counter's system_client label) or "client"."""
    import re

    host = api_client.configuration.host.rstrip("/")
    response = api_client.call_api("GET", f"{host}/metrics", header_params=dict(api_client.default_headers))
    text = response.read().decode()
    out: dict[tuple[str, str], dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{"):line.rindex("}")]))
        if not labels.get("resource"):
            continue
        resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
        who = "system" if labels.get("system_client") in SYSTEM_CLIENTS else "client"
        bucket = out.setdefault((labels["verb"], resource), {})
        bucket[who] = bucket.get(who, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def request_delta(before: dict, after: dict, who: str) -> dict[str, float]:
    rows = {}
    for key in set(before) | set(after):
        value = after.get(key, {}).get(who, 0.0) - before.get(key, {}).get(who, 0.0)
        if value and key[0] != "WATCH":  # watches are counted when they end: not per job
            rows[f"{key[0]} {key[1]}"] = value
    return rows


def apply_crds(kubernetes) -> None:
    import yaml

    api = kubernetes.client.ApiextensionsV1Api()
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        try:
            body["metadata"]["resourceVersion"] = api.read_custom_resource_definition(name).metadata.resource_version
            api.replace_custom_resource_definition(name, body)
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            api.create_custom_resource_definition(body)
        deadline = time.monotonic() + 60
        while not any(c.type == "Established" and c.status == "True"
                      for c in api.read_custom_resource_definition(name).status.conditions or []):
            if time.monotonic() > deadline:
                raise RuntimeError(f"CRD {name} not Established")
            time.sleep(0.2)


def delete_namespace(kubernetes, namespace: str, timeout: float = 600) -> float:
    core = kubernetes.client.CoreV1Api()
    start = time.monotonic()
    try:
        core.delete_namespace(namespace)
    except kubernetes.client.ApiException as exc:
        if exc.status != 404:
            raise
    while time.monotonic() - start < timeout:
        try:
            core.read_namespace(namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return time.monotonic() - start
            raise
        time.sleep(1)
    raise RuntimeError(f"namespace {namespace} still there after {timeout:.0f} s")


def ftj_body(name: str, namespace: str) -> dict:
    return {"apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"name": "bundled:tiny-world"}, "dataset": {"task": {"path": "bundled:support-tickets"}},
                     "output": {"pvc": {"claimName": "outputs", "readOnly": False}}}}


def run_cluster(n: int, which: str, config: Path, threads: int, workdir: Path, tag: str, keep: bool = False) -> dict:
    """One burst of `n` FineTuneJobs against the real API server of `config`, `which` operator running."""
    import threading
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    import kubernetes

    kubernetes.config.load_kube_config(config_file=str(config))
    apply_crds(kubernetes)
    core, batch = kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()
    namespace = f"scale-{which}-{uuid.uuid4().hex[:5]}"
    core.create_namespace({"metadata": {"name": namespace}})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "outputs"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    proc, port = start_operator(which, namespace, config, workdir / f"operator-{which}-{n}-{tag}.log")
    first_child: dict[str, float] = {}
    job_adds = [0]
    own = {"LIST pods": 0, "LIST jobs": 0}  # the benchmark's own reads, subtracted from the counts
    stopping = threading.Event()

    def watch_jobs(resource_version: str) -> None:
        w = kubernetes.watch.Watch()
        while not stopping.is_set():
            try:
                for event in w.stream(batch.list_namespaced_job, namespace, resource_version=resource_version,
                                      timeout_seconds=5, _request_timeout=30):
                    obj = event["object"]
                    resource_version = obj.metadata.resource_version
                    if event["type"] == "ADDED":
                        job_adds[0] += 1
                        first_child.setdefault(obj.metadata.name.rsplit("-", 1)[0], time.monotonic())
            except kubernetes.client.ApiException as exc:  # 410 Gone: relist
                if exc.status != 410:
                    raise
                own["LIST jobs"] += 1
                resource_version = batch.list_namespaced_job(namespace).metadata.resource_version

    try:
        asyncio.run(wait_ready(port, proc, path="/healthz" if which == "floor" else "/readyz"))
        time.sleep(1.0)
        idle = memory_mb(proc.pid)
        before = server_requests(core.api_client)
        own["LIST jobs"] += 1
        watcher = threading.Thread(target=watch_jobs, daemon=True,
                                   args=(batch.list_namespaced_job(namespace).metadata.resource_version,))
        watcher.start()
        cpu_before = cpu_seconds(proc.pid)
        created: dict[str, float] = {}
        local = threading.local()

        def create(i: int) -> None:
            if not hasattr(local, "api"):
                local.api = kubernetes.client.CustomObjectsApi(kubernetes.client.ApiClient())
            name = f"job-{i:04d}"
            created[name] = time.monotonic()
            local.api.create_namespaced_custom_object("forgetless.dev", "v1alpha1", namespace, "finetunejobs",
                                                      ftj_body(name, namespace))

        start = time.monotonic()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(create, range(n)))
        create_done = time.monotonic() - start
        deadline = time.monotonic() + 600
        while len(first_child) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        total = max(first_child.values()) - start if first_child else float("nan")
        loaded = memory_mb(proc.pid)
        # settle: every Job has its Pod (the Job controller's QPS) and the operator's follow-ups are done
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            own["LIST pods"] += 1
            pods = core.list_namespaced_pod(namespace, _preload_content=False)
            if len(json.loads(pods.data).get("items") or []) >= len(first_child):
                break
            time.sleep(1)
        settle = time.monotonic() - start
        previous, quiet_since = None, time.monotonic()
        while time.monotonic() - quiet_since < 3 and time.monotonic() < deadline:
            now = request_delta(before, server_requests(core.api_client), "client")
            if now != previous:
                previous, quiet_since = now, time.monotonic()
            time.sleep(1)
        after = server_requests(core.api_client)
        operator_cpu = cpu_seconds(proc.pid) - cpu_before
        loaded_after = memory_mb(proc.pid)
        rows = request_delta(before, after, "client")
        rows["POST finetunejobs"] = rows.get("POST finetunejobs", 0) - n  # the benchmark's own creates
        for key, count in own.items():
            rows[key] = rows.get(key, 0) - count
        rows = {k: v for k, v in rows.items() if v}
        # the metrics reads themselves (resource "") are not in rows; the watch's relists are LISTs of jobs
        system = request_delta(before, after, "system")
        latencies = [first_child[name] - created[name] for name in created if name in first_child]
        return {
            "operator": which,
            "server": "real",
            "jobs": n,
            "threads": threads,
            "creates_s": round(create_done, 2),
            "with_child": len(latencies),
            "p50_s": round(statistics.median(latencies), 3) if latencies else None,
            "p99_s": round(percentile(latencies, 0.99), 3) if latencies else None,
            "max_s": round(max(latencies), 3) if latencies else None,
            "all_children_after_s": round(total, 2),
            "settled_after_s": round(settle, 1),
            "duplicate_job_adds": job_adds[0] - len(first_child),
            "requests_per_job": round(sum(rows.values()) / n, 2),
            "requests_per_job_by_verb": {k: round(v / n, 2) for k, v in sorted(rows.items())},
            "controller_manager_requests_per_job": round(sum(system.values()) / n, 2),
            "operator_cpu_s": round(operator_cpu, 2),
            "rss_idle_mb": round(idle["VmRSS"], 1),
            "rss_mb": round(max(loaded["VmRSS"], loaded_after["VmRSS"]), 1),
            "rss_peak_mb": round(loaded_after["VmHWM"], 1),
        }
    finally:
        stopping.set()
        stop(proc)
        if not keep:
            delete_namespace(kubernetes, namespace)


def compare(n: int, floor: dict, ours: dict) -> str:
    ratio = lambda key: ours[key] / floor[key] if floor.get(key) else float("nan")  # noqa: E731
    lines = [f"N={n}: forgetless / floor: last first child {ratio('all_children_after_s'):.2f}x (goal <= 1.3), "
             f"p99 {ratio('p99_s'):.2f}x (<= 1.2), creates {ratio('creates_s'):.2f}x (<= 1.3), "
             f"requests per job {ours['requests_per_job']} vs {floor['requests_per_job']}, "
             f"RSS {ours['rss_mb']} MB vs {floor['rss_mb']} MB (<= 250)"]
    if "requests_per_job_by_verb" in ours:
        lines.append(f"  {'':36} {'floor':>8} {'forgetless':>11}")
        for key in ("creates_s", "p50_s", "p99_s", "all_children_after_s", "rss_mb", "requests_per_job",
                    "controller_manager_requests_per_job"):
            lines.append(f"  {key:36} {floor[key]:>8} {ours[key]:>11}")
        verbs = sorted(set(floor["requests_per_job_by_verb"]) | set(ours["requests_per_job_by_verb"]))
        for verb in verbs:
            lines.append(f"  {verb:36} {floor['requests_per_job_by_verb'].get(verb, 0):>8} "
                         f"{ours['requests_per_job_by_verb'].get(verb, 0):>11}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--rate", type=float, default=0.0, help="FineTuneJobs created per second (0: one burst; fake API only)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--operators", default="floor,forgetless",
                        help="which to run, back to back: floor (benchmarks/floor_operator.py), forgetless")
    parser.add_argument("--kubeconfig", type=Path, help="a real API server (admin credentials: it reads /metrics)")
    parser.add_argument("--threads", type=int, default=16, help="client threads creating the burst (real server)")
    parser.add_argument("--repeat", type=int, default=1, help="run each pair this many times, back to back")
    parser.add_argument("--keep-namespace", action="store_true",
                        help="real server: leave each run's namespace (e.g. the control plane is thrown away after)")
    parser.add_argument("--operator-root", type=Path, help="the forgetless tree whose operator runs (default: this one)")
    parser.add_argument("--resync-seconds", type=float,
                        help="forgetless's resync period (default 60 on the fake API; 3600 on a real server, so that "
                             "the burst's requests are counted without a resync pass: each pass costs a GET and three "
                             "LISTs per running job)")
    parser.add_argument("--compare", type=Path, nargs=2, metavar=("FLOOR_JSON", "FORGETLESS_JSON"),
                        help="print the comparison of two earlier --json results (e.g. runs on fresh control planes)")
    args = parser.parse_args()
    global OPERATOR_ROOT, RESYNC_SECONDS
    OPERATOR_ROOT = (args.operator_root or ROOT).resolve()
    RESYNC_SECONDS = args.resync_seconds or (3600 if args.kubeconfig else 60)
    if args.compare:
        floor, ours = (json.loads(path.read_text()) for path in args.compare)
        for f, o in zip(floor, ours):
            print(compare(f["jobs"], f, o))
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        for n in args.jobs:
            for round_ in range(args.repeat):
                pair = {}
                for which in args.operators.split(","):
                    if args.kubeconfig:
                        result = run_cluster(n, which, args.kubeconfig, args.threads, Path(tmp), str(round_),
                                             args.keep_namespace)
                    else:
                        result = asyncio.run(run_once(n, args.rate, Path(tmp), which))
                    print(json.dumps(result), flush=True)
                    results.append(result)
                    pair[which] = result
                if {"floor", "forgetless"} <= pair.keys():
                    print(compare(n, pair["floor"], pair["forgetless"]), flush=True)
    print(f"goals: {GOALS}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
