"""Bad suite data is refused before anything is trained, naming file, line and field: by
`forgetless validate` where the suite can be read, by `forgetless run`'s preflight, and by the train
stage in a pod (which may run first when the operator reuses a cached baseline)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
WORLD = REPO / "core" / "forgetless" / "bundled" / "suites" / "world-v1"


def _drop_target(path: Path, line: int) -> None:
    lines = path.read_text().splitlines()
    item = json.loads(lines[line - 1])
    item.pop("target")
    lines[line - 1] = json.dumps(item)
    path.write_text("\n".join(lines) + "\n")


def _scorer(path: Path) -> None:
    path.write_text(path.read_text().replace('"exact_match"', '"fuzzy_vibes"', 1))


CASES = {
    "not JSON": (lambda s: (s / "if_pick.jsonl").write_text((s / "if_pick.jsonl").read_text().replace(
        (s / "if_pick.jsonl").read_text().splitlines()[2], "{not json", 1)), "if_pick.jsonl:3: malformed JSONL line"),
    "missing target": (lambda s: _drop_target(s / "knowledge_qa.jsonl", 5), "knowledge_qa.jsonl:5: item"),
    "unknown scorer": (lambda s: _scorer(s / "suite.json"), "suite.json:"),
}


@pytest.fixture(params=sorted(CASES))
def bad_suite(request, tmp_path) -> tuple[Path, str]:
    suite = tmp_path / "suite"
    shutil.copytree(WORLD, suite)
    damage, needle = CASES[request.param]
    damage(suite)
    return suite, needle


def _manifest(tmp_path: Path, suite: Path) -> Path:
    document = yaml.safe_load((REPO / "examples" / "recommended.yaml").read_text())
    document["spec"]["regression"]["suite"]["path"] = str(suite)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_validate_refuses_bad_suite_data_naming_file_line_and_field(tmp_path, bad_suite):
    suite, needle = bad_suite
    proc = subprocess.run([sys.executable, "-m", "forgetless_cli", "validate", str(_manifest(tmp_path, suite))],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0, proc.stdout
    assert "spec.regression.suite:" in proc.stderr and needle in proc.stderr, proc.stderr
    if "scorer" in needle or needle == "suite.json:":
        assert "fuzzy_vibes" in proc.stderr


def test_run_refuses_bad_suite_data_before_the_baseline(tmp_path, bad_suite, capsys):
    from forgetless import exit_codes
    from forgetless_cli.local.pipeline import run_pipeline

    suite, needle = bad_suite
    workdir = tmp_path / "work"
    assert run_pipeline(_manifest(tmp_path, suite), workdir=workdir) == exit_codes.INVALID
    assert needle in capsys.readouterr().err
    assert not (workdir / "baseline").exists() and not (workdir / "train").exists()


def test_the_train_stage_refuses_bad_suite_data_before_a_step(tmp_path, bad_suite):
    pytest.importorskip("torch")
    from forgetless.api.manifests import load_job
    from forgetless.errors import StageError
    from forgetless_trainer.stages import run_stage

    suite, needle = bad_suite
    job = load_job(_manifest(tmp_path, suite))
    with pytest.raises(StageError, match="spec.regression.suite") as caught:
        run_stage("train", job, tmp_path / "work")
    assert needle in str(caught.value)
    assert not (tmp_path / "work" / "train" / "checkpoints").exists()
