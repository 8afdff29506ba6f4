"""General KL: the forward KL(π₀‖π) of the model in training from its base, on the general probe items.

"RL's Razor" (Shenfeld et al., 2025): how much a fine-tune forgets tracks the forward KL between
the base policy π₀ and the fine-tuned π on general inputs. Here it is measured the cheap way, with
forward passes only (no generation, no scoring):

Items
    The regression suite's general-category tasks (every category but `task`), the first
    `probeItems` items of each — the subset the forgetting budget's probe uses. An item's input is
    its prompt rendered exactly as the evaluator renders it (`f"{prompt} =>"` for a base model, the
    chat template's generation prompt for an instruct model); its answer is the item's reference
    answer: `target` for generation items, the correct choice (`choices[target_index]`) for
    multiple-choice items, tokenised as the evaluator tokenises a continuation (`" " + answer`
    after the raw format; the answer right after a chat template's generation prompt). Items with no
    reference answer (a refusal item without `target`, a format-leak item without one) are skipped.

Value
    The mean over every answer token t of KL(π₀(·|x, y<t) ‖ π(·|x, y<t)) =
    Σ_v π₀(v) (log π₀(v) − log π(v)), in nats per token: 0 for the base model, > 0 once it moved.
    Teacher-forced on the reference answer, the model in eval mode (no dropout).

The base distribution π₀
    - LoRA (a peft model): free — the same batch runs again with the adapter disabled
      (`with model.disable_adapter():`), so there is nothing to store.
    - Full fine-tuning: cached once, at train start, from the untouched model (before the first step
      and before a resume loads trained weights). Only answer positions are kept, on the CPU in
      float32: the full distribution when n_answer_tokens × vocab × 4 bytes ≤ FULL_CACHE_LIMIT_BYTES
      (256 MiB: the bundled 3 M model's probe is ~1.5 k tokens × 512 = 3 MB; SmolLM2-135M's
      ~1.5 k × 49 k = 290 MB would not fit), else the top `TOP_K` tokens of π₀ per position plus one
      bucket for the rest of the vocabulary. The KL is then that of the two distributions coarsened
      to those k + 1 buckets — by the data-processing inequality a lower bound of the exact KL, and
      close to it when π₀'s mass is in its top 256 (for a trained LM almost all of it is).
      `reference` in the train summary says which was used.
    Memory stays bounded either way: the KL is computed batch by batch (BATCH_ROWS rows at a time)
    and only the current batch's logits live on the device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

FULL_CACHE_LIMIT_BYTES = 256 * 2**20
TOP_K = 256
BATCH_ROWS = 16


@dataclass(frozen=True)
class Row:
    """One answer: the rendered prompt's ids and the answer's ids (scored positions)."""

    context: tuple[int, ...]
    answer: tuple[int, ...]


def reference_answer(task: Any, item: Any) -> str | None:
    """The item's reference answer: the correct choice of a multiple-choice item, else its `target`."""
    if task.scorer == "multiple_choice":
        return str(item["choices"][item["target_index"]])
    target = item.get("target")
    return target if isinstance(target, str) and target.strip() else None


def _answer_ids(tokenizer: Any, context: str, context_ids: list[int], answer: str, raw: bool) -> list[int]:
    """What the answer adds to the context's tokens (the evaluator's continuation rule)."""
    joined = context + (" " + answer if raw else answer)
    whole = tokenizer(joined, add_special_tokens=raw)["input_ids"]
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer((" " + answer) if raw else answer, add_special_tokens=False)["input_ids"]


def probe_rows(suite: Any, tokenizer: Any, probe_items: int | None, max_length: int | None = None) -> list[Row]:
    """The general probe items of `suite` (first `probe_items` per task) as (context, answer) rows."""
    from forgetless.lifecycle import TASK_CATEGORY
    from forgetless_trainer.chat import chat_format
    from forgetless_trainer.evaluation.evaluator import generation_input

    fmt = chat_format(tokenizer)
    rows: list[Row] = []
    for task in suite.subset(probe_items).tasks:
        if task.category == TASK_CATEGORY:
            continue
        for item in task.items:
            answer = reference_answer(task, item)
            if answer is None:
                continue
            context = fmt.generation_text(item["prompt"]) if fmt else generation_input(item["prompt"])
            context_ids = tokenizer(context, add_special_tokens=fmt is None)["input_ids"]
            answer_ids = _answer_ids(tokenizer, context, context_ids, answer, raw=fmt is None)
            if not answer_ids or not context_ids:
                continue
            if max_length:
                answer_ids = answer_ids[: max(1, max_length - 1)]
                keep = max_length - len(answer_ids)
                context_ids = context_ids[-keep:]  # the end of the prompt (next to the answer) matters most
            rows.append(Row(tuple(context_ids), tuple(answer_ids)))
    return rows


def has_adapter(model: Any) -> bool:
    """A peft model whose adapter can be switched off (LoRA): the base logits come free."""
    return callable(getattr(model, "disable_adapter", None)) and bool(getattr(model, "peft_config", None))


def _device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: Any):
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@dataclass
class _TopK:
    index: Any  # (T, k) long
    logp: Any  # (T, k) float32: log π₀ of those tokens
    tail: Any  # (T,) float32: log of π₀'s mass outside them


@dataclass
class GeneralKL:
    """Measures the mean per-token KL(π₀‖π) of a model on `rows` (see the module doc)."""

    rows: Sequence[Row]
    pad_id: int = 0
    batch_rows: int = BATCH_ROWS
    full_cache_limit_bytes: int = FULL_CACHE_LIMIT_BYTES
    top_k: int = TOP_K
    cache: list[Any] | None = field(default=None, repr=False)
    cache_kind: str | None = None

    @property
    def tokens(self) -> int:
        return sum(len(r.answer) for r in self.rows)

    @property
    def reference(self) -> str:
        """How π₀ is obtained: `cached-full`, `cached-top<k>`, or `adapter-disabled`."""
        return self.cache_kind or "adapter-disabled"

    def _batches(self) -> list[list[int]]:
        order = sorted(range(len(self.rows)), key=lambda i: (len(self.rows[i].context) + len(self.rows[i].answer), i))
        return [order[s: s + self.batch_rows] for s in range(0, len(order), self.batch_rows)]

    def _logprobs(self, model: Any, index: list[int]) -> list[Any]:
        """log π over the vocabulary at each answer position of the rows `index` (float32, one (T, V) each)."""
        import torch

        rows = [self.rows[i] for i in index]
        width = max(len(r.context) + len(r.answer) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for n, row in enumerate(rows):
            sequence = row.context + row.answer
            input_ids[n, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
            mask[n, : len(sequence)] = 1
        device = _device(model)
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        out = []
        for n, row in enumerate(rows):
            begin = len(row.context) - 1  # the logits at position t predict token t + 1
            out.append(torch.log_softmax(logits[n, begin: begin + len(row.answer)].float(), dim=-1))
        return out

    # ------------------------------------------------------------------ the reference

    def cache_reference(self, model: Any) -> None:
        """Store π₀ from `model` (the untouched base) at every answer position (full or top-k, module doc)."""
        import torch

        self.cache = []
        vocab = None
        with torch.no_grad(), _eval_mode(model):
            for index in self._batches():
                logprobs = self._logprobs(model, index)
                if vocab is None:
                    vocab = logprobs[0].shape[-1]
                    full = self.tokens * vocab * 4 <= self.full_cache_limit_bytes
                    self.cache_kind = "cached-full" if full else f"cached-top{min(self.top_k, vocab)}"
                for lp in logprobs:
                    if self.cache_kind == "cached-full":
                        self.cache.append(lp.to("cpu", copy=True))
                    else:
                        top = torch.topk(lp, min(self.top_k, lp.shape[-1]), dim=-1)
                        mass = top.values.exp().sum(-1).clamp(max=1.0)
                        tail = torch.log1p(-mass.clamp(max=1.0 - 1e-7))
                        self.cache.append(_TopK(top.indices.cpu(), top.values.cpu(), tail.cpu()))

    # ------------------------------------------------------------------ measuring

    def measure(self, model: Any) -> float:
        """The mean per-token KL(π₀‖π) in nats of `model` (0.0 with no rows)."""
        import torch

        if not self.rows:
            return 0.0
        use_cache = self.cache is not None
        if not use_cache and not has_adapter(model):
            raise RuntimeError("general KL: no cached base distribution and the model has no adapter to disable")
        total, count, at = 0.0, 0, 0
        with torch.no_grad(), _eval_mode(model):
            for index in self._batches():
                current = self._logprobs(model, index)
                if use_cache:
                    base = self.cache[at: at + len(index)]
                    at += len(index)
                else:
                    with model.disable_adapter():
                        base = self._logprobs(model, index)
                for lp, lp0 in zip(current, base):
                    total += float(token_kl(lp0, lp).sum())
                    count += lp.shape[0]
        return max(total / max(count, 1), 0.0)


def token_kl(base: Any, current: Any) -> Any:
    """KL(π₀‖π) at each position: base is a (…, V) log-prob tensor or a _TopK, current (…, V) log-probs."""
    import torch

    if isinstance(base, _TopK):
        index = base.index.to(current.device)
        lp0 = base.logp.to(current.device)
        lp = current.gather(-1, index)
        tail0 = base.tail.to(current.device)
        tail = torch.log1p(-lp.exp().sum(-1).clamp(max=1.0 - 1e-7))
        return (lp0.exp() * (lp0 - lp)).sum(-1) + tail0.exp() * (tail0 - tail)
    base = base.to(current.device)
    return (base.exp() * (base - current)).sum(-1)


def for_job(job: Any, tokenizer: Any, *, base_dir: Path | None = None, max_length: int | None = None) -> GeneralKL:
    """The job's general KL on its regression suite's general items (probeItems of the forgetting
    budget per task, its default 16 without one). Raises StageError when the suite cannot be read
    or is lm-eval tasks (no item answers to score)."""
    from forgetless.api.schema import ForgettingBudgetSpec
    from forgetless.errors import StageError
    from forgetless.suites import LmEvalSuite, SuiteError, resolve_suite

    spec = job.spec
    regression = spec.regression
    if regression.suite.lm_eval_tasks:
        raise StageError("general KL needs a suite of items (regression.suite.path/configMap), not lmEvalTasks")
    try:
        suite = resolve_suite(regression.suite, base_dir=base_dir)
    except SuiteError as exc:
        raise StageError(f"spec.regression.suite: {exc}") from exc
    if isinstance(suite, LmEvalSuite):
        raise StageError(f"general KL needs a suite of items; {suite.name} is lm-evaluation-harness tasks")
    budget = spec.mitigation.forgetting_budget or ForgettingBudgetSpec()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = probe_rows(suite, tokenizer, budget.probe_items, max_length)
    return GeneralKL(rows, pad_id=pad)
