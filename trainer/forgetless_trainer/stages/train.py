"""The `train` stage: fine-tune the job's model with its mitigations (see forgetless_trainer.training.loop).

It first loads the regression suite (cheap), so a suite with a malformed line, an item missing its
target or an unknown scorer fails the stage before a step is trained.

Relative data/model paths resolve against env `FORGETLESS_BASE_DIR` when set (the local runner
sets it to the manifest's directory), else the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetless.api.schema import FineTuneJob


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    from forgetless_trainer.evaluation.runner import resolve_target
    from forgetless_trainer.training.loop import env_base_dir, train

    base_dir = env_base_dir()
    # the suite's preflight: a bad suite fails here, before a step is trained, also when the operator
    # skipped the baseline stage on a cached baseline (StageError names the file, line and field)
    if job.spec.regression.suite.lm_eval_tasks is None:
        resolve_target(job.spec.regression, base_dir=base_dir)
    return train(job, Path(workdir), base_dir=base_dir).summary
