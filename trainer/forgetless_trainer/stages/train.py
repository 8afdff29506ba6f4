"""The `train` stage: fine-tune the job's model with its mitigations (see forgetless_trainer.training.loop).

Relative data/model paths resolve against env `FORGETLESS_BASE_DIR` when set (the local runner
sets it to the manifest's directory), else the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetless.api.schema import FineTuneJob


def run(job: FineTuneJob, workdir: Path) -> dict[str, Any]:
    from forgetless_trainer.training.loop import env_base_dir, train

    return train(job, Path(workdir), base_dir=env_base_dir()).summary
