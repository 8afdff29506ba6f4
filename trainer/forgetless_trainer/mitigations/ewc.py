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

import contextlib
import math
import random
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from forgetless import atomic
from forgetless_trainer.data import Encoder, Example, token_nll
from forgetless_trainer.mitigations.base import Mitigation, TrainContext, TrainerView, find_job_artifact
from forgetless.errors import StageError

STATE_FILE = "ewc_state.pt"


# --------------------------------------------------------------------------- math


def sequence_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the labelled positions of each row: (batch,) from (batch, T, V), (batch, T)."""
    nll, mask = token_nll(logits, labels)
    return (nll * mask).sum(-1) / mask.sum(-1).clamp(min=1)


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def per_sample_squared_grads(
    model: torch.nn.Module, names: Sequence[str], input_ids: torch.Tensor, labels: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Σ over the rows of (∂ℓ_row/∂θ)² for the parameters `names`, via vmap(grad(functional_call))."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if n in set(names)}

    def loss(trainable: dict[str, torch.Tensor], ids: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        # Right padding + the causal mask: padding only follows real tokens, so no attention mask is needed.
        out = functional_call(model, trainable, args=(), kwargs={"input_ids": ids.unsqueeze(0), "use_cache": False})
        return sequence_nll(out.logits, lab.unsqueeze(0))[0]

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, input_ids, labels)
    return {n: g.pow(2).sum(0) for n, g in grads.items()}


def _kind(module: torch.nn.Module) -> str | None:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
        return "rmsnorm"
    return None


def hook_plan(model: torch.nn.Module, names: Sequence[str]) -> list[tuple[torch.nn.Module, str]] | None:
    """The (module, kind) uses of the parameters `names`, or None when one of them sits in a module
    the hook path cannot differentiate per sample (then vmap is used)."""
    wanted = {id(p): n for n, p in model.named_parameters() if n in set(names)}
    covered: set[int] = set()
    plan = []
    for module in model.modules():
        mine = [(local, p) for local, p in module.named_parameters(recurse=False) if id(p) in wanted]
        if not mine:
            continue
        kind = _kind(module)
        if kind is None or any(local not in ("weight", "bias") for local, _ in mine):
            return None
        if kind != "linear" and any(local == "bias" for local, _ in mine):
            return None
        plan.append((module, kind))
        covered.update(id(p) for _, p in mine)
    if covered != set(wanted):
        return None
    return plan


def per_sample_squared_grads_hooked(
    model: torch.nn.Module,
    names: Sequence[str],
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    plan: list[tuple[torch.nn.Module, str]],
) -> dict[str, torch.Tensor]:
    """Σ over the rows of (∂ℓ_row/∂θ)², from one batched forward + backward (see the module docstring).

    Rows are independent (right padding + the causal mask, no batch statistics, eval mode), so the
    gradient of Σ_row ℓ_row with respect to one row's activations is that row's own gradient.
    """
    by_id = {id(p): n for n, p in model.named_parameters() if n in set(names)}
    records: list[tuple[torch.nn.Module, str, torch.Tensor, dict[str, torch.Tensor]]] = []
    embeddings = model.get_input_embeddings()
    source: list[torch.Tensor] = []
    kinds = {id(m): k for m, k in plan}

    def forward_hook(module, inputs, output):
        kind = kinds.get(id(module))
        if module is embeddings and not output.requires_grad:
            output = output.detach().requires_grad_()  # the graph starts here: parameters are frozen
            source.append(output)
        if kind is not None:
            store: dict[str, torch.Tensor] = {}
            output.register_hook(lambda g, store=store: store.__setitem__("g", g.detach()))
            records.append((module, kind, inputs[0].detach(), store))
        return output

    hooked = {id(m): m for m, _ in plan}
    hooked.setdefault(id(embeddings), embeddings)
    handles = [m.register_forward_hook(forward_hook) for m in hooked.values()]
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        out = model(input_ids=input_ids, use_cache=False)
        loss = sequence_nll(out.logits, labels).sum()
        torch.autograd.grad(loss, source)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)

    rows = input_ids.shape[0]
    records = [r for r in records if "g" in r[3]]  # a layer off the loss's path has zero gradient
    # a weight used by several modules (embedding tied to the LM head) sums its per-sample parts
    # before squaring; every other per-sample gradient is squared and summed as soon as it exists,
    # so at most one layer's (rows × weight) tensor is alive at a time
    uses: dict[str, int] = {}
    for module, kind, _, _ in records:
        for p in (module.weight, getattr(module, "bias", None) if kind == "linear" else None):
            if p is not None and id(p) in by_id:
                uses[by_id[id(p)]] = uses.get(by_id[id(p)], 0) + 1
    pending: dict[str, torch.Tensor] = {}
    squared: dict[str, torch.Tensor] = {}

    def add(param: torch.Tensor | None, grad: torch.Tensor) -> None:
        name = by_id.get(id(param)) if param is not None else None
        if name is None:
            return
        grad = pending.pop(name) + grad if name in pending else grad
        uses[name] -= 1
        if uses[name]:
            pending[name] = grad
        else:
            part = grad.pow_(2).sum(0)
            squared[name] = squared[name] + part if name in squared else part

    for module, kind, x, store in records:
        g = store["g"].float()
        per_row = g.reshape(rows, -1, g.shape[-1])  # (rows, positions, features)
        if kind == "linear":
            add(module.weight, torch.bmm(per_row.transpose(1, 2), x.float().reshape(rows, -1, x.shape[-1])))
            if module.bias is not None:
                add(module.bias, per_row.sum(1))
        elif kind == "embedding":
            vocab, dim = module.weight.shape
            flat = torch.zeros(rows * vocab, dim, dtype=g.dtype, device=g.device)
            offsets = (torch.arange(rows, device=x.device) * vocab).view(rows, *([1] * (x.dim() - 1)))
            flat.index_add_(0, (x + offsets).reshape(-1), g.reshape(-1, dim))
            grad = flat.view(rows, vocab, dim)
            if module.padding_idx is not None:
                grad[:, module.padding_idx] = 0
            add(module.weight, grad)
        else:  # rmsnorm: y = w ⊙ x̂ with x̂ = x / rms(x), computed in float32 as the module does
            h = x.float()
            normed = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)).to(x.dtype).float()
            add(module.weight, (per_row * normed.reshape(per_row.shape)).sum(1))
    params = dict(model.named_parameters())
    return {n: squared[n] if n in squared else torch.zeros_like(params[n], dtype=torch.float32) for n in names}


@contextlib.contextmanager
def eager_attention(model: torch.nn.Module):
    """Run with eager attention: SDPA's backward has no vmap batching rule (it would fall back to a loop)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = before not in (None, "eager") and hasattr(inner, "set_attn_implementation")
    if switch:
        inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        if switch:
            inner.set_attn_implementation(before)


def estimate_fisher(
    model: torch.nn.Module,
    examples: Sequence[Example],
    encoder: Encoder,
    *,
    chunk_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    method: str = "auto",
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of the trainable parameters over `examples` (mean of squared per-sample grads).

    `method`: "auto" (hooks when every trainable parameter sits in a Linear, Embedding or RMSNorm,
    else vmap) or "vmap" (always torch.func)."""
    if method not in ("auto", "vmap"):
        raise ValueError(f"method must be 'auto' or 'vmap', not {method!r}")
    named = trainable_parameters(model)
    names = [n for n, _ in named]
    plan = hook_plan(model, names) if method == "auto" else None
    if chunk_size is None:  # ≤ 256 MB of per-sample gradients alive at once
        if plan is not None:  # one layer at a time (a tied weight: its uses summed, so twice its size)
            per_sample_bytes = 8 * max((p.numel() for _, p in named), default=1)
        else:  # vmap materialises every parameter's per-sample gradient
            per_sample_bytes = 4 * sum(p.numel() for _, p in named)
        chunk_size = int(max(1, min(32, (256 << 20) // max(per_sample_bytes, 1))))
    device = named[0][1].device if named else torch.device("cpu")
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in named}
    # similar lengths share a chunk: less padding to compute through (the sum does not depend on order)
    mine = sorted(list(examples)[rank::world_size], key=lambda e: len(encoder.encode(e)[0]))
    was_training = model.training
    model.eval()
    try:
        with contextlib.nullcontext() if plan is not None else eager_attention(model):
            for start in range(0, len(mine), chunk_size):
                batch = encoder.batch(mine[start : start + chunk_size])
                ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
                if plan is not None:
                    sq = per_sample_squared_grads_hooked(model, names, ids, labels, plan)
                else:
                    sq = per_sample_squared_grads(model, names, ids, labels)
                for n in names:
                    sums[n] += sq[n].float()
    finally:
        model.train(was_training)
    count = torch.tensor(float(len(mine)), device=device)
    if world_size > 1:
        import torch.distributed as dist

        flat = torch.cat([sums[n].reshape(-1) for n in names] + [count.reshape(1)])
        dist.all_reduce(flat)
        count = flat[-1]
        offset = 0
        for n in names:
            size = sums[n].numel()
            sums[n] = flat[offset : offset + size].view_as(sums[n])
            offset += size
    return {n: s / count.clamp(min=1) for n, s in sums.items()}


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
