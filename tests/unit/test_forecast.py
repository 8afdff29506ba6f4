"""The forecast's bands and what it suggests (the measuring itself: tests/component/test_forecast.py)."""

from __future__ import annotations

import pytest

from forgetless_trainer import forecast


@pytest.mark.parametrize("distance, band", [(-0.5, "near"), (0.0, "near"), (0.99, "near"), (1.0, "moderate"),
                                            (2.9, "moderate"), (3.0, "far"), (11.2, "far")])
def test_bands(distance, band):
    assert forecast.band(distance, near=1.0, far=3.0) == band


def test_the_default_bands_are_the_fitted_edges():
    assert forecast.band(forecast.NEAR - 1e-6) == "near" and forecast.band(forecast.NEAR) == "moderate"
    assert forecast.band(forecast.FAR - 1e-6) == "moderate" and forecast.band(forecast.FAR) == "far"


def policy(method: str = "lora", share: float = 0.0, budget: bool = False) -> dict:
    return {"method": method, "rehearsalShare": share, "budgetAddsData": budget}


def test_a_policy_meets_the_suggestion_when_it_is_at_least_as_gentle():
    far = forecast.SUGGESTIONS["far"]
    assert forecast.meets(far, policy("lora", 0.6))
    assert not forecast.meets(far, policy("lora", 0.3))
    assert not forecast.meets(far, policy("full", 0.6))
    assert forecast.meets(far, policy("full", 0.0, budget=True))  # a budget that adjusts adds general data itself
    assert forecast.meets(forecast.SUGGESTIONS["near"], policy("lora", 0.0))


def test_replay_counts_as_rehearsal_and_only_an_adjusting_budget_adds_data(manifest):
    from forgetless.api.manifests import validate_document

    def of(mitigation: dict, method: str = "lora") -> dict:
        return forecast.policy_of(validate_document(manifest(spec={"method": {"type": method},
                                                                   "mitigation": mitigation})).spec)

    assert of({"dataMixing": {"generalFraction": 0.3}, "replay": {"fraction": 0.2, "sources": []}})["rehearsalShare"] == 0.5
    adjust = {"dataMixing": {"generalFraction": 0.0}, "forgettingBudget": {"maxDrop": 0.05}}
    assert of(adjust, "full")["budgetAddsData"] is True
    stop = {"dataMixing": {"generalFraction": 0.0}, "forgettingBudget": {"maxDrop": 0.05, "onBreach": "Stop"}}
    assert of(stop, "full")["budgetAddsData"] is False


def obs(distance: float, share: float, verdict: str, method: str = "lora") -> dict:
    return {"distance": distance, "policy": policy(method, share), "verdict": verdict}


def test_the_bands_are_fitted_to_the_outcomes_with_edges_between_the_data():
    observations = [obs(0.5, 0.0, "Passed"),                                 # near: no mixing held
                    obs(2.0, 0.0, "Failed"), obs(2.0, 0.3, "Passed"),        # moderate: 30 % held, none did not
                    obs(8.0, 0.3, "Failed"), obs(8.0, 0.6, "Passed")]        # far: 30 % was not enough
    near, far, right = forecast.fit_bands(observations)
    assert (near, far, right) == (1.25, 5.0, 5)
    assert forecast.agreement(observations, 1.0, 3.0) == 5 and forecast.agreement(observations, 0.1, 3.0) == 4


def test_when_the_data_cannot_tell_the_lower_edge_wins():
    near, far, right = forecast.fit_bands([obs(2.0, 0.0, "Failed"), obs(2.0, 0.3, "Passed")])
    assert right == 2 and near == 1.0 and far == 3.0  # nothing near is known: 2.0 is moderate, edges ±1 of it


def test_the_line_names_the_distance_band_and_suggestion():
    result = {"taskLoss": 11.2236, "generalLoss": 0.0091, "distance": 11.2145, "band": "far",
              "suggestion": forecast.SUGGESTIONS["far"], "policyMeetsSuggestion": False}
    line = forecast.line(result)
    assert line.startswith("forecast: task loss 11.22 vs general 0.01 nats/token, distance +11.21 (far)")
    assert "LoRA + at least 50 % general data" in line and "expect forgetting" in line


def test_the_line_says_when_the_reference_is_the_models_own_answers():
    result = {"taskLoss": 3.0067, "generalLoss": 0.6755, "distance": 2.3313, "band": "moderate", "reference": "selfRehearsal",
              "suggestion": forecast.SUGGESTIONS["moderate"], "policyMeetsSuggestion": True}
    assert forecast.line(result).startswith("forecast: task loss 3.01 vs its own answers 0.68 nats/token, distance +2.33")



def test_the_bands_are_the_fit_of_the_committed_outcomes():
    """forecast.NEAR / FAR are what benchmarks/forecast_calibration.py fitted on the measured outcomes."""
    import json
    from pathlib import Path

    data = json.loads((Path(__file__).resolve().parents[2] / "benchmarks/results/forecast_calibration.json").read_text())
    observations = [{**o, "distance": data["distances"][f"{o['model']}|{o['task']}"]["distance"]}
                    for o in data["observations"]]
    assert len({o["model"] for o in observations}) == 2 and len(data["distances"]) >= 6  # both models, three tasks each
    near, far, right = forecast.fit_bands(observations)
    assert (forecast.NEAR, forecast.FAR) == (near, far)
    assert (right, len(observations)) == (data["fit"]["right"], data["fit"]["total"])
