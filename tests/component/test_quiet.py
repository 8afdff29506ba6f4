"""A stage run from the CLI shows forgetless' own progress and none of the libraries' noise."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from tests.component.test_train_stage import REPO, clean_env, make_job  # noqa: E402

NOISE = (
    "Loading weights", "Writing model shards", "Setting accelerator to CPU", "FutureWarning", "DeprecationWarning",
    "Failed to initialize NumPy", "[WARNING]", "[INFO]", "UserWarning", "it/s]",
)


def test_cli_train_stage_prints_progress_and_no_library_noise(tmp_path, manifest, tiny_model_dir):
    job = make_job(manifest, tiny_model_dir, tmp_path / "data", training={"maxSteps": 2, "logIntervalSteps": 1},
                   deepspeed={"zeroStage": 2})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job.model_dump(by_alias=True, exclude_none=True, mode="json")))
    proc = subprocess.run(
        [sys.executable, "-m", "forgetless_cli", "stage", "train", "--job", str(path), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, env=clean_env(), cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert "[train] step 2/2" in proc.stderr  # forgetless' own progress is still there
    found = [needle for needle in NOISE if needle in output]
    assert not found, f"noise on the console: {found}\n{output[-3000:]}"
    # and the switch to see everything works (the test could fail: the noise is real without silence())
    loud = subprocess.run(
        [sys.executable, "-m", "forgetless_cli", "stage", "train", "--job", str(path), "--workdir", str(tmp_path / "loud")],
        capture_output=True, text=True, timeout=300, env=clean_env(FORGETLESS_VERBOSE="1"), cwd=REPO,
    )
    assert loud.returncode == 0 and any(needle in loud.stdout + loud.stderr for needle in NOISE)
