"""MLflow hand-off (`spec.output.handOff.mlflow`): every job is logged as a run; a model that passed
the gate and was promoted also becomes a version of a registered model, and the alias moves to it.

Called by the evaluate stage after the gate and promotion. What is written:
- always, a run named after the job in experiment `experiment` (created when missing): tags
  `forgetless.job`, `forgetless.namespace`, `forgetless.base_model`(`_revision`), `forgetless.method`,
  `forgetless.policy` (spec.mitigation as compact JSON), `forgetless.gate_verdict`,
  `forgetless.gate_reasons`; metrics `baseline_<category>`, `final_<category>`, `drop_<category>`
  per general category, `task_score`, `task_gain`, `mean_drop`; the report files under `report/`;
- only when `promoted` is not None (verdict Passed/Warned and output.promote): the promoted directory
  under the run's `model/` artifacts, a version of `registeredModel` with source
  `runs:/<run id>/model` (tagged as the run plus `forgetless.digest` and `forgetless.uri`), and
  `alias` set to that version. A blocked or NoTaskGain job adds no version and leaves the alias alone.

Where (`trackingUri`):
- a URI with a scheme (http(s)://…, sqlite:///…, postgresql://…, file:///…, databricks) is used
  as given;
- unset: a local directory, `<pvc root>/<claimName>/mlruns` with `output.pvc` (the claim's root,
  not its subPath, so jobs sharing a volume share one registry), else `<base dir or cwd>/mlruns`;
  a plain path (no scheme) names such a directory too (relative to the base dir).
A local directory holds a SQLite store `<dir>/mlflow.db` (runs and the model registry) and the
artifacts in `<dir>/artifacts`. Why SQLite rather than MLflow's old `./mlruns` file store: MLflow 3
itself defaults to `sqlite:///mlflow.db` (the file store is legacy and only used when an old
`./mlruns` is found), aliases and the registry are first-class in the SQL store, and a client
talking to a SQL store directly puts artifacts in `./mlruns` of the *current directory* unless the
experiment names a location — so the experiment is created with `<dir>/artifacts` (for any local
SQLite URI, next to the database). Browse with
`mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db`.

mlflow is imported only here, inside functions: the trainer runs without the extra; a job that
configures the block without it fails with the install hint.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from forgetless.api.schema import FineTuneJob
from forgetless.lifecycle import CATEGORIES, TASK_CATEGORY
from forgetless.locations import pvc_root
from forgetless.metrics import LOCAL_NAMESPACE

INSTALL_HINT = "pip install 'forgetless[mlflow]'"
STORE_DIR = "mlruns"
DATABASE = "mlflow.db"
ARTIFACTS = "artifacts"
REASONS_LIMIT = 5000
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class MlflowHandOffError(RuntimeError):
    """The hand-off could not be done; the message names the tracking URI."""


def _import_mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow import MlflowClient
    except ImportError as exc:
        raise MlflowHandOffError(
            f"mlflow is not installed ({exc}): install the extra with {INSTALL_HINT}"
        ) from None
    return MlflowClient


def _sqlite_uri(path: Path) -> str:
    return "sqlite:///" + str(path)


def tracking_location(job: FineTuneJob, base_dir: Path | None = None) -> tuple[str, Path | None]:
    """(tracking URI, local artifact directory or None). The directory is set for a local SQLite store:
    new experiments keep their artifacts there (see the module docstring)."""
    handoff = job.spec.output.hand_off.mlflow  # type: ignore[union-attr]
    configured = (handoff.tracking_uri or "").strip()
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if configured and _SCHEME.match(configured):
        if configured.startswith("sqlite:///"):
            database = Path(unquote(configured[len("sqlite:///"):].split("?", 1)[0]))
            if not database.is_absolute():
                database = (base / database).absolute()
                configured = _sqlite_uri(database)
            return configured, database.parent / ARTIFACTS
        return configured, None
    if configured:
        directory = Path(configured).expanduser()
        directory = directory if directory.is_absolute() else base / directory
    elif job.spec.output.pvc is not None:
        directory = pvc_root() / job.spec.output.pvc.claim_name / STORE_DIR
    else:
        directory = base / STORE_DIR
    directory = directory.absolute()
    return _sqlite_uri(directory / DATABASE), directory / ARTIFACTS


def run_tags(job: FineTuneJob, gate_status: dict[str, Any]) -> dict[str, str]:
    spec = job.spec
    tags = {
        "forgetless.job": job.metadata.name,
        "forgetless.namespace": job.metadata.namespace or LOCAL_NAMESPACE,
        "forgetless.base_model": spec.model.name,
        "forgetless.method": spec.method.type,
        "forgetless.policy": json.dumps(
            spec.mitigation.model_dump(mode="json", by_alias=True, exclude_none=True),
            sort_keys=True, separators=(",", ":"),
        ),
        "forgetless.gate_verdict": str(gate_status.get("verdict")),
        "forgetless.gate_reasons": "; ".join(gate_status.get("reasons") or [])[:REASONS_LIMIT],
    }
    if spec.model.revision:
        tags["forgetless.base_model_revision"] = spec.model.revision
    return tags


def run_metrics(gate_status: dict[str, Any], baseline_scores: dict[str, float],
                final_scores: dict[str, float]) -> dict[str, float]:
    gated = {c["category"]: c for c in gate_status.get("categories") or []}
    categories = list(gated) + [c for c in CATEGORIES if c not in gated and (c in baseline_scores or c in final_scores)]
    metrics: dict[str, float] = {}
    for category in categories:
        row = gated.get(category, {})
        baseline = baseline_scores.get(category, row.get("baseline"))
        final = final_scores.get(category, row.get("final"))
        drop = row.get("drop")
        if drop is None and baseline is not None and final is not None:
            drop = baseline - final
        for prefix, value in (("baseline", baseline), ("final", final), ("drop", drop)):
            if value is not None:
                metrics[f"{prefix}_{category}"] = float(value)
    if final_scores.get(TASK_CATEGORY) is not None:
        metrics["task_score"] = float(final_scores[TASK_CATEGORY])
    for key, name in (("taskGain", "task_gain"), ("meanDrop", "mean_drop")):
        if gate_status.get(key) is not None:
            metrics[name] = float(gate_status[key])
    return metrics


def _experiment_id(client: Any, name: str, artifact_dir: Path | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_dir.as_uri() if artifact_dir is not None else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:  # created meanwhile by another job
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc
    if experiment.lifecycle_stage != "active":
        raise MlflowHandOffError(f"experiment {name!r} is deleted: restore it (mlflow experiments restore) "
                                 "or choose another output.handOff.mlflow.experiment")
    return experiment.experiment_id


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


def record(job: FineTuneJob, workdir: Path, *, gate_status: dict[str, Any], baseline_scores: dict[str, float],
           final_scores: dict[str, float], promoted: dict[str, Any] | None, report_dir: Path,
           base_dir: Path | None = None) -> dict[str, Any]:
    """Log the job to MLflow (and register the promoted model); returns the summary's `mlflow` record.

    Raises MlflowHandOffError (a RuntimeError) naming the tracking URI on any failure.
    """
    handoff = job.spec.output.hand_off.mlflow if job.spec.output.hand_off else None
    if handoff is None:
        raise ValueError("record() needs spec.output.handOff.mlflow")
    MlflowClient = _import_mlflow()
    uri, artifact_dir = tracking_location(job, base_dir)
    report_dir = Path(report_dir)
    if not report_dir.is_absolute():
        report_dir = Path(workdir) / report_dir
    result: dict[str, Any] = {
        "trackingUri": uri, "experimentId": None, "runId": None,
        "registeredModel": handoff.registered_model, "version": None, "alias": None,
    }
    tags = run_tags(job, gate_status)
    if promoted is not None:
        tags["forgetless.digest"] = str(promoted["digest"])
        tags["forgetless.uri"] = str(promoted.get("uri") or promoted["path"])
    run_id = None
    try:
        # MLflow prints run links on stdout; keep stdout for the caller
        with contextlib.redirect_stdout(sys.stderr):
            if artifact_dir is not None:
                artifact_dir.parent.mkdir(parents=True, exist_ok=True)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            result["experimentId"] = _experiment_id(client, handoff.experiment, artifact_dir)
            run = client.create_run(result["experimentId"], run_name=job.metadata.name, tags=tags)
            run_id = result["runId"] = run.info.run_id
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = run_metrics(gate_status, baseline_scores, final_scores)
            client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()])
            if report_dir.is_dir():
                client.log_artifacts(run_id, str(report_dir), "report")
            if promoted is not None:
                client.log_artifacts(run_id, str(promoted["path"]), "model")
                _ensure_registered_model(client, handoff.registered_model)
                version = client.create_model_version(
                    handoff.registered_model, f"runs:/{run_id}/model", run_id=run_id, tags=tags,
                    description=f"forgetless job {job.metadata.name}: gate {gate_status.get('verdict')}",
                )
                result["version"] = str(version.version)
                client.set_registered_model_alias(handoff.registered_model, handoff.alias, result["version"])
                result["alias"] = handoff.alias
                client.set_tag(run_id, "forgetless.model_version", f"{handoff.registered_model}/{result['version']}")
            client.set_terminated(run_id, "FINISHED")
    except MlflowHandOffError as exc:
        raise MlflowHandOffError(f"{exc} (tracking URI {uri})") from exc
    except Exception as exc:  # noqa: BLE001 — MlflowException, requests/urllib3, sqlite, OSError: all one failure
        if run_id is not None:
            with contextlib.suppress(Exception), contextlib.redirect_stdout(sys.stderr):
                client.set_terminated(run_id, "FAILED")
        raise MlflowHandOffError(f"MLflow at {uri}: {type(exc).__name__}: {str(exc)[:2000]}") from exc
    return result
