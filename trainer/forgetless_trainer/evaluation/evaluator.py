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
the whole string adds to the context's tokens), right-padded batches of (item, choice) rows,
one forward pass each; the answer is the argmax choice (of the mean per token with the task option
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


@dataclass
class _Request:
    task: SuiteTask
    item: dict
    ids: list[int]
    max_new_tokens: int


def _special_ids(tokenizer: Any) -> tuple[int, int | None]:
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = eos if eos is not None else 0
    return pad, eos


def _max_context(model: Any) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def _generate(
    model: Any, tokenizer: Any, requests: list[_Request], batch_size: int, progress: Progress | None = None
) -> list[str]:
    import torch

    pad, eos = _special_ids(tokenizer)
    fmt = chat_format(tokenizer)
    stops = [t for t in dict.fromkeys([eos, fmt.end_of_turn_id() if fmt else None]) if t is not None]
    device = _device(model)
    order = sorted(range(len(requests)), key=lambda i: (requests[i].max_new_tokens, len(requests[i].ids), i))
    answers: list[str] = [""] * len(requests)
    max_context = _max_context(model)
    for start in range(0, len(order), batch_size):
        batch = [requests[i] for i in order[start:start + batch_size]]
        max_new = max(r.max_new_tokens for r in batch)
        prompts = [r.ids for r in batch]
        if max_context:
            keep = max(1, max_context - max_new)
            prompts = [ids[-keep:] for ids in prompts]  # left-truncate overlong prompts
        width = max(len(ids) for ids in prompts)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids):] = 1
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
            answers[order[start + row]] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        if progress is not None:
            progress(start + len(batch), len(requests))
    return answers


def _continuation(tokenizer: Any, context: str, context_ids: list[int], choice: str, specials: bool = True) -> list[int]:
    whole = tokenizer(context + " " + choice, add_special_tokens=specials)["input_ids"]
    if whole[: len(context_ids)] == context_ids and len(whole) > len(context_ids):
        return whole[len(context_ids):]
    return tokenizer(" " + choice, add_special_tokens=False)["input_ids"]


def _loglikelihoods(model: Any, tokenizer: Any, rows: list[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """Summed log-probability of each (context, continuation) row's continuation."""
    import torch

    pad, _ = _special_ids(tokenizer)
    device = _device(model)
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]) + len(rows[i][1]), i))
    out: list[float] = [0.0] * len(rows)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        sequences = [rows[i][0] + rows[i][1] for i in index]
        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(index), width), pad, dtype=torch.long)
        attention = torch.zeros((len(index), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention[row, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
        for row, i in enumerate(index):
            context, continuation = rows[i]
            begin = len(context) - 1  # the logits at position t predict token t + 1
            span = logits[row, begin: begin + len(continuation)].float()
            targets = torch.tensor(continuation, dtype=torch.long, device=span.device)
            out[i] = float(torch.log_softmax(span, dim=-1).gather(1, targets[:, None]).sum())
    return out


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
) -> EvaluationResult:
    """Score `model` on `suite` (first `limit` items per task when given); see the module doc.

    `progress(done, total)` is called after each generation batch (long evaluations show progress).
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
            context = fmt.generation_text(item["prompt"]) if fmt else generation_input(item["prompt"])
            context_ids = tokenizer(context, add_special_tokens=fmt is None)["input_ids"]
            if task.is_generation:
                generation.append(_Request(task, item, context_ids, task.max_new_tokens))
            else:
                first = len(choice_rows)
                for choice in item["choices"]:
                    choice_rows.append((context_ids, _continuation(tokenizer, context, context_ids, choice, fmt is None)))
                choice_spans.append((task, item, first, len(choice_rows)))
    try:
        with torch.no_grad():
            answers = _generate(model, tokenizer, generation, batch_size, progress) if generation else []
            logliks = _loglikelihoods(model, tokenizer, choice_rows, batch_size) if choice_rows else []
    finally:
        if was_training:
            model.train()

    scored: dict[tuple[str, str], ItemResult] = {}
    for request, answer in zip(generation, answers):
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
    )


__all__: Sequence[str] = ("evaluate_suite", "generation_input")
