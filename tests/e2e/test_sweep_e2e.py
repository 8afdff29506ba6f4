"""A FineTuneSweep end to end on a real API server: the operator creates the trials as owned
FineTuneJobs (at most maxParallel live), their stages run as real pods on the stand-in node, the
second trial's baseline comes from the cache, the best trial is chosen by the objective and
promoted by `<sweep>-best`, and deleting the sweep deletes its trials."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from tests.e2e.conftest import wait
from tests.e2e.test_cluster_path_e2e import BASE, CLAIM, LORA, Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two trials + the promotion job through real stage pods

GROUP, VERSION = "forgetless.dev", "v1alpha1"
SWEEP_TIMEOUT = 600.0


@pytest.fixture
def cluster(kube, namespace, operator, node, request) -> Cluster:
    return Cluster(kube, namespace, operator, node, request.node.name)


def sweep_manifest(name: str) -> dict[str, Any]:
    template = copy.deepcopy(BASE["spec"])
    template.update(copy.deepcopy(LORA))
    template["training"] = {**template["training"], "maxSteps": 20}
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneSweep",
        "metadata": {"name": name, "labels": {"kueue.x-k8s.io/queue-name": "team-a"}},
        "spec": {"template": template,
                 "searchSpace": [{"field": "method.lora.r", "values": [4, 8]}],
                 "strategy": {"type": "grid"}, "maxParallel": 1, "promote": "best"},
    }


def test_two_trial_sweep_promotes_the_best_and_deletes_its_trials(cluster: Cluster):
    custom = cluster.custom
    name = "e2e-sweep"
    created = custom.create_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "finetunesweeps",
                                                     sweep_manifest(name))

    def sweep() -> dict:
        return custom.get_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "finetunesweeps", name)

    def jobs() -> list[dict]:
        return custom.list_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "finetunejobs",
                                                    label_selector=f"forgetless.dev/sweep={name}")["items"]

    most_live, deadline = 0, time.monotonic() + SWEEP_TIMEOUT
    while (sweep().get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
        trials = [j for j in jobs() if j["metadata"]["name"] != f"{name}-best"]
        live = [j for j in trials if (j.get("status") or {}).get("phase") not in ("Succeeded", "Blocked", "Failed")]
        most_live = max(most_live, len(live))
        assert time.monotonic() < deadline, f"sweep did not finish: {sweep().get('status')}{cluster.diagnostics()}"
        time.sleep(1.0)
    status = sweep()["status"]
    assert status["phase"] == "Succeeded", f"{status.get('message')}{cluster.diagnostics()}"
    assert most_live == 1  # maxParallel 1: never two trials at once

    by_name = {j["metadata"]["name"]: j for j in jobs()}
    assert set(by_name) == {f"{name}-t0", f"{name}-t1", f"{name}-best"}
    for job in by_name.values():
        (owner,) = job["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("FineTuneSweep", created["metadata"]["uid"], True)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    # one baseline for the whole sweep: the later trials found it in the baseline cache
    baselines = [j["status"]["stages"]["baseline"]["phase"] for j in by_name.values()]
    assert baselines.count("Succeeded") == 1 and baselines.count("Skipped") == 2, baselines

    trials = {t["name"]: t for t in status["trials"]}
    assert set(trials) == {f"{name}-t0", f"{name}-t1"}
    assert all(t["phase"] == "Succeeded" and t["verdict"] and t["cost"] > 0 for t in trials.values())
    assert trials[f"{name}-t0"]["cost"] < trials[f"{name}-t1"]["cost"]  # r 4 trains fewer parameters
    best = status["best"]
    assert best["name"] in trials and best["jobName"] == f"{name}-best"
    # only the best is promoted: the trials ran with promote false and keep their reports
    assert all(by_name[t]["status"].get("promoted") is False for t in trials)
    promoted = best["promotedModel"]
    assert promoted["path"] == f"forgetless/{cluster.namespace}/{name}/{best['name']}/promoted"
    assert (cluster.volume / promoted["path"] / "config.json").is_file()
    for trial in trials:
        assert (cluster.volume / "forgetless" / cluster.namespace / name / trial / "report").is_dir()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Promoted")
    reasons = {e.reason for e in cluster.events(name)}
    assert {"TrialCreated", "BestSelected", "Promoted"} <= reasons

    # deleting the sweep deletes its trials (owner-reference garbage collection)
    custom.delete_namespaced_custom_object(GROUP, VERSION, cluster.namespace, "finetunesweeps", name,
                                           body={"propagationPolicy": "Background"})
    wait(lambda: not jobs(), "the trials to be garbage-collected", timeout=120)
    for trial in trials:  # the volume is not owned by the sweep: every trial's report stays
        assert (cluster.volume / "forgetless" / cluster.namespace / name / trial / "report").is_dir()
