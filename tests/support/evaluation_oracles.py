"""Reference implementations the evaluator is checked against (tests) and timed against (benchmarks):
one prompt at a time, no batching, no caching."""

from __future__ import annotations

from typing import Any

from forgetless_trainer.evaluation.evaluator import _device, _special_ids, generation_input
from forgetless_trainer.evaluation.results import EvaluationResult


def naive_generate(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """One prompt, no batching (the benchmark's reference loop)."""
    import torch

    pad, eos = _special_ids(tokenizer)
    ids = tokenizer(generation_input(prompt), return_tensors="pt")["input_ids"].to(_device(model))
    with torch.no_grad():
        output = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
            do_sample=False, num_beams=1, pad_token_id=pad, eos_token_id=eos,
        )
    tokens = output[0, ids.shape[1]:].tolist()
    if eos is not None and eos in tokens:
        tokens = tokens[: tokens.index(eos)]
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def scores_equal(a: EvaluationResult, b: EvaluationResult) -> list[str]:
    """Items whose score differs between two results over the same suite (empty when identical)."""
    other = {(i.task, i.id): i.score for i in b.items}
    return [f"{i.task}/{i.id}" for i in a.items if other.get((i.task, i.id)) != i.score]
