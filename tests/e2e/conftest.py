"""e2e fixtures: a real cluster through $KUBECONFIG (kind for users), else every e2e test is skipped.

`kind create cluster` is enough: no image needs to run. The tests apply the CRD, start the
operator as a subprocess (`forgetless operator --standalone`) and run the stage pods of their own
namespace on a test-only stand-in node (`standin_node.py`: each Pending pod becomes a local process
with its volumes, env and termination message, the output PVC one shared host folder). CI
(`.ci/run`) starts a real kube-apiserver + kube-controller-manager and sets
FORGETLESS_REQUIRE_CLUSTER=1, so there a missing cluster fails instead of skipping.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRDS = [REPO / "crds" / "finetunejobs.forgetless.dev.yaml", REPO / "crds" / "finetunesweeps.forgetless.dev.yaml"]
UNPULLABLE_IMAGE = "forgetless.invalid/trainer:e2e"  # the Job controller's own pods never start


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0, period: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy (returned); fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(period)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def wait_established(api: Any, name: str) -> None:
    """Until the API server serves the CRD `name` (condition Established)."""
    wait(lambda: any(c.type == "Established" and c.status == "True"
                     for c in api.read_custom_resource_definition(name).status.conditions or []),
         f"CRD {name} to be Established")


@pytest.fixture(scope="session")
def kube() -> object:
    """The kubernetes client module, configured; skips when no cluster answers."""
    try:
        import kubernetes
        from kubernetes import client, config

        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # not the client's import-time default
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable cluster
        if os.environ.get("FORGETLESS_REQUIRE_CLUSTER") == "1":
            pytest.fail(f"FORGETLESS_REQUIRE_CLUSTER=1 but no cluster answers through $KUBECONFIG "
                        f"({os.environ.get('KUBECONFIG')}): {type(exc).__name__}: {exc}")
        pytest.skip(f"no Kubernetes cluster reachable through $KUBECONFIG ({type(exc).__name__}: {exc}); "
                    "start one with `kind create cluster`")
    return kubernetes


@pytest.fixture(scope="session")
def crd(kube) -> Iterator[None]:
    """The FineTuneJob and FineTuneSweep CRDs from crds/ (replacing older versions of them)."""
    api = kube.client.ApiextensionsV1Api()
    created = []
    for path in CRDS:
        body = yaml.safe_load(path.read_text())
        name = body["metadata"]["name"]
        try:
            existing = api.read_custom_resource_definition(name)
            body["metadata"]["resourceVersion"] = existing.metadata.resource_version
            api.replace_custom_resource_definition(name, body)
        except kube.client.ApiException as exc:
            if exc.status != 404:
                raise
            api.create_custom_resource_definition(body)
            created.append(name)
        wait_established(api, name)
    yield
    for name in created:
        api.delete_custom_resource_definition(name)


@pytest.fixture(scope="session")
def inference_service_crd(kube) -> Iterator[None]:
    """A structural stand-in for KServe's InferenceService CRD (tests/e2e/inferenceservice-crd.yaml),
    unless the cluster has the real one."""
    api = kube.client.ApiextensionsV1Api()
    body = yaml.safe_load((Path(__file__).parent / "inferenceservice-crd.yaml").read_text())
    name = body["metadata"]["name"]
    try:
        api.read_custom_resource_definition(name)
        yield  # KServe (or an earlier run) installed it: use that one
        return
    except kube.client.ApiException as exc:
        if exc.status != 404:
            raise
    api.create_custom_resource_definition(body)
    wait_established(api, name)
    yield
    api.delete_custom_resource_definition(name)


@pytest.fixture
def namespace(kube) -> Iterator[str]:
    name = f"forgetless-e2e-{uuid.uuid4().hex[:6]}"
    core = kube.client.CoreV1Api()
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _delete_finetunejobs(kube, namespace: str) -> None:
    """Delete the test's FineTuneJobs (the operator holds no finalizer; one left by another controller is
    stripped as a last resort so that the namespace never hangs in Terminating)."""
    custom = kube.client.CustomObjectsApi()
    sweeps = ("forgetless.dev", "v1alpha1", namespace, "finetunesweeps")
    for item in custom.list_namespaced_custom_object(*sweeps)["items"]:
        custom.delete_namespaced_custom_object(*sweeps, item["metadata"]["name"], body={"propagationPolicy": "Background"})
    args = ("forgetless.dev", "v1alpha1", namespace, "finetunejobs")
    for item in custom.list_namespaced_custom_object(*args)["items"]:
        custom.delete_namespaced_custom_object(*args, item["metadata"]["name"], body={"propagationPolicy": "Background"})
    deadline = time.monotonic() + 30
    while custom.list_namespaced_custom_object(*args)["items"] and time.monotonic() < deadline:
        time.sleep(0.5)
    for item in custom.list_namespaced_custom_object(*args)["items"]:
        custom.patch_namespaced_custom_object(*args, item["metadata"]["name"], {"metadata": {"finalizers": None}})


class OperatorProcess:
    """`forgetless operator --standalone` watching one namespace, as a subprocess that a test may kill."""

    def __init__(self, namespace: str, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.namespace = namespace
        self.log_path = log_path
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None
        self.extra_env = dict(env or {})  # e.g. KUBECONFIG of a ServiceAccount with fewer rights

    def start(self) -> "OperatorProcess":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("core", "operator", "cli")),
               **self.extra_env}
        log = self.log_path.open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forgetless_cli", "operator", "--namespace", self.namespace, "--standalone",
             "--metrics-port", str(self.port), "--metrics-host", "127.0.0.1", "--resync-seconds", "5",
             "--progress-seconds", "1",
             "--trainer-image", UNPULLABLE_IMAGE],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"the operator exited ({self.proc.returncode}):\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail("the operator was not ready within 60 s")
            time.sleep(0.3)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(20)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture
def operator(kube, crd, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator watching the test namespace (`.port` serves /metrics)."""
    process = OperatorProcess(namespace, tmp_path / "operator.log").start()
    try:
        yield process
    finally:
        try:
            _delete_finetunejobs(kube, namespace)
        finally:
            process.stop()


# --------------------------------------------------------------------------- the stand-in node

STAGE_TIMES: list[tuple[str, str, float]] = []
"""(test, stage, seconds) of every stage the e2e tests ran, printed at the end of the session."""


E2E_DURATIONS: list[tuple[str, float]] = []


def pytest_runtest_logreport(report: Any) -> None:
    if report.when == "call" and "/e2e/" in report.nodeid.replace("\\", "/"):
        E2E_DURATIONS.append((report.nodeid.split("::")[-1], report.duration))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not STAGE_TIMES:
        return
    terminalreporter.section("forgetless e2e: stage wall times (pod created -> result recorded)")
    for test, stage, seconds in STAGE_TIMES:
        terminalreporter.write_line(f"{test:<60} {stage:<9} {seconds:6.1f} s")
    total = sum(seconds for _, seconds in E2E_DURATIONS)
    terminalreporter.write_line(f"e2e tier: {len(E2E_DURATIONS)} tests, {total:.0f} s of test time")


@pytest.fixture(scope="session")
def extensions_cache(tmp_path_factory) -> Path:
    """DeepSpeed's compiled ops, shared by every stage pod of the session (a real image ships them built)."""
    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or tmp_path_factory.mktemp("torch-extensions"))


@pytest.fixture
def node(kube, namespace: str, tmp_path: Path, extensions_cache: Path) -> Iterator[Any]:
    """A stand-in node running the namespace's stage pods as `python -m forgetless ...` processes.

    Each pod has its own loopback IP (the stand-in's `status.podIP`), and the env hook does what cluster
    networking would: the trainer's /metrics binds that IP on the port the pod spec names (so the
    operator reads progress where it would in a cluster), each multi-worker Job gets one master port,
    and the master's DNS name resolves to 127.0.0.1. The in-pod roots of PVCs and ConfigMaps point
    into the pod's emulated rootfs.
    """
    from tests.e2e.standin_node import StandInNode

    master_ports: dict[str, int] = {}

    def env_hook(pod: dict, rootfs: Path, env: dict) -> dict:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        job = labels.get("batch.kubernetes.io/job-name") or labels.get("job-name") or pod["metadata"]["name"]
        overrides = {
            "FORGETLESS_PVC_ROOT": str(rootfs / "mnt" / "pvc"),
            "FORGETLESS_CONFIGMAP_ROOT": str(rootfs / "etc" / "forgetless" / "configmaps"),
            "FORGETLESS_METRICS_ADDRESS": pod["status"]["podIP"],
            "FORGETLESS_RENDEZVOUS_TIMEOUT_SECONDS": "60",
            "TORCH_EXTENSIONS_DIR": str(extensions_cache),
            "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
        }
        if "MASTER_ADDR" in env:
            overrides["MASTER_ADDR"] = "127.0.0.1"
            overrides["MASTER_PORT"] = str(master_ports.setdefault(job, _free_port()))
        return overrides

    standin = StandInNode(kube.client.CoreV1Api(), [namespace], tmp_path / "node",
                          entrypoint=[sys.executable, "-m", "forgetless_cli"], env_hook=env_hook)
    with standin:
        yield standin
