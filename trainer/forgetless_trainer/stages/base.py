"""What a stage is: built from the job by the registry in forgetless_trainer.stages, run in a work dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Stage:
    """One stage of the pipeline (baseline, train, evaluate). `run` returns the stage's summary."""

    name: str = "stage"

    def __init__(self, job: Any) -> None:
        self.job = job

    @classmethod
    def from_spec(cls, job: Any, extras: dict[str, Any]) -> "Stage":
        """Built by the registry from the FineTuneJob (a stage needs its metadata too, not only the spec)."""
        return cls(job)

    def run(self, workdir: Path) -> dict[str, Any]:
        raise NotImplementedError
