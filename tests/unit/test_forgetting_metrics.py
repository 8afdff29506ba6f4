"""The gate's verdict in the forgetting metrics: only a promoting verdict counts as passed."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from forgetless.metrics import ForgettingMetrics


@pytest.mark.parametrize("verdict, passed", [("Passed", 1.0), ("Warned", 1.0), ("Failed", 0.0), ("NoTaskGain", 0.0)])
def test_gate_passed_is_one_only_for_verdicts_that_promote(verdict, passed):
    metrics = ForgettingMetrics()
    metrics.record_verdict("ml", "job", verdict)
    text = generate_latest(metrics.registry).decode()
    assert f'forgetless_gate_passed{{finetunejob="job",namespace="ml"}} {passed}' in text
    assert f'forgetless_gate_verdicts_total{{namespace="ml",verdict="{verdict}"}} 1.0' in text
