"""The forecast's bands and what it suggests (the measuring itself: tests/component/test_forecast.py)."""

from __future__ import annotations

import pytest

from forgetless_trainer import forecast


@pytest.mark.parametrize("distance, band", [(-0.5, "near"), (0.0, "near"), (0.99, "near"), (1.0, "moderate"),
                                            (2.9, "moderate"), (3.0, "far"), (11.2, "far")])
def test_bands(distance, band):
    assert forecast.band(distance) == band


def test_a_policy_meets_the_suggestion_when_it_is_at_least_as_gentle():
    far = forecast.SUGGESTIONS["far"]
    assert forecast.meets(far, "lora", 0.6, budget=False)
    assert not forecast.meets(far, "lora", 0.3, budget=False)
    assert not forecast.meets(far, "full", 0.6, budget=False)
    assert forecast.meets(far, "full", 0.0, budget=True)  # a forgetting budget adds general data itself
    assert forecast.meets(forecast.SUGGESTIONS["near"], "lora", 0.0, budget=False)


def test_the_line_names_the_distance_band_and_suggestion():
    result = {"taskLoss": 11.2236, "generalLoss": 0.0091, "distance": 11.2145, "band": "far",
              "suggestion": forecast.SUGGESTIONS["far"], "policyMeetsSuggestion": False}
    line = forecast.line(result)
    assert line.startswith("forecast: task loss 11.22 vs general 0.01 nats/token, distance +11.21 (far)")
    assert "LoRA + at least 50 % general data" in line and "expect forgetting" in line
