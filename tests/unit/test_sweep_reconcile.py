"""The FineTuneSweep reconciler: trial creation under maxParallel, best selection and its promotion
job, restart safety, ownership (deleting the sweep deletes its trials), successive-halving
continuation."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

from forgetless.lifecycle import CATEGORIES
from forgetless_operator.kit.actions import CreateObject, DeleteObject
from forgetless.vocabulary import LABEL_RUNG, LABEL_SWEEP, LABEL_TRIAL
from forgetless_operator.finetunesweep.reconcile import reconcile_sweep

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
UID = "5f0e0000-0000-4000-8000-00000000abcd"
TEMPLATE = {
    "model": {"name": "bundled:tiny-world"},
    "dataset": {"task": {"path": "bundled:support-tickets"}},
    "output": {"pvc": {"claimName": "outputs", "readOnly": False}},
}


def sweep(strategy: dict | None = None, max_parallel: int = 2, values=(4, 8, 16), **extra: Any) -> dict:
    spec = {"template": copy.deepcopy(TEMPLATE), "searchSpace": [{"field": "method.lora.r", "values": list(values)}],
            "strategy": strategy or {"type": "grid"}, "maxParallel": max_parallel, **extra}
    return {"apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": "s", "namespace": "ns", "uid": UID, "generation": 1,
                         "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
            "spec": spec}


def created(decision) -> list[dict]:
    return [a.obj for a in decision.actions if isinstance(a, CreateObject)]


def finished(job: dict, task: float, kept: float = 1.0, verdict: str = "Passed", trainable: int = 1000,
             tokens: int = 10_000, phase: str | None = None) -> dict:
    """A trial FineTuneJob as the FineTuneJob reconciler leaves it after its gate."""
    job = copy.deepcopy(job)
    base = {c: 0.8 for c in CATEGORIES} | {"task": 0.1}
    final = {c: 0.8 * kept for c in CATEGORIES} | {"task": task}
    job["status"] = {
        "phase": phase or ("Succeeded" if verdict in ("Passed", "Warned") else "Blocked"),
        "baselineScores": base, "finalScores": final, "gate": {"verdict": verdict},
        "stages": {"train": {"result": {"trainableParameters": trainable, "tokens": tokens, "trainSeconds": 5.0}}},
    }
    return job


def step(body: dict, jobs: dict[str, dict]):
    """One reconcile, with the returned status written back (as the edge does)."""
    decision = reconcile_sweep(body, jobs, NOW)
    body["status"] = decision.status
    return decision


def test_trials_are_owned_labelled_and_capped_by_max_parallel():
    body = sweep(max_parallel=2)
    decision = step(body, {})
    objs = created(decision)
    assert [o["metadata"]["name"] for o in objs] == ["s-t0", "s-t1"]  # 3 candidates, 2 at once
    first = objs[0]
    (owner,) = first["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneSweep", UID, True)
    labels = first["metadata"]["labels"]
    assert labels[LABEL_SWEEP] == "s" and labels[LABEL_TRIAL] == "0" and labels[LABEL_RUNG] == "0"
    assert labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert first["spec"]["method"]["lora"]["r"] == 4
    assert first["spec"]["output"]["promote"] is False and "handOff" not in first["spec"]["output"]
    assert first["spec"]["output"]["path"] == "forgetless/ns/s/s-t0"  # every trial its own work dir
    assert {e.reason for e in decision.events} == {"TrialCreated"}


def test_a_restarted_operator_creates_nothing_twice():
    body = sweep(max_parallel=2)
    objs = created(step(body, {}))
    jobs = {o["metadata"]["name"]: o for o in objs}
    again = reconcile_sweep(body, jobs, NOW)  # the same observation: both trials live, capacity used
    assert created(again) == []
    # a crash before the status write: the creates are decided again, with the same names (409 = success)
    fresh = sweep(max_parallel=2)
    assert [o["metadata"]["name"] for o in created(reconcile_sweep(fresh, {}, NOW))] == ["s-t0", "s-t1"]


def test_next_trial_starts_when_one_finishes_and_the_best_is_promoted():
    body = sweep(max_parallel=2)
    jobs = {o["metadata"]["name"]: o for o in created(step(body, {}))}
    jobs["s-t0"] = finished(jobs["s-t0"], task=0.90, trainable=1000)
    decision = step(body, jobs)
    assert [o["metadata"]["name"] for o in created(decision)] == ["s-t2"]
    jobs["s-t2"] = finished(created(decision)[0], task=0.95, trainable=4000)
    jobs["s-t1"] = finished(jobs["s-t1"], task=0.952, trainable=2000)  # ties s-t2 (tolerance 0.005), cheaper
    decision = step(body, jobs)
    (best_job,) = created(decision)
    assert best_job["metadata"]["name"] == "s-best"
    assert best_job["spec"]["method"]["lora"]["r"] == 8 and best_job["spec"]["output"]["promote"] is True
    assert best_job["spec"]["output"]["path"] == "forgetless/ns/s/s-t1"  # the best trial's work dir
    assert body["status"]["best"]["name"] == "s-t1" and body["status"]["phase"] == "Running"
    trials = {t["name"]: t for t in body["status"]["trials"]}
    assert trials["s-t1"]["cost"] == 2000 * 10_000 and trials["s-t0"]["verdict"] == "Passed"
    # the promotion job succeeds: the sweep is done, Ready, with the promoted model
    jobs["s-best"] = {**best_job, "status": {"phase": "Succeeded", "promoted": True,
                                             "promotedModel": {"path": "/m", "uri": "pvc://outputs/m"}}}
    step(body, jobs)
    assert body["status"]["phase"] == "Succeeded"
    assert body["status"]["best"]["promotedModel"]["uri"] == "pvc://outputs/m"
    ready = next(c for c in body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Promoted"


def test_no_trial_passing_the_gate_fails_the_sweep():
    body = sweep(max_parallel=3, values=(4, 8))
    jobs = {o["metadata"]["name"]: o for o in created(step(body, {}))}
    jobs = {n: finished(j, task=0.9, kept=0.7, verdict="Failed") for n, j in jobs.items()}
    decision = step(body, jobs)
    assert created(decision) == [] and body["status"]["phase"] == "Failed"
    assert body["status"]["conditions"][-1]["reason"] == "NoPassingTrial"


def test_promote_none_ends_with_the_best_and_no_promotion_job():
    body = sweep(max_parallel=3, values=(4, 8), promote="none")
    jobs = {o["metadata"]["name"]: o for o in created(step(body, {}))}
    jobs = {n: finished(j, task=0.8 + 0.1 * i) for i, (n, j) in enumerate(sorted(jobs.items()))}
    decision = step(body, jobs)
    assert created(decision) == [] and body["status"]["phase"] == "Succeeded"
    assert body["status"]["best"]["name"] == "s-t1"


def test_successive_halving_continues_the_survivors_and_prunes_the_rest():
    # 9 candidates, eta 3: rung 0 trains each for 9/3 = 3 epochs, the best 3 continue to 9 epochs
    body = sweep({"type": "successiveHalving", "eta": 3, "minEpochs": 1}, max_parallel=9, values=range(1, 10))
    body["spec"]["template"]["training"] = {"epochs": 9}
    jobs = {o["metadata"]["name"]: o for o in created(step(body, {}))}
    assert len(jobs) == 9 and {j["spec"]["training"]["epochs"] for j in jobs.values()} == {3}
    scores = {f"s-t{i}": 0.5 + 0.01 * i for i in range(9)}  # s-t8, s-t7, s-t6 are the best
    jobs = {n: finished(j, task=scores[n]) for n, j in jobs.items()}
    decision = step(body, jobs)
    deletes = sorted(a.name for a in decision.actions if isinstance(a, DeleteObject))
    assert deletes == ["s-t6", "s-t7", "s-t8"]  # the survivors are replaced by their next rung
    phases = {t["name"]: t["phase"] for t in body["status"]["trials"]}
    assert [n for n, p in sorted(phases.items()) if p == "Pruned"] == [f"s-t{i}" for i in range(6)]
    for name in deletes:
        del jobs[name]  # garbage-collected
    again = created(step(body, jobs))
    assert sorted(o["metadata"]["name"] for o in again) == deletes
    assert {o["metadata"]["labels"][LABEL_RUNG] for o in again} == {"1"}
    assert {o["spec"]["training"]["epochs"] for o in again} == {9}
    assert {o["spec"]["output"]["path"] for o in again} == {f"forgetless/ns/s/{n}" for n in deletes}  # same work dirs


def test_an_invalid_sweep_fails_with_a_reason():
    body = sweep()
    body["spec"]["maxParallel"] = 0
    step(body, {})
    assert body["status"]["phase"] == "Failed"
    assert body["status"]["conditions"][-1]["reason"] == "InvalidSpec"


def test_a_sweep_without_an_output_volume_is_refused():
    body = sweep()
    del body["spec"]["template"]["output"]
    step(body, {})
    assert body["status"]["phase"] == "Failed" and "output.pvc" in body["status"]["message"]
