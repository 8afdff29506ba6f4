"""Elastic weight consolidation (Kirkpatrick et al. 2017), with online EWC (Schwarz et al. 2018).

Penalty   λ/2 · Σ_i F_i (θ_i − θ*_i)², added to the task loss at every micro-step.
Fisher    diagonal empirical Fisher on `mitigation.ewc.fisherSamples` general examples
          (`dataset.general`, a seeded choice): F_i = mean over samples of (∂ℓ_s/∂θ_i)², where ℓ_s
          is one example's mean NLL over its response tokens. Per-sample gradients come from one
          batched forward + backward per chunk, never a Python loop over samples: hooks keep each
          layer's input and output gradient, and the per-sample weight gradient is formed from
          them (Linear: Σ_t g_t x_tᵀ; Embedding: g scattered by token id; RMSNorm: Σ_t g_t ⊙ x̂_t;
          a tied weight sums its uses before squaring), the way Opacus does. The backward pass only
          computes activation gradients (parameters are frozen for it). Models with any other kind
          of trainable parameter fall back to torch.func `vmap(grad(functional_call))`. With several
          ranks each rank takes every world-th sample and the sums are all-reduced.
Anchor    θ* = the weights training starts from.
Online    `online: true` with `previous` (an earlier job, see `find_job_artifact`):
          F = decay · F_prev + F_new, and for full fine-tuning θ* = the previous job's final weights
          (read from its `WORKDIR/train/ewc_state.pt`). Every EWC job writes that file: the Fisher
          it used and its final trainable weights, keyed by parameter name.

EWC with LoRA: the penalty covers the trainable parameters only — the adapter's A and B — with the
Fisher computed for those parameters and the anchor at their initial values (B = 0, so the merged
delta B·A starts at 0). Why not the effective merged weights W + B·A: the frozen W never moves, so
(W + BA − W*)² = (BA)², and a penalty on it needs the Fisher of the full base weights (as large as
the model, the very cost LoRA avoids) and a per-step d×k product per adapted layer. Penalising A
and B directly costs O(adapter size), still measures how far the adapter drifts from "no change",
and keeps EWC's "importance of each trained parameter" meaning. In an online chain of LoRA jobs
each job trains a fresh adapter, so the anchor stays at this adapter's init and only Fisher values
of parameters with the same name and shape accumulate.

Memory layout: Fisher and anchor are two flat fp32 buffers; every step θ − θ* is written into a
third, and the penalty is a couple of flat kernels and a dot product
(`FusedPenalty`; a custom autograd function hands back λ·F·(θ−θ*) as the gradient directly, no
autograd graph over the parameters), so it adds a few memory passes per step. With ZeRO 0–2 every
rank holds whole parameters, so this works unchanged; ZeRO-3 is refused by the schema.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

import torch

from forgetless import atomic
from forgetless.errors import StageError
from forgetless_trainer.data import Example
from forgetless_trainer.mitigations.base import Mitigation, TrainContext, TrainerView, find_job_artifact
from forgetless_trainer.mitigations.ewc_fisher import estimate_fisher, trainable_parameters
from forgetless_trainer.mitigations.ewc_penalty import FlatState, FusedPenalty

STATE_FILE = "ewc_state.pt"


# --------------------------------------------------------------------------- mitigation


def fisher_examples(general: Sequence[Example], n: int, seed: int) -> list[Example]:
    """`n` general examples chosen by a generator seeded with `seed` (all of them, if fewer)."""
    order = list(range(len(general)))
    random.Random(f"fisher-{seed}").shuffle(order)
    return [general[i] for i in order[: min(n, len(order))]]


class Ewc(Mitigation):
    name = "ewc"

    def __init__(self) -> None:
        self.fisher: FlatState | None = None
        self.anchor: FlatState | None = None
        self.params: list[torch.Tensor] = []
        self.last_penalty: torch.Tensor | None = None
        self.lam = 0.0
        self.previous: str | None = None
        self.matched = 0

    def configure_model(self, model: Any, ctx: TrainContext) -> Any:
        spec = ctx.spec.mitigation.ewc
        self.lam = float(spec.lambda_)
        named = trainable_parameters(model)
        if not named:
            raise StageError("mitigation.ewc: the model has no trainable parameters")
        samples = fisher_examples(ctx.general(), spec.fisher_samples, ctx.spec.training.seed)
        fisher = estimate_fisher(model, samples, ctx.encoder, rank=ctx.rank, world_size=ctx.world_size)
        anchor = {n: p.detach() for n, p in named}
        if spec.online and spec.previous is not None:
            path = find_job_artifact(spec.previous, ctx, STATE_FILE, "mitigation.ewc.previous")
            fisher, anchor = self._accumulate(path, fisher, anchor, spec.decay, ctx.method)
        device = named[0][1].device
        self.fisher = FlatState(fisher, device)
        self.anchor = FlatState(anchor, device)
        self.penalty = FusedPenalty(self.fisher.flat, self.anchor.flat, self.fisher.shapes, self.lam)
        self.samples = len(samples)
        return model

    def _accumulate(self, path: Path, fisher, anchor, decay: float, method: Any):
        state = torch.load(path, map_location="cpu", weights_only=True)
        prev_fisher, prev_anchor = state.get("fisher", {}), state.get("anchor", {})
        matched = [n for n in fisher if n in prev_fisher and prev_fisher[n].shape == fisher[n].shape]
        if not matched:
            raise StageError(
                f"mitigation.ewc.previous: {path} shares no parameter with this model (it was written by a "
                f"{state.get('method', '?')} job; chain jobs with the same model and method)"
            )
        fisher = {n: decay * prev_fisher[n].to(f) + f if n in matched else f for n, f in fisher.items()}
        if method.trains_base_weights:  # lora: the adapter's anchor stays at its init
            anchor = {n: prev_anchor[n].to(a) if n in matched and n in prev_anchor else a for n, a in anchor.items()}
        self.previous, self.matched = str(path), len(matched)
        return fisher, anchor

    def on_train_start(self, trainer: TrainerView) -> None:
        by_name = dict(trainer.model.named_parameters())
        missing = [n for n in self.fisher.names if n not in by_name]
        if missing:
            raise StageError(f"mitigation.ewc: parameters changed names after wrapping: {missing[:3]}")
        self.params = [by_name[n] for n in self.fisher.names]

    def loss_term(self, model: Any) -> torch.Tensor:
        penalty = self.penalty(self.params)
        self.last_penalty = penalty.detach()
        return penalty

    def on_train_end(self, trainer: TrainerView) -> None:
        ctx = trainer.ctx
        if not ctx.is_main:
            return
        final = trainer.snapshot()
        state = {
            "fisher": self.fisher.as_dict(),
            "anchor": {n: final[n].float().cpu() for n in self.fisher.names},
            "method": ctx.spec.method.type,
            "job": ctx.job.metadata.name,
        }
        with atomic.atomic_file(ctx.train_dir / STATE_FILE) as tmp:
            torch.save(state, tmp)
        self.state_path = str(ctx.train_dir / STATE_FILE)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ewcFisherSamples": getattr(self, "samples", 0)}
        if self.last_penalty is not None:
            out["ewcPenalty"] = float(self.last_penalty)
        if self.previous:
            out["ewcPrevious"] = self.previous
        return out
