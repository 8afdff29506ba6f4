"""status.trainerStatus: what a stage pod's /metrics says (operator/forgetless_operator/finetunejob/features/progress.py), what a
reconcile does to it on transitions, and the trainer's side (the progress display publishes the gauges)."""

from __future__ import annotations

import io

from prometheus_client import generate_latest

from forgetless_operator.finetunejob.features.progress import metrics_url, scrape_target, settle, trainer_status
from forgetless_trainer import live_metrics
from forgetless_trainer.progress import StageProgress

NOW = "2026-12-02T10:00:00Z"


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def exposition() -> str:
    return generate_latest(live_metrics.REGISTRY).decode()


def test_the_display_publishes_share_done_total_and_time_left_and_the_operator_reads_them(monkeypatch):
    monkeypatch.setenv("FORGETLESS_JOB", "ts-job")
    clock = Clock()
    display = StageProgress("train", 200, stream=io.StringIO(), clock=clock)
    assert trainer_status("train", exposition(), NOW, job="ts-job")["progressPercentage"] == 0
    clock.t += 10
    display.update(50, loss=0.5)
    live_metrics.TrainMetrics("ts-job").step(loss=0.5, lr=1e-3, grad_norm=None, tokens=64, ewc_penalty=None)
    status = trainer_status("train", exposition(), NOW, job="ts-job")
    assert status["stage"] == "train"
    assert status["progressPercentage"] == 25
    assert status["estimatedRemainingSeconds"] == 30  # 150 steps left at 5 steps/s
    assert status["estimatedRemaining"] == "30s"
    metrics = {m["name"]: m["value"] for m in status["metrics"]}
    assert metrics["step"] == "50" and metrics["totalSteps"] == "200"
    assert metrics["loss"] == "0.5" and metrics["learningRate"] == "0.001"
    assert status["lastUpdatedTime"] == NOW
    clock.t += 10
    display.update(150)
    later = trainer_status("train", exposition(), NOW, job="ts-job")
    assert later["progressPercentage"] == 75 and later["estimatedRemainingSeconds"] == 7  # 50 left at 7.5/s


def test_an_evaluation_counts_answers_and_another_stage_is_not_read_as_this_one(monkeypatch):
    monkeypatch.setenv("FORGETLESS_JOB", "ts-eval")
    clock = Clock()
    display = StageProgress("evaluate", 80, unit="answer", stream=io.StringIO(), clock=clock)
    clock.t += 4
    display.update(20)
    text = generate_latest(live_metrics.REGISTRY).decode()
    status = trainer_status("evaluate", text, NOW, job="ts-eval")
    assert status["progressPercentage"] == 25
    assert {m["name"]: m["value"] for m in status["metrics"]} == {"answers": "20", "totalAnswers": "80"}
    assert trainer_status("baseline", 'forgetless_stage_progress_ratio{stage="evaluate"} 0.5\n', NOW) is None
    assert trainer_status("evaluate", text, NOW, job="another-job") is None


def test_no_progress_yet_or_not_prometheus_text_gives_nothing():
    assert trainer_status("train", "", NOW) is None
    assert trainer_status("train", "<html>502 Bad Gateway</html>", NOW) is None
    no_rate = 'forgetless_stage_progress_ratio{stage="train"} 0.0\n'
    assert trainer_status("train", no_rate, NOW) == {"stage": "train", "progressPercentage": 0, "lastUpdatedTime": NOW}


def pod(name: str, phase: str = "Running", ip: str | None = "10.0.0.7", index: str | None = None,
        job: str = "ft-train", port: int = 9400) -> dict:
    annotations = {"batch.kubernetes.io/job-completion-index": index} if index is not None else {}
    return {"metadata": {"name": name, "labels": {"job-name": job}, "annotations": annotations},
            "spec": {"containers": [{"name": "stage", "ports": [{"name": "metrics", "containerPort": port}]}]},
            "status": {"phase": phase, **({"podIP": ip} if ip else {})}}


def test_the_target_is_the_running_stage_rank_0_pod_of_its_current_job():
    status = {"stages": {"baseline": {"phase": "Succeeded"}, "train": {"phase": "Running", "jobName": "ft-train"}}}
    assert scrape_target(status, {"train": [pod("a", ip=None), pod("b", phase="Pending")]}) is None
    assert scrape_target(status, {"train": [pod("old", job="ft-train-old"), pod("c", port=9500)]}) == (
        "train", "http://10.0.0.7:9500/metrics")
    workers = {"phase": "Running", "jobName": "ft-train"}
    group = [pod("w1", index="1", ip="10.0.0.8"), pod("w0", index="0", ip="10.0.0.9")]
    assert scrape_target({"stages": {"train": workers}}, {"train": group}) == ("train", "http://10.0.0.9:9400/metrics")
    assert scrape_target({"stages": {"train": {"phase": "Succeeded"}}}, {"train": [pod("d")]}) is None
    assert metrics_url(pod("v6", ip="fd00::5")) == "http://[fd00::5]:9400/metrics"


def test_transitions_start_a_stage_at_zero_finish_at_100_and_a_failure_has_no_eta():
    status = {"phase": "Training", "stages": {"train": {"phase": "Running"}},
              "trainerStatus": {"stage": "baseline", "progressPercentage": 90, "estimatedRemainingSeconds": 3}}
    settle(status, NOW)
    assert status["trainerStatus"] == {"stage": "train", "progressPercentage": 0, "lastUpdatedTime": NOW}
    kept = {"stage": "train", "progressPercentage": 40, "estimatedRemainingSeconds": 60, "lastUpdatedTime": "x"}
    same = {"phase": "Training", "stages": {"train": {"phase": "Running"}}, "trainerStatus": dict(kept)}
    settle(same, NOW)
    assert same["trainerStatus"] == kept  # the progress pass owns it while the stage runs
    done = {"phase": "Succeeded", "stages": {}, "trainerStatus": {"stage": "evaluate", "progressPercentage": 97}}
    settle(done, NOW)
    assert done["trainerStatus"]["progressPercentage"] == 100
    assert done["trainerStatus"]["estimatedRemainingSeconds"] == 0
    failed = {"phase": "Failed", "trainerStatus": {**kept, "estimatedRemaining": "1m00s"}}
    settle(failed, NOW)
    assert failed["trainerStatus"] == {"stage": "train", "progressPercentage": 40, "lastUpdatedTime": "x"}
