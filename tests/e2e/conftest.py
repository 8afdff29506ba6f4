"""e2e fixtures: a real cluster through $KUBECONFIG (kind for users), else every e2e test is skipped.

`kind create cluster` is enough: no image needs to run. The tests apply the CRD, start the
operator as a subprocess (`forgetless operator --standalone`) and play kubelet for stage pods.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "finetunejobs.forgetless.dev.yaml"
UNPULLABLE_IMAGE = "forgetless.invalid/trainer:e2e"  # the Job controller's own pods never start


@pytest.fixture(scope="session")
def kube() -> object:
    """The kubernetes client module, configured; skips when no cluster answers."""
    try:
        import kubernetes
        from kubernetes import client, config

        config.load_kube_config()
        client.VersionApi().get_code(_request_timeout=5)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable cluster
        pytest.skip(f"no Kubernetes cluster reachable through $KUBECONFIG ({type(exc).__name__}: {exc}); "
                    "start one with `kind create cluster`")
    return kubernetes


@pytest.fixture(scope="session")
def crd(kube) -> Iterator[None]:
    api = kube.client.ApiextensionsV1Api()
    body = yaml.safe_load(CRD.read_text())
    name = body["metadata"]["name"]
    created = False
    try:
        existing = api.read_custom_resource_definition(name)
        body["metadata"]["resourceVersion"] = existing.metadata.resource_version
        api.replace_custom_resource_definition(name, body)
    except kube.client.ApiException as exc:
        if exc.status != 404:
            raise
        api.create_custom_resource_definition(body)
        created = True
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        conditions = api.read_custom_resource_definition(name).status.conditions or []
        if any(c.type == "Established" and c.status == "True" for c in conditions):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"CRD {name} not Established within 60 s")
    yield
    if created:
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
    """While the operator still runs (it releases its finalizer); strip finalizers as a last resort so
    that the namespace never hangs in Terminating."""
    custom = kube.client.CustomObjectsApi()
    args = ("forgetless.dev", "v1alpha1", namespace, "finetunejobs")
    for item in custom.list_namespaced_custom_object(*args)["items"]:
        custom.delete_namespaced_custom_object(*args, item["metadata"]["name"], body={"propagationPolicy": "Background"})
    deadline = time.monotonic() + 30
    while custom.list_namespaced_custom_object(*args)["items"] and time.monotonic() < deadline:
        time.sleep(0.5)
    for item in custom.list_namespaced_custom_object(*args)["items"]:
        custom.patch_namespaced_custom_object(*args, item["metadata"]["name"], {"metadata": {"finalizers": None}})


@pytest.fixture
def operator(kube, crd, namespace: str, tmp_path: Path) -> Iterator[int]:
    """`forgetless operator --standalone` watching the test namespace; yields its metrics port."""
    port = _free_port()
    log = (tmp_path / "operator.log").open("w")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / d) for d in ("core", "operator"))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgetless", "operator", "--namespace", namespace, "--standalone",
         "--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--resync-seconds", "5",
         "--trainer-image", UNPULLABLE_IMAGE],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the operator exited ({proc.returncode}):\n{(tmp_path / 'operator.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the operator was not ready within 60 s")
        time.sleep(0.3)
    try:
        yield port
    finally:
        try:
            _delete_finetunejobs(kube, namespace)
        finally:
            proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
