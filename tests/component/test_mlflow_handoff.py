"""MLflow hand-off (output.handOff.mlflow) against a real tracking server and a real local store.

One `mlflow server` (SQLite backend, proxied artifacts) per module; `record()` is called directly
with real files (a report folder, a small "promoted" model directory), as the evaluate stage does.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from forgetless import atomic
from forgetless.api.manifests import ManifestError, validate_document
from forgetless.api.schema import CATEGORIES

from forgetless_trainer.handoff_mlflow import MlflowHandOffError, record, tracking_location

# mlflow's own SQLAlchemy use, not ours
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

REGISTERED = "forgetless-support"
MANIFEST = {
    "apiVersion": "forgetless.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "support-a", "namespace": "team-a"},
    "spec": {
        "model": {"name": "bundled:tiny-world", "revision": "main"},
        "dataset": {"task": {"path": "bundled:support-tickets"}},
        "method": {"type": "lora"},
        "mitigation": {"dataMixing": {"generalFraction": 0.3}},
        "regression": {"suite": {"path": "bundled:world-v1"}},
        "output": {"handOff": {"mlflow": {"registeredModel": REGISTERED}}},
    },
}
BASELINE = {**{c: 0.8 for c in CATEGORIES}, "task": 0.2}


@pytest.fixture(scope="module")
def mlflow():
    """The mlflow package (the `mlflow` extra); the schema tests below run without it."""
    return pytest.importorskip("mlflow")


def manifest(name: str, mlflow_block: dict | None = None, **output) -> dict:
    document = copy.deepcopy(MANIFEST)
    document["metadata"]["name"] = name
    if mlflow_block is not None:
        document["spec"]["output"]["handOff"]["mlflow"] = mlflow_block
    document["spec"]["output"].update(output)
    return document


def gate_status(verdict: str, drop: float) -> dict:
    """The `status.gate` wire form the evaluate stage passes (GateResult.to_status())."""
    categories = [
        {"category": c, "baseline": BASELINE[c], "final": BASELINE[c] - drop, "drop": drop, "dropUpper": drop + 0.01,
         "dropLower": drop - 0.01, "threshold": 0.05, "passed": drop <= 0.05}
        for c in CATEGORIES
    ]
    reasons = [] if verdict == "Passed" else [f"{c}: drop {drop:.3f} > 0.05" for c in CATEGORIES]
    return {"verdict": verdict, "reasons": reasons, "meanDrop": drop, "taskGain": 0.5, "taskGainLower": 0.4,
            "categories": categories}


def final_scores(drop: float) -> dict:
    return {**{c: BASELINE[c] - drop for c in CATEGORIES}, "task": 0.7}


def workdir_with_report(root: Path) -> Path:
    report = root / "work" / "report"
    report.mkdir(parents=True)
    (report / "gate.json").write_text('{"verdict": "x"}\n')
    (report / "report.md").write_text("# report\n")
    (report / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    return root / "work"


def promoted_model(root: Path) -> dict:
    path = root / "promoted"
    (path / "adapter").mkdir(parents=True)
    (path / "config.json").write_text('{"model_type": "tiny"}\n')
    (path / "model.safetensors").write_bytes(os.urandom(256))
    (path / "adapter" / "adapter_config.json").write_text('{"r": 16}\n')
    return {"path": str(path), "digest": atomic.directory_digest(path), "format": "merged+adapter"}


def call_record(job, workdir: Path, verdict: str, drop: float, promoted: dict | None, base_dir: Path | None = None):
    return record(job, workdir, gate_status=gate_status(verdict, drop), baseline_scores=BASELINE,
                  final_scores=final_scores(drop), promoted=promoted, report_dir=workdir / "report",
                  base_dir=base_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(mlflow, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # its own session: uvicorn and the job runner are children, stopped with the group
    process = subprocess.Popen(command, cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail(f"mlflow server did not come up (exit {process.poll()}):\n"
                            f"{(root / 'server.log').read_text()[-5000:]}")
            time.sleep(0.3)
        yield uri
    finally:
        with_group = process.poll() is None
        if with_group:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def passed(server, tmp_path_factory):
    """A job that passed the gate and was promoted, recorded once for the module."""
    root = tmp_path_factory.mktemp("passed")
    job = validate_document(manifest("support-a", {"trackingUri": server, "registeredModel": REGISTERED}))
    workdir = workdir_with_report(root)
    promoted = promoted_model(root)
    promoted.update({"claimName": "models", "pathInVolume": "support/promoted", "uri": "pvc://models/support/promoted"})
    return job, promoted, call_record(job, workdir, "Passed", 0.01, promoted)


def test_passing_job_is_logged_registered_and_aliased(mlflow, server, passed, tmp_path, monkeypatch):
    job, promoted, result = passed
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    assert result["trackingUri"] == server and result["registeredModel"] == REGISTERED
    assert result["alias"] == "champion" and result["version"]

    run = client.get_run(result["runId"])
    assert run.info.run_name == "support-a" and run.info.status == "FINISHED"
    assert run.info.experiment_id == result["experimentId"] == client.get_experiment_by_name("forgetless").experiment_id
    tags = run.data.tags
    assert tags["forgetless.job"] == "support-a" and tags["forgetless.namespace"] == "team-a"
    assert tags["forgetless.base_model"] == "bundled:tiny-world" and tags["forgetless.base_model_revision"] == "main"
    assert tags["forgetless.method"] == "lora" and tags["forgetless.gate_verdict"] == "Passed"
    assert '"generalFraction":0.3' in tags["forgetless.policy"] and " " not in tags["forgetless.policy"]
    assert tags["forgetless.gate_reasons"] == ""
    metrics = run.data.metrics
    for category in CATEGORIES:
        assert metrics[f"baseline_{category}"] == pytest.approx(0.8)
        assert metrics[f"final_{category}"] == pytest.approx(0.79)
        assert metrics[f"drop_{category}"] == pytest.approx(0.01)
    assert metrics["task_score"] == pytest.approx(0.7) and metrics["task_gain"] == pytest.approx(0.5)
    assert metrics["mean_drop"] == pytest.approx(0.01)
    report = {a.path for a in client.list_artifacts(result["runId"], "report")}
    assert report == {"report/gate.json", "report/report.md", "report/report.png"}

    version = client.get_model_version(REGISTERED, result["version"])
    assert version.run_id == result["runId"] and version.source == f"runs:/{result['runId']}/model"
    assert version.tags["forgetless.digest"] == promoted["digest"]
    assert version.tags["forgetless.uri"] == "pvc://models/support/promoted"
    assert version.tags["forgetless.gate_verdict"] == "Passed" and version.tags["forgetless.job"] == "support-a"
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == result["version"]

    # what a consumer fetches through the alias is exactly what passed the gate (models:/ URIs resolve
    # through the registry URI, which download_artifacts does not take: the environment names it)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", server)
    fetched = mlflow.artifacts.download_artifacts(f"models:/{REGISTERED}@champion", dst_path=str(tmp_path / "dl"))
    assert atomic.directory_digest(Path(fetched)) == promoted["digest"]


@pytest.mark.parametrize("verdict", ["Failed", "NoTaskGain"])
def test_blocked_job_is_logged_without_a_version(mlflow, server, passed, tmp_path, verdict):
    _, _, first = passed
    client = mlflow.MlflowClient(tracking_uri=server, registry_uri=server)
    versions_before = {v.version for v in client.search_model_versions(f"name='{REGISTERED}'")}
    job = validate_document(manifest(f"support-{verdict.lower()}", {"trackingUri": server,
                                                                     "registeredModel": REGISTERED}))
    result = call_record(job, workdir_with_report(tmp_path), verdict, 0.2, None)

    assert result["version"] is None and result["alias"] is None
    run = client.get_run(result["runId"])
    assert run.info.status == "FINISHED" and run.data.tags["forgetless.gate_verdict"] == verdict
    assert "knowledge: drop 0.200 > 0.05" in run.data.tags["forgetless.gate_reasons"]
    assert "forgetless.digest" not in run.data.tags
    assert run.data.metrics["drop_knowledge"] == pytest.approx(0.2)
    assert not client.list_artifacts(result["runId"], "model")
    assert not client.search_model_versions(f"run_id='{result['runId']}'")
    assert {v.version for v in client.search_model_versions(f"name='{REGISTERED}'")} == versions_before
    assert str(client.get_model_version_by_alias(REGISTERED, "champion").version) == first["version"]


def test_local_default_store_under_base_dir(mlflow, tmp_path, monkeypatch):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # nothing may land in the current directory
    base = tmp_path / "manifests"
    job = validate_document(manifest("support-local", {"registeredModel": "local-model", "alias": "prod"}))
    promoted = promoted_model(tmp_path)
    result = call_record(job, workdir_with_report(tmp_path), "Warned", 0.03, promoted, base_dir=base)

    store = base / "mlruns"
    assert result["trackingUri"] == f"sqlite:///{store}/mlflow.db" and (store / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri=result["trackingUri"], registry_uri=result["trackingUri"])
    run = client.get_run(result["runId"])
    assert run.data.tags["forgetless.gate_verdict"] == "Warned"
    assert run.info.artifact_uri.startswith((store / "artifacts").as_uri())
    assert (Path(run.info.artifact_uri.removeprefix("file://")) / "report" / "gate.json").is_file()
    assert str(client.get_model_version_by_alias("local-model", "prod").version) == result["version"] == "1"
    assert client.get_model_version("local-model", "1").tags["forgetless.uri"] == promoted["path"]
    assert not list(cwd.iterdir())


def test_default_store_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("FORGETLESS_PVC_ROOT", str(tmp_path / "pvc"))
    on_volume = validate_document(manifest("j", pvc={"claimName": "work", "subPath": "jobs/j"}))
    uri, artifacts = tracking_location(on_volume)
    assert uri == f"sqlite:///{tmp_path}/pvc/work/mlruns/mlflow.db"
    assert artifacts == tmp_path / "pvc" / "work" / "mlruns" / "artifacts"

    relative = validate_document(manifest("j", {"registeredModel": "m", "trackingUri": "sqlite:///db/x.db"}))
    assert tracking_location(relative, tmp_path) == (f"sqlite:///{tmp_path}/db/x.db", tmp_path / "db" / "artifacts")
    plain = validate_document(manifest("j", {"registeredModel": "m", "trackingUri": "store"}))
    store = tmp_path / "store"
    assert tracking_location(plain, tmp_path) == (f"sqlite:///{store}/mlflow.db", store / "artifacts")
    remote = validate_document(manifest("j", {"registeredModel": "m", "trackingUri": "https://mlflow.example/"}))
    assert tracking_location(remote, tmp_path) == ("https://mlflow.example/", None)


def test_unreachable_server_names_the_uri(mlflow, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"
    job = validate_document(manifest("j", {"registeredModel": "m", "trackingUri": uri}))
    with pytest.raises(MlflowHandOffError, match=f"MLflow at {uri}"):
        call_record(job, workdir_with_report(tmp_path), "Passed", 0.0, None)


@pytest.mark.parametrize(
    ("block", "field", "problem"),
    [
        ({}, "spec.output.handOff.mlflow.registeredModel", "required field is missing"),
        ({"registeredModel": "m", "alias": "bad alias!"}, "spec.output.handOff.mlflow.alias", "'bad alias!'"),
    ],
)
def test_manifest_errors_name_the_field(block, field, problem):
    with pytest.raises(ManifestError) as caught:
        validate_document(manifest("j", block))
    assert any(line.startswith(f"{field}:") and problem in line for line in caught.value.lines), str(caught.value)
