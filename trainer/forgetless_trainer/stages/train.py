"""The `train` stage: fine-tune the job's model with its mitigations (see forgetless_trainer.training.loop).

It first loads the regression suite (cheap), so a suite with a malformed line, an item missing its
target or an unknown scorer fails the stage before a step is trained.

Relative data/model paths resolve against the current directory (in a pod the image's working
directory; locally where `forgetless run` was started).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetless.api.schema import FineTuneJob
from forgetless_trainer.stages.base import Stage


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    from forgetless_trainer.evaluation.runner import resolve_target
    from forgetless_trainer.training.loop import train

    # the suite's preflight: a bad suite fails here, before a step is trained, also when the operator
    # skipped the baseline stage on a cached baseline (StageError names the file, line and field)
    if job.spec.regression.suite.lm_eval_tasks is None:
        resolve_target(job.spec.regression)
    return train(job, Path(workdir)).summary


class Train(Stage):
    name = "train"

    def run(self, workdir: Path) -> dict[str, Any]:
        return run(self.job, workdir)
