"""The stand-in node against a real API server: pods run as local processes and report like kubelet."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.e2e.standin_node import StandInNode

from tests.e2e.conftest import wait as e2e_wait

pytestmark = pytest.mark.e2e

PY = sys.executable


def wait(check: Callable[[], Any], what: str, timeout: float = 20.0, period: float = 0.1) -> Any:
    return e2e_wait(check, what, timeout, period)


@pytest.fixture
def core(kube):
    return kube.client.CoreV1Api()


@pytest.fixture
def node(core, namespace: str, tmp_path: Path) -> Iterator[StandInNode]:
    def hook(pod: dict, rootfs: Path, env: dict) -> dict:
        assert rootfs.is_dir() and env["PATH"]
        return {"HOOKED": f"{pod['metadata']['name']} in {pod['metadata']['namespace']}"}

    with StandInNode(core, [namespace], tmp_path / "node", poll_seconds=0.1, grace_seconds=2.0, env_hook=hook,
                     entrypoint=[PY, "-c", "import sys; print('entrypoint', *sys.argv[1:])"]) as standin:
        yield standin


def pod_body(name: str, command: list[str], **container: Any) -> dict:
    volumes = container.pop("volumes", [])
    return {"metadata": {"name": name, "labels": {"app": "standin-test"}},
            "spec": {"restartPolicy": "Never", "volumes": volumes,
                     "containers": [{"name": "main", "image": "standin.invalid/test:1",
                                     **({"command": command} if command else {}), **container}]}}


def terminal(core, namespace: str, name: str):
    """The pod once its phase is Succeeded or Failed."""
    def check():
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in ("Succeeded", "Failed") else None
    return wait(check, f"pod {name} to finish")


def test_volumes_env_and_termination_message(core, namespace: str, node: StandInNode) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "app"},
                                                  "data": {"settings.json": '{"lr": 0.1}', "greeting": "hello"}})
    core.create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "shared"},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}})
    script = """
import json, os, pathlib, sys
config, out, scratch, sub, projected, me = sys.argv[1:7]
pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path(out).write_text("written by " + os.environ["POD_NAME"])
pathlib.Path(scratch, "tmp.txt").write_text("scratch")
pathlib.Path(sub, "in-subpath.txt").write_text("sub")
result = {"config": json.loads(pathlib.Path(config).read_text()), "greeting": os.environ["GREETING_LINE"],
          "namespace": os.environ["POD_NAMESPACE"], "index": os.environ["INDEX"],
          "tmpdir": os.environ.get("TMPDIR"), "leaked": "KUBECONFIG" in os.environ, "cwd": os.getcwd(),
          "hooked": os.environ["HOOKED"], "projected": pathlib.Path(projected).read_text(),
          "me": pathlib.Path(me).read_text()}
pathlib.Path(os.environ["RESULT_PATH"]).write_text(json.dumps(result))
"""
    body = pod_body("volumes", [PY, "-c", script],
                    args=["/etc/app/settings.json", "/data/out/result.txt", "/scratch", "/sub", "/etc/meta/spec.json",
                          "/etc/meta/name"],
                    env=[{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                         {"name": "INDEX", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['index']"}}},
                         {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "greeting"}}},
                         {"name": "ABSENT", "valueFrom": {"configMapKeyRef": {"name": "app", "key": "nope",
                                                                              "optional": True}}},
                         {"name": "GREETING_LINE", "value": "$(GREETING), $(POD_NAME) $(ABSENT)"},
                         {"name": "RESULT_PATH", "value": "/dev/termination-log"}],
                    volumeMounts=[{"name": "config", "mountPath": "/etc/app"},
                                  {"name": "meta", "mountPath": "/etc/meta"},
                                  {"name": "scratch", "mountPath": "/scratch"},
                                  {"name": "tmp", "mountPath": "/tmp"},
                                  {"name": "data", "mountPath": "/data"},
                                  {"name": "data", "mountPath": "/sub", "subPath": "nested"}],
                    volumes=[{"name": "config", "configMap": {"name": "app", "items": [
                                 {"key": "settings.json", "path": "settings.json"}]}},
                             {"name": "meta", "downwardAPI": {"items": [
                                 {"path": "spec.json", "fieldRef": {"fieldPath": "metadata.annotations['example.com/spec']"}},
                                 {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                             {"name": "scratch", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                             {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}])
    body["metadata"]["annotations"] = {"index": "7", "example.com/spec": '{"lr": 0.2}'}
    core.create_namespaced_pod(namespace, body)

    pod = terminal(core, namespace, "volumes")
    record = node.wait_exited(namespace, "volumes")
    state = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Succeeded", node.log(namespace, "volumes")
    assert (state.exit_code, state.reason) == (0, "Completed")
    result = json.loads(state.message)
    assert result == {"config": {"lr": 0.1}, "greeting": "hello, volumes $(ABSENT)", "namespace": namespace,
                      "index": "7", "tmpdir": str(record.rootfs / "tmp"), "leaked": False,
                      "cwd": str(record.rootfs), "hooked": f"volumes in {namespace}",
                      "projected": '{"lr": 0.2}', "me": "volumes"}
    pvc = node.root / "pvc" / "shared"
    assert (pvc / "out" / "result.txt").read_text() == "written by volumes"
    assert (pvc / "nested" / "in-subpath.txt").read_text() == "sub"
    assert (record.rootfs / "scratch" / "tmp.txt").resolve().parent != pvc
    assert pod.status.pod_ip.startswith("127.1.") and pod.status.host_ip == "127.0.0.1"  # its own loopback IP
    assert pod.status.start_time is not None
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "False"
    assert core.read_namespaced_persistent_volume_claim("shared", namespace).status.phase == "Pending"


def test_failures_report_like_kubelet(core, namespace: str, node: StandInNode) -> None:
    script = "import sys\nfor i in range(100): print(f'line {i}')\nsys.exit(3)"
    core.create_namespaced_pod(namespace, pod_body("fails", [PY, "-c", script],
                                                   terminationMessagePolicy="FallbackToLogsOnError"))
    pod = terminal(core, namespace, "fails")
    state = pod.status.container_statuses[0].state.terminated
    assert pod.status.phase == "Failed"
    assert (state.exit_code, state.reason) == (3, "Error")
    assert state.message.splitlines() == [f"line {i}" for i in range(20, 100)]

    core.create_namespaced_pod(namespace, pod_body("no-binary", ["/nonexistent/binary"]))
    pod = terminal(core, namespace, "no-binary")
    state = pod.status.container_statuses[0].state.terminated
    assert (pod.status.phase, state.exit_code, state.reason) == ("Failed", 128, "StartError")
    assert "/nonexistent/binary" in state.message


def test_indexed_job_completes_and_a_killed_pod_fails(kube, core, namespace: str, node: StandInNode) -> None:
    batch = kube.client.BatchV1Api()

    def job(name: str, script: str, **spec: Any) -> dict:
        return {"metadata": {"name": name}, "spec": {**spec, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "standin.invalid/test:1", "command": [PY, "-c", script]}]}}}}

    batch.create_namespaced_job(namespace, job("indexed", "import os; print('index', os.environ['JOB_COMPLETION_INDEX'])",
                                               completions=2, parallelism=2, completionMode="Indexed", backoffLimit=0))
    batch.create_namespaced_job(namespace, job("sleeper", "import time; time.sleep(60)", backoffLimit=0))

    def conditions(name: str) -> set[str]:
        status = batch.read_namespaced_job(name, namespace).status
        return {c.type for c in status.conditions or [] if c.status == "True"}

    wait(lambda: "Complete" in conditions("indexed"), "the Indexed Job to complete")
    indexed = [r for r in node.pods() if r.name.startswith("indexed-")]
    assert sorted(node.log(namespace, r.name).strip() for r in indexed) == ["index 0", "index 1"]

    sleeper = node.wait_started(namespace, lambda r: r.name.startswith("sleeper-"))
    node.kill(namespace, sleeper.name, signal.SIGKILL)
    pod = terminal(core, namespace, sleeper.name)
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 137
    wait(lambda: "Failed" in conditions("sleeper"), "the killed Job to fail")


def test_missing_config_map_key_waits_until_created(core, namespace: str, node: StandInNode) -> None:
    body = pod_body("waits", [], args=["$(TOKEN)"],  # no command: the node's entrypoint runs
                    env=[{"name": "TOKEN", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "token"}}}])
    core.create_namespaced_pod(namespace, body)

    def waiting():
        statuses = core.read_namespaced_pod("waits", namespace).status.container_statuses or []
        return statuses and statuses[0].state.waiting
    state = wait(waiting, "the CreateContainerConfigError waiting state")
    assert state.reason == "CreateContainerConfigError" and "late" in state.message
    assert core.read_namespaced_pod("waits", namespace).status.phase == "Pending"
    assert not node.pods()

    core.create_namespaced_config_map(namespace, {"metadata": {"name": "late"}, "data": {"token": "s3cret"}})
    assert terminal(core, namespace, "waits").status.phase == "Succeeded"
    assert node.log(namespace, "waits") == "entrypoint s3cret\n"


def test_deleting_a_running_pod_terminates_it(core, namespace: str, node: StandInNode) -> None:
    sleep = [PY, "-c", "import time; time.sleep(60)"]
    core.create_namespaced_pod(namespace, pod_body("plain", sleep))
    held = pod_body("held", sleep)
    held["metadata"]["finalizers"] = ["standin.test/hold"]  # keeps the pod readable after deletion
    core.create_namespaced_pod(namespace, held)
    node.wait_started(namespace, "plain")
    node.wait_started(namespace, "held")
    assert core.read_namespaced_pod("held", namespace).status.phase == "Running"

    core.delete_namespaced_pod("plain", namespace)
    core.delete_namespaced_pod("held", namespace)
    for name in ("plain", "held"):
        record = node.wait_exited(namespace, name)
        assert (record.returncode, record.exit_code, record.deleted) == (-signal.SIGTERM, 143, True)
    pod = terminal(core, namespace, "held")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 143
    core.patch_namespaced_pod("held", namespace, {"metadata": {"finalizers": None}})
