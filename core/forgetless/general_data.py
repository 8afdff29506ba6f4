"""Which general data a job uses, decided from its spec alone (torch-free, shared by the CLI, the
operator and the trainer).

General data is what mixing, self-distillation, the forgetting budget and EWC's Fisher sample draw
on. In order:

1. `dataset.general`, when the job names it: the user's own data wins.
2. Self-rehearsal (`dataset.selfRehearsal`, or its defaults), for every model but the bundled tiny
   world: the base model's own answers to a pool of general prompts, generated once by the baseline
   stage (forgetless_trainer.self_rehearsal). A real chat model has never seen the tiny world's
   sentences; its own answers are exactly what it knew before fine-tuning.
3. `bundled:general` for `bundled:tiny-world` (the world's own sentences, which that model was
   pretrained on).

The forecast's reference (`forecast_reference`) is what the model already says: self-rehearsal for
every model but the tiny world even when `dataset.general` names other data, the world's sentences
for the tiny world.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from forgetless.api.schema import (DEFAULT_REHEARSAL_PROMPTS, TINY_WORLD, DataSource, FineTuneJobSpec,
                                   SelfRehearsalSpec)

WORLD_GENERAL = "bundled:general"


@dataclass(frozen=True)
class GeneralData:
    kind: Literal["named", "world", "selfRehearsal"]
    source: Optional[DataSource] = None
    """The data (named / world); None for self-rehearsal, which the baseline stage writes."""
    rehearsal: Optional[SelfRehearsalSpec] = None

    @property
    def prompts(self) -> DataSource:
        """Self-rehearsal's prompt pool."""
        assert self.rehearsal is not None
        return self.rehearsal.prompts or DataSource(path=DEFAULT_REHEARSAL_PROMPTS)

    def describe(self) -> str:
        """One line for `forgetless validate` / `forgetless run` and the docs."""
        if self.kind == "selfRehearsal":
            r = self.rehearsal
            return (f"self-rehearsal: the base model's own answers to the first {r.size} prompts of "
                    f"{_where(self.prompts)} (up to {r.max_new_tokens} tokens, only answers that end on their own), "
                    "generated at baseline")
        where = _where(self.source)
        if self.kind == "world":
            return f"{where} (the tiny world's own sentences, the default for {TINY_WORLD})"
        return f"{where} (dataset.general)"


def _where(source: DataSource) -> str:
    return source.path or f"configMap {source.config_map.name}"


def general_data(spec: FineTuneJobSpec) -> GeneralData:
    """The job's general data: `dataset.general` when named, else what the model already says."""
    if spec.dataset.general is not None:
        return GeneralData("named", source=spec.dataset.general)
    return forecast_reference(spec)


def forecast_reference(spec: FineTuneJobSpec) -> GeneralData:
    """What the forecast measures the task against: what the model already says. For the tiny world its
    own sentences (unless the job asks for self-rehearsal); for any other model its own answers
    (self-rehearsal, with the job's settings or the defaults), whatever `dataset.general` names, so a
    task's distance does not depend on which general file a job configures."""
    if spec.model.name == TINY_WORLD and spec.dataset.self_rehearsal is None:
        return GeneralData("world", source=DataSource(path=WORLD_GENERAL))
    return GeneralData("selfRehearsal", rehearsal=spec.dataset.self_rehearsal or SelfRehearsalSpec())


def named_sources(spec: FineTuneJobSpec) -> list[DataSource]:
    """Every DataSource the dataset section names (task, general data, a rehearsal prompt pool): the
    volumes and ConfigMaps the stage pods mount."""
    rehearsal = spec.dataset.self_rehearsal
    refs = [spec.dataset.task, spec.dataset.general, rehearsal.prompts if rehearsal else None]
    return [ref for ref in refs if ref is not None]


def trains_on_general_data(spec: FineTuneJobSpec) -> bool:
    """Whether training reads general data (mixing, self-distillation on mixed rows, a forgetting
    budget's corrective mixing, EWC's Fisher sample)."""
    m = spec.mitigation
    return m.data_mixing.general_fraction > 0 or m.ewc is not None or m.forgetting_budget is not None


__all__ = ["GeneralData", "WORLD_GENERAL", "forecast_reference", "general_data", "named_sources",
           "trains_on_general_data"]
