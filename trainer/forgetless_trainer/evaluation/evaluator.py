"""Batched, deterministic evaluation of a causal LM on a regression suite.

Generation items (exact_match, format_compliance, refusal, format_leak): input `f"{prompt} =>"`
(docs/contracts.md) for a base model; an instruct model (its tokenizer carries a chat template,
forgetless_trainer.chat) gets the prompt as one user turn rendered with the generation prompt, and
generation also stops at the template's end-of-turn token; greedy decoding with the KV cache through `model.generate`, left padding,
up to the task's max_new_tokens or EOS; the answer is the decoded continuation, stripped. Items
of all tasks are pooled and sorted by (max_new_tokens, prompt length) so batches carry little
padding and stop early; a row never keeps tokens past its own task's max_new_tokens.

Multiple-choice items: the summed log-probability of each choice `f" {choice}"` as the
continuation of the prompt (tokenised as lm-evaluation-harness does: the continuation is what
the whole string adds to the context's tokens); an item's context is run once and its KV cache
shared by its choices (`_loglikelihoods`); the answer is the argmax choice (of the mean per token with the task option
`length_normalized`).

The model's train/eval mode is restored afterwards, so the trainer's forgetting-budget probe can
call this mid-training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from forgetless.suites import Suite, SuiteTask
from forgetless_trainer.chat import chat_format
from forgetless_trainer.evaluation import scorers
from forgetless_trainer.evaluation.results import EvaluationResult, ItemResult

PROMPT_SUFFIX = " =>"


Progress = Callable[[int, int], None]
"""progress(done, total) for generated items."""


def generation_input(prompt: str) -> str:
    return f"{prompt}{PROMPT_SUFFIX}"


def item_context(fmt: Any, item: dict) -> str:
    """The text a generation or multiple-choice item is prompted with: through the chat template (its
    `messages` when it carries the turns before the answer, else its prompt as one user turn after its
    optional `system`), else the raw `prompt =>` format."""
    if fmt is None:
        return generation_input(item["prompt"])
    if item.get("messages"):
        return fmt.render(tuple((role, content) for role, content in item["messages"]), add_generation_prompt=True)
    return fmt.generation_text(item["prompt"], item.get("system"))


@dataclass
class GenerationRequest:
    """Prompt token ids and the answer budget."""

    ids: list[int]
    max_new_tokens: int


@dataclass
class Answer:
    text: str
    ended: bool
    """The answer stopped on its own (EOS or the template's end of turn) within its budget."""


@dataclass
class _Request(GenerationRequest):
    task: SuiteTask | None = None
    item: dict | None = None


def _special_ids(tokenizer: Any) -> tuple[int, int | None]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else 0
    return pad, eos


def _max_context(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def _padded(sequences: list[list[int]], pad: int, left: bool) -> tuple[Any, Any]:
    """(input_ids, attention_mask) of `sequences` padded to one width, on the left or the right."""
    import torch

    width = max(len(seq) for seq in sequences)
    input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


def generate_answers(
    model: Any, tokenizer: Any, requests: Sequence[GenerationRequest], batch_size: int, progress: Progress | None = None
) -> list[Answer]:
    """Greedy answers to `requests`, batched by budget and length (see the module doc), in request order."""
    import torch

    pad, eos = _special_ids(tokenizer)
    fmt = chat_format(tokenizer)
    stops = [t for t in dict.fromkeys([eos, fmt.end_of_turn_id() if fmt else None]) if t is not None]
    device = _device(model)
    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, len(requests[i].ids), i))
    answers: list[Answer] = [Answer("", False)] * len(requests)
    max_context = _max_context(model)
    for start in range(0, len(order), batch_size):
        batch = [requests[i] for i in order[start:start + batch_size]]
        max_new = max(r.max_new_tokens for r in batch)
        prompts = [r.ids for r in batch]
        if max_context:
            keep = max(1, max_context - max_new)
            prompts = [ids[-keep:] for ids in prompts]  # left-truncate overlong prompts
        input_ids, attention = _padded(prompts, pad, left=True)
        width = input_ids.shape[1]
        output = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            pad_token_id=pad,
            eos_token_id=stops or None,
            use_cache=True,
        )
        new_tokens = output[:, width:].tolist()
        for row, request in enumerate(batch):
            tokens = new_tokens[row][: request.max_new_tokens]
            cut = [tokens.index(t) for t in stops if t in tokens]
            if cut:
                tokens = tokens[: min(cut)]
            text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
            answers[order[start + row]] = Answer(text, bool(cut))
        if progress is not None:
            progress(start + len(batch), len(requests))
    return answers


def _continuation(tokenizer: Any, context: str, context_ids: list[int], choice: str, specials: bool = True) -> list[int]:
    whole = tokenizer(context + " " + choice, add_special_tokens=specials)["input_ids"]
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer(" " + choice, add_special_tokens=False)["input_ids"]


def _loglikelihoods(model: Any, tokenizer: Any, rows: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """Summed log-probability of each (context, continuation) row's continuation.

    The choices of one item share their context, so the context is run once: a batch of distinct
    contexts (with at most `batch_size` choices in all) but their last token goes through the model left-padded (positions from the attention
    mask, as `generate` does) and keeps its KV cache; the cache is repeated per choice and each row
    runs only `[last context token] + continuation[:-1]`, whose logits score the continuation.
    Same sums as one forward pass over context + continuation (tested), ~k times less context work
    for k choices. Falls back to full rows when a context is a single token or the model returns no
    cache.
    """
    import torch

    contexts: dict[tuple[int, ...], list[int]] = {}
    for i, (context, _) in enumerate(rows):
        contexts.setdefault(tuple(context), []).append(i)
    if any(len(c) < 2 for c in contexts):
        return _full_loglikelihoods(model, tokenizer, rows, batch_size)
    pad, _ = _special_ids(tokenizer)
    device = _device(model)
    out: list[float] = [0.0] * len(rows)
    groups = sorted(contexts.items(), key=lambda kv: (len(kv[0]), kv[1][0]))
    for batch in _row_bounded(groups, batch_size):
        prefixes = [list(context[:-1]) for context, _ in batch]
        prefix_ids, prefix_mask = _padded(prefixes, pad, left=True)
        positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            first = model(input_ids=prefix_ids.to(device), attention_mask=prefix_mask.to(device),
                          position_ids=positions.to(device), use_cache=True, logits_to_keep=1)
        cache_arg = "cache" if getattr(first, "cache", None) is not None else "past_key_values"  # transformers 5 / 4
        cache = getattr(first, cache_arg, None)
        members = [(g, i) for g, (_, indices) in enumerate(batch) for i in indices]
        if cache is None:
            for (g, i), value in zip(members, _full_loglikelihoods(model, tokenizer, [rows[i] for _, i in members], batch_size)):
                out[i] = value
            continue
        cache.reorder_cache(torch.tensor([g for g, _ in members], dtype=torch.long, device=device))
        suffixes = [[rows[i][0][-1]] + rows[i][1][:-1] for _, i in members]
        suffix_ids, suffix_mask = _padded(suffixes, pad, left=False)
        span = suffix_ids.shape[1]
        lengths = torch.tensor([len(prefixes[g]) for g, _ in members], dtype=torch.long)
        suffix_positions = lengths[:, None] + torch.arange(span)[None, :]
        mask = torch.cat([prefix_mask[[g for g, _ in members]], suffix_mask], dim=1)
        with torch.no_grad():
            logits = model(input_ids=suffix_ids.to(device), attention_mask=mask.to(device),
                           position_ids=suffix_positions.to(device), use_cache=True, **{cache_arg: cache}).logits
        for row, (_, i) in enumerate(members):
            continuation = rows[i][1]
            out[i] = _summed_logprob(logits[row, : len(continuation)], continuation)
    return out


def _row_bounded(groups: list[tuple[tuple[int, ...], list[int]]], batch_size: int):
    """Consecutive runs of contexts holding at most `batch_size` rows (choices) in all, at least one
    context each: a batch's memory is that of `batch_size` rows, as for generation."""
    batch: list[tuple[tuple[int, ...], list[int]]] = []
    rows = 0
    for group in groups:
        if batch and rows + len(group[1]) > batch_size:
            yield batch
            batch, rows = [], 0
        batch.append(group)
        rows += len(group[1])
    if batch:
        yield batch


def _full_loglikelihoods(model: Any, tokenizer: Any, rows: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """One forward pass per row over context + continuation (right-padded batches)."""
    import torch

    pad, _ = _special_ids(tokenizer)
    device = _device(model)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]) + len(rows[i][1]), i))
    out: list[float] = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        sequences = [rows[i][0] + rows[i][1] for i in index]
        input_ids, attention = _padded(sequences, pad, left=False)
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, i in enumerate(index):
            context, continuation = rows[i]
            begin = len(context) - 1  # the logits at position t predict token t + 1
            out[i] = _summed_logprob(logits[row, begin: begin + len(continuation)], continuation)
    return out


def _summed_logprob(span: Any, continuation: list[int]) -> float:
    """Sum of log p(continuation[j]) from `span[j]`, the logits that predict it."""
    import torch

    targets = torch.tensor(continuation, dtype=torch.long, device=span.device)
    return float(torch.log_softmax(span.float(), dim=-1).gather(1, targets[:, None]).sum())


def _device(model: Any) -> Any:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        import torch

        return torch.device("cpu")


def evaluate_suite(
    model: Any,
    tokenizer: Any,
    suite: Suite,
    *,
    limit: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    learned_tasks: Sequence[str] = (),
    leak_detector: Callable[[Sequence[str]], Sequence[bool]] | None = None,
) -> EvaluationResult:
    """Score `model` on `suite` (first `limit` items per task when given); see the module doc.

    `progress(done, total)` is called after each generation batch (long evaluations show progress).
    `learned_tasks`: format_leak tasks scored by `leak_detector(answers) -> task-like flags` (an item
    passes when its answer is not task-like); without a detector their items keep their answers and
    the score NaN, for the baseline stage to score once it has learned the detector
    (forgetless_trainer.evaluation.runner).
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    suite = suite.subset(limit)
    began = time.perf_counter()
    was_training = getattr(model, "training", False)
    model.eval()
    generation: list[_Request] = []
    choice_rows: list[tuple[list[int], list[int]]] = []
    choice_spans: list[tuple[SuiteTask, dict, int, int]] = []
    fmt = chat_format(tokenizer)  # an instruct model is prompted through its chat template
    for task in suite.tasks:
        for item in task.items:
            context = item_context(fmt, item)
            context_ids = tokenizer(context, add_special_tokens=fmt is None)["input_ids"]
            if task.is_generation:
                generation.append(_Request(context_ids, task.max_new_tokens, task, item))
            else:
                first = len(choice_rows)
                for choice in item["choices"]:
                    choice_rows.append((context_ids, _continuation(tokenizer, context, context_ids, choice, fmt is None)))
                choice_spans.append((task, item, first, len(choice_rows)))
    try:
        with torch.no_grad():
            answers = [a.text for a in generate_answers(model, tokenizer, generation, batch_size, progress)] if generation else []
            logliks = _loglikelihoods(model, tokenizer, choice_rows, batch_size) if choice_rows else []
    finally:
        if was_training:
            model.train()

    scored: dict[tuple[str, str], ItemResult] = {}
    learned = set(learned_tasks)
    learned_answers = [a for r, a in zip(generation, answers) if r.task.name in learned]
    detector_began = time.perf_counter()
    flags = iter(leak_detector(learned_answers) if leak_detector is not None and learned_answers else ())
    detector_seconds = time.perf_counter() - detector_began
    for request, answer in zip(generation, answers):
        if request.task.name in learned:
            score = float("nan") if leak_detector is None else float(not next(flags))
        else:
            score = scorers.GENERATION[request.task.scorer](request.task.options, request.item, answer)
        scored[(request.task.name, request.item["id"])] = ItemResult(
            request.task.name, request.item["id"], request.task.category, score, answer
        )
    for task, item, first, last in choice_spans:
        values = logliks[first:last]
        if task.options.get("length_normalized"):  # mean log-probability per continuation token
            values = [v / max(1, len(choice_rows[first + i][1])) for i, v in enumerate(values)]
        score = scorers.LOGLIKELIHOOD[task.scorer](item, values)
        best = max(range(len(values)), key=lambda i: (values[i], -i))
        scored[(task.name, item["id"])] = ItemResult(task.name, item["id"], task.category, score, item["choices"][best])
    items = [scored[(task.name, item["id"])] for task in suite.tasks for item in task.items]
    return EvaluationResult(
        suite=suite.name,
        digest=suite.digest,
        tasks={task.name: task.category for task in suite.tasks},
        items=items,
        limit=limit,
        seconds=time.perf_counter() - began,
        meta={"formatDetectorSeconds": round(detector_seconds, 4)} if learned_answers and leak_detector else {},
    )


__all__: Sequence[str] = ("Answer", "GenerationRequest", "evaluate_suite", "generate_answers", "generation_input")
