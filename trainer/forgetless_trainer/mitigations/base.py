"""The one small interface every mitigation implements, and what the trainer hands to it.

A mitigation overrides only the hooks it needs (all default to doing nothing):

- `configure_model(model, ctx) -> model`  before DeepSpeed wraps the model, after the training
  method (forgetless_trainer.methods, not a mitigation) chose the trainable parameters (EWC
  estimates its Fisher here, on those).
- `mix_parts(ctx) -> [MixPart]`           extra data in each epoch (data_mixing, replay).
- `loss_term(model) -> Tensor | None`     added to the task loss every micro-step (EWC).
- `batch_loss_term(model, batch, logits) -> Tensor | None`  the same, from the micro-batch and its logits
  (self-distillation); `batch["general"]` marks the general-data rows when `wants_sources` is set.
- `on_train_start(trainer)`               after the engine exists (forgetting budget: probe at step 0).
- `on_step_end(step, trainer) -> Stop | None`  after each optimizer step (early stopping, budget).
- `on_train_end(trainer)`                 after the last step (replay buffer, EWC state).
- `state_dict()` / `load_state_dict(d)`   saved in every checkpoint so a resumed run continues exactly.
- `summary() -> dict`                     merged into the train stage's summary.json.
- `from_spec(spec, extras)` (classmethod)  how the registry builds it (default: no arguments).

The registry in `forgetless_trainer.mitigations` picks them from the spec; they compose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol

from forgetless import contract
from forgetless.api.schema import FineTuneJob
from forgetless.errors import StageError

if TYPE_CHECKING:
    from forgetless_trainer.data import Encoder, Example, MixPart


@dataclass
class Stop:
    """Returned by `on_step_end` to end training early (weights already restored by the mitigation)."""

    reason: str  # early_stopping | forgetting_budget
    message: str


@dataclass
class TrainContext:
    """What mitigations may read before training: the job, ranks, paths, tokenizer, data."""

    job: FineTuneJob
    workdir: Path
    rank: int = 0
    world_size: int = 1
    base_dir: Path | None = None
    tokenizer: Any = None
    encoder: "Encoder | None" = None
    task_train: "list[Example]" = field(default_factory=list)
    validation: "list[Example]" = field(default_factory=list)
    resuming: bool = False
    device: Any = "cpu"
    general_loader: Callable[[], "list[Example]"] | None = None
    method: Any = None
    """The job's forgetless_trainer.methods.Method: the trainer sets the one it runs (built once) before any
    hook is called; a test that calls a hook needing it (EWC's online anchor) passes one."""
    log: Callable[[str], None] = print
    _general: "list[Example] | None" = None

    @property
    def spec(self):
        return self.job.spec

    @property
    def train_dir(self) -> Path:
        return self.workdir / contract.TRAIN_DIR

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def general(self) -> "list[Example]":
        """General data (dataset.general), read once, on first use."""
        if self._general is None:
            if self.general_loader is None:
                raise RuntimeError("no general data loader configured")
            self._general = self.general_loader()
        return self._general


class TrainerView(Protocol):
    """What the training loop exposes to `on_train_start` / `on_step_end` / `on_train_end`."""

    ctx: TrainContext
    step: int

    @property
    def model(self) -> Any: ...

    def validation_loss(self) -> float: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, snapshot: dict[str, Any]) -> None: ...

    def all_agree(self, flag: bool) -> bool: ...

    def message(self, text: str) -> None: ...

    def scale_learning_rate(self, factor: float) -> None:
        """Multiply the learning rate (and the rest of its schedule) by `factor` from the next step."""

    steps_taken: int
    position: tuple[int, int]

    def rewind(self, step: int, position: tuple[int, int]) -> None:
        """After this step, train again from `step` (data at `position`, the schedule at `step`)."""

    def replan(self) -> None:
        """A mix part's fraction changed: the current epoch's composition is rebuilt before the next step."""

    def general_kl(self) -> float | None:
        """The mean per-token KL(base‖model) on the general probe items now (training/general_kl.py);
        None when it cannot be measured. The forgetting budget calls it at every probe."""


class Mitigation:
    name: str = "mitigation"

    @classmethod
    def from_spec(cls, spec: Any, extras: dict[str, Any]) -> "Mitigation":
        """Built by the registry from the job spec (extras: the forgetting budget's probe)."""
        return cls()

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        return model

    def mix_parts(self, ctx: TrainContext) -> "list[MixPart]":
        return []

    def loss_term(self, model: Any) -> Any:
        return None

    wants_sources: bool = False
    """Whether `batch_loss_term` needs `batch["general"]` (a bool per row: the example came from dataset.general)."""

    def batch_loss_term(self, model: Any, batch: dict[str, Any], logits: Any) -> Any:
        return None

    def on_train_start(self, trainer: TrainerView) -> None:
        return None

    def on_step_end(self, step: int, trainer: TrainerView) -> Stop | None:
        return None

    def on_train_end(self, trainer: TrainerView) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}


def find_job_artifact(source: Any, ctx: TrainContext, filename: str, field_name: str) -> Path:
    """Where an earlier job's `filename` (replay_buffer.jsonl, ewc_state.pt) is.

    `source` is a ReplaySource:
    - `path`: the file itself, or a directory: an earlier job's work dir (`<dir>/train/<file>`),
      its train dir (`<dir>/<file>`) or its output dir (`<dir>/../<file>`, i.e. WORKDIR/train/output).
      Relative paths are relative to `base_dir` when given, else to the current directory (the
      stages pass none).
    - `fineTuneJob: NAME`: jobs' work dirs are siblings, so the earlier job's work dir is
      `<this job's work dir>/../NAME` (locally: `forgetless run` work dirs side by side; in the
      cluster: `<pvc root>/<claim>/<subPath>/NAME` on the shared output volume).
    """
    from forgetless import locations

    if source.fine_tune_job is not None:
        start = ctx.workdir.resolve().parent / source.fine_tune_job
        described = f"fineTuneJob {source.fine_tune_job!r} (looked in its work dir {start})"
    else:
        start = locations.resolve_path(source.path, kind="data", base_dir=ctx.base_dir)
        described = f"path {str(start)!r}"
    if start.is_file():
        return start
    for candidate in (start / contract.TRAIN_DIR / filename, start / filename, start.parent / filename):
        if candidate.is_file():
            return candidate
    raise StageError(
        f"{field_name}: no {filename} for {described}; name an earlier job's work dir, its output dir or "
        f"the {filename} file itself (the earlier job must have finished its train stage)"
    )
