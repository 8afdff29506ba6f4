"""Data mixing: a fixed share of every epoch is general data (`dataset.general`).

Exactly `round_half_up(generalFraction · epoch_size)` examples of each epoch are general
(see `forgetless_trainer.data.epoch_plan`); they are drawn cyclically from the shuffled general
pool (reshuffled each epoch), so a small pool repeats and a large one is sampled without repeats.
"""

from __future__ import annotations

from forgetless_trainer.data import MixPart
from forgetless_trainer.mitigations.base import Mitigation, TrainContext


class DataMixing(Mitigation):
    name = "data_mixing"

    def mix_parts(self, ctx: TrainContext) -> list[MixPart]:
        fraction = ctx.spec.mitigation.data_mixing.general_fraction
        self.fraction = fraction
        return [MixPart("general", fraction, ctx.general())]

    def summary(self):
        return {"generalFraction": getattr(self, "fraction", 0.0)}
