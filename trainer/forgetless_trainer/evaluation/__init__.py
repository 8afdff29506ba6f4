"""Regression evaluation: scorers, the batched evaluator, the lm-eval backend and the report.

`evaluate_suite(model, tokenizer, suite, *, limit=None, batch_size=32) -> EvaluationResult` is
imported lazily (torch only when it runs), so `from forgetless_trainer.evaluation import
EvaluationResult` stays light.
"""

from __future__ import annotations

from typing import Any

from forgetless_trainer.evaluation.results import EvaluationResult, ItemResult


def evaluate_suite(model: Any, tokenizer: Any, suite: Any, *, limit: int | None = None, batch_size: int = 32):
    from forgetless_trainer.evaluation.evaluator import evaluate_suite as _evaluate

    return _evaluate(model, tokenizer, suite, limit=limit, batch_size=batch_size)


__all__ = ["EvaluationResult", "ItemResult", "evaluate_suite"]
