"""The Fisher engine of EWC: the diagonal empirical Fisher of a model's trainable parameters from
per-sample gradients, computed batched (hooks on Linear / Embedding / norm layers, the way Opacus
does; torch.func vmap(grad) for anything else). See ewc.py for the method and its choices."""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from forgetless_trainer.data import Encoder, Example, token_nll



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
