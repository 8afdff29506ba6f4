"""The EWC penalty λ/2·Σ F_i(θ_i − θ*_i)² over flat fp32 buffers (`FlatState`, `FusedPenalty`): a few
memory passes per step, the gradient λ·F·(θ−θ*) handed back directly. See ewc.py."""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch


def _flat_views(flat: torch.Tensor, shapes: Sequence[torch.Size]) -> list[torch.Tensor]:
    views, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[offset : offset + size].view(shape))
        offset += size
    return views


class FlatState:
    """Named tensors stored in one flat fp32 buffer, with per-name views into it."""

    def __init__(self, named: dict[str, torch.Tensor], device: Any = None):
        self.names = list(named)
        tensors = [named[n].detach().to(device=device, dtype=torch.float32) for n in self.names]
        self.shapes = [t.shape for t in tensors]
        self.flat = torch.cat([t.reshape(-1) for t in tensors]) if tensors else torch.zeros(0, device=device)
        self.views = _flat_views(self.flat, self.shapes)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {n: v.clone().cpu() for n, v in zip(self.names, self.views)}


class FusedPenalty:
    """λ/2·Σ F(θ−θ*)² over flat fp32 buffers, reusing two work buffers every step.

    Forward (no autograd graph): θ − θ* written straight into a flat work buffer (per tensor,
    `out=`; also casts bf16 → fp32), times F into a second buffer, one dot product. Backward: one
    scaled copy of F·(θ−θ*), split into views shaped like the parameters. Four memory passes over
    the trainable parameters, with no per-step allocation but the returned gradient.
    """

    def __init__(self, fisher: torch.Tensor, anchor: torch.Tensor, shapes: Sequence[torch.Size], lam: float):
        if fisher.shape != anchor.shape or fisher.numel() != sum(math.prod(s) for s in shapes):
            raise ValueError("fisher, anchor and parameter shapes do not line up")
        self.fisher, self.anchor, self.shapes, self.lam = fisher, anchor, list(shapes), float(lam)
        self.sizes = [math.prod(s) for s in self.shapes]
        self.diff = torch.empty_like(anchor)
        self.weighted = torch.empty_like(anchor)
        self.diff_views = _flat_views(self.diff, self.shapes)
        self.anchor_views = _flat_views(anchor, self.shapes)

    def __call__(self, params: Sequence[torch.Tensor]) -> torch.Tensor:
        return _Penalty.apply(self, *params)


class _Penalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, state: FusedPenalty, *params: torch.Tensor):
        with torch.no_grad():
            for p, a, d in zip(params, state.anchor_views, state.diff_views):
                torch.sub(p.detach(), a, out=d)  # θ − θ* straight into the flat buffer (casts bf16 → fp32)
            torch.mul(state.diff, state.fisher, out=state.weighted)  # F·(θ − θ*)
            value = torch.dot(state.diff, state.weighted) * (state.lam / 2.0)
        ctx.state = state
        ctx.dtypes = [p.dtype for p in params]
        return value

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        state = ctx.state
        flat = state.weighted * (grad_output * state.lam)  # λ·F·(θ − θ*), a fresh tensor autograd may keep
        grads = [g.view(shape) for g, shape in zip(flat.split(state.sizes), state.shapes)]
        grads = [g if g.dtype == dt else g.to(dt) for g, dt in zip(grads, ctx.dtypes)]
        return (None, *grads)


def ewc_penalty(
    params: Sequence[torch.Tensor], fisher: Sequence[torch.Tensor], anchor: Sequence[torch.Tensor], lam: float
) -> torch.Tensor:
    """λ/2·Σ_i F_i(θ_i − θ*_i)² over aligned lists (differentiable w.r.t. `params`); one-off form of FusedPenalty."""
    flat = lambda ts: torch.cat([t.detach().reshape(-1).float() for t in ts])  # noqa: E731
    return FusedPenalty(flat(fisher), flat(anchor), [p.shape for p in params], lam)(params)
