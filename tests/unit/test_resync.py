"""The operator-wide resync loop's pure parts: which jobs it reconciles, and kopf's peering rule."""

from datetime import datetime, timedelta, timezone

import pytest

from forgetless_operator.finetunejob.readplan import child_is_quiet, child_signature, needs_resync
from forgetless_operator.kit.peering import peering_allows

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
HAND_OFF = {"output": {"handOff": {"inferenceService": {"name": "chat"}}}}


@pytest.mark.parametrize("ftj, expected", [
    ({"status": {"phase": "Training"}}, True),
    ({}, True),  # not started yet: a missed ADDED event is caught up
    ({"status": {"phase": "Succeeded"}}, False),  # finished for good
    ({"status": {"phase": "Blocked"}}, False),
    ({"spec": {"ttlSecondsAfterFinished": 60}, "status": {"phase": "Failed"}}, True),  # TTL to wait for
    ({"status": {"phase": "Succeeded", "promoted": True, "startedSpec": HAND_OFF}}, True),  # hand-off pending
    ({"status": {"phase": "Succeeded", "promoted": True, "startedSpec": HAND_OFF,
                 "handOff": {"inferenceService": {"phase": "Patched"}}}}, False),
    # the hand-off follows the spec the job ran: one added to the live spec afterwards is never waited for
    ({"spec": HAND_OFF, "status": {"phase": "Succeeded", "promoted": True, "startedSpec": {}}}, False),
    ({"metadata": {"deletionTimestamp": "2026-11-30T12:00:00Z"}, "status": {"phase": "Training"}}, False),
])
def test_needs_resync(ftj, expected):
    assert needs_resync(ftj) is expected


def peer(priority: int, seen_ago: float, lifetime: int = 60) -> dict:
    return {"priority": priority, "lifetime": lifetime, "lastseen": (NOW - timedelta(seconds=seen_ago)).isoformat()}


@pytest.mark.parametrize("peers, allowed", [
    ({}, True),
    ({"me": peer(0, 1)}, True),  # only ourselves
    ({"me": peer(0, 1), "other": peer(-1, 1)}, True),  # a lower-priority peer waits for us
    ({"me": peer(0, 1), "other": peer(1, 1)}, False),  # a higher-priority peer acts
    ({"me": peer(0, 1), "other": peer(0, 1)}, False),  # same priority: kopf pauses everyone
    ({"me": peer(0, 1), "other": peer(5, 120)}, True),  # a dead peer (last seen 120 s ago, lifetime 60)
])
def test_peering_allows(peers, allowed):
    assert peering_allows({"status": peers}, "me", 0, NOW) is allowed


def test_no_peering_object_allows():
    assert peering_allows(None, "me", 0, NOW)


async def test_coalescer_runs_once_more_for_triggers_during_a_run():
    import asyncio

    from forgetless_operator.kit.queue import Coalescer

    coalescer, runs, release = Coalescer(), [], asyncio.Event()

    async def once() -> bool:
        runs.append(len(runs))
        if len(runs) == 1:
            await release.wait()
        return True

    first = asyncio.ensure_future(coalescer.run("job", once))
    await asyncio.sleep(0)
    for _ in range(5):  # five triggers while the first run is in progress
        await coalescer.run("job", once)
    release.set()
    await first
    assert runs == [0, 1]  # the first run, then exactly one more


async def test_coalescer_does_not_repeat_a_failed_run():
    from forgetless_operator.kit.queue import Coalescer

    coalescer, runs = Coalescer(), []

    async def failing() -> bool:
        runs.append(1)
        await coalescer.run("job", failing)  # a trigger during the run marks it dirty
        return False

    await coalescer.run("job", failing)
    assert runs == [1]


def _child(kind: str, name: str, status: dict | None = None, **meta) -> dict:
    return {"kind": kind, "metadata": {"namespace": "ns", "name": name, "uid": f"uid-{name}",
                                       "labels": {"forgetless.dev/job": "j"}, **meta}, "status": status or {}}


def test_child_filter_skips_the_echo_and_the_job_controllers_counts():
    from forgetless_operator.kit.children import ChildFilter

    seen = ChildFilter(child_signature, child_is_quiet)
    created = _child("Job", "j-baseline", resourceVersion="7")
    seen.created("Job", created)
    assert not seen.needs_reconcile("Job", created, "ADDED")  # the echo of our own create
    counting = _child("Job", "j-baseline", {"active": 1, "ready": 0, "startTime": "2026-11-30T12:00:00Z"},
                      resourceVersion="8")
    assert not seen.needs_reconcile("Job", counting, "MODIFIED")  # active/ready/startTime: not read
    failed_once = _child("Job", "j-baseline", {"active": 1, "failed": 1}, resourceVersion="9")
    assert seen.needs_reconcile("Job", failed_once, "MODIFIED")  # a retry: the status counts attempts
    done = _child("Job", "j-baseline", {"failed": 1, "conditions": [{"type": "Complete", "status": "True"}]})
    assert seen.needs_reconcile("Job", done, "MODIFIED")
    assert not seen.needs_reconcile("Job", done, "MODIFIED")  # the same again
    assert seen.needs_reconcile("Job", done, "DELETED")  # always


def test_child_filter_triggers_on_a_job_it_did_not_create():
    from forgetless_operator.kit.children import ChildFilter

    assert ChildFilter(child_signature, child_is_quiet).needs_reconcile("Job", _child("Job", "j-train"), "ADDED")  # e.g. another replica's


def test_child_filter_skips_quiet_pods_and_triggers_when_they_have_news():
    from forgetless_operator.kit.children import ChildFilter

    seen = ChildFilter(child_signature, child_is_quiet)
    pending = _child("Pod", "j-baseline-abc", {"phase": "Pending"})
    assert not seen.needs_reconcile("Pod", pending, "ADDED")  # a new pod with nothing to say
    running = _child("Pod", "j-baseline-abc", {"phase": "Running", "containerStatuses": [
        {"name": "stage", "state": {"running": {"startedAt": "2026-11-30T12:00:00Z"}}}]})
    assert not seen.needs_reconcile("Pod", running, "MODIFIED")
    pulling = _child("Pod", "j-baseline-abc", {"phase": "Pending", "containerStatuses": [
        {"name": "stage", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}]})
    assert seen.needs_reconcile("Pod", pulling, "MODIFIED")  # a problem the status reports
    assert seen.needs_reconcile("Pod", running, "MODIFIED")  # ... and its end, which clears the message
    finished = _child("Pod", "j-baseline-abc", {"phase": "Succeeded", "containerStatuses": [
        {"name": "stage", "state": {"terminated": {"exitCode": 0, "message": "{}"}}}]})
    assert seen.needs_reconcile("Pod", finished, "MODIFIED")
    unschedulable = _child("Pod", "j-train-xyz", {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes"}]})
    assert seen.needs_reconcile("Pod", unschedulable, "ADDED")
    assert seen.needs_reconcile("Pod", pending, "DELETED")


def test_child_filter_forgets_the_oldest_past_its_limit():
    from forgetless_operator.kit.children import ChildFilter

    seen = ChildFilter(child_signature, child_is_quiet)
    seen.LIMIT = 2
    for name in ("a", "b", "c"):
        seen.created("Job", _child("Job", name))
    assert seen.needs_reconcile("Job", _child("Job", "a"))  # forgotten: unseen, so it triggers
    assert not seen.needs_reconcile("Job", _child("Job", "c"))


async def test_event_queue_posts_in_order_in_the_background_and_drains_at_shutdown():
    import asyncio

    from forgetless_operator.kit.events import EventQueue

    posted, gate = [], asyncio.Event()

    async def post(obj, event, now):
        await gate.wait()
        posted.append(event)

    queue = EventQueue(post, workers=1, limit=2)
    for i in range(2):
        await queue.put({}, i, "t")  # returns at once: the reconcile does not wait for the POST
    await asyncio.sleep(0.01)  # the worker takes the first and waits on its POST
    assert posted == []
    await queue.put({}, 2, "t")
    fourth = asyncio.ensure_future(queue.put({}, 3, "t"))  # the queue is full: put waits (backpressure)
    await asyncio.sleep(0.01)
    assert not fourth.done()
    gate.set()
    await fourth
    await queue.drain(timeout=1)
    assert posted == [0, 1, 2, 3]


async def test_event_queue_survives_a_failing_post():
    from forgetless_operator.kit.events import EventQueue

    posted = []

    async def post(obj, event, now):
        if event == "bad":
            raise RuntimeError("boom")
        posted.append(event)

    queue = EventQueue(post, workers=2)
    for event in ("a", "bad", "b"):
        await queue.put({}, event, "t")
    await queue.drain(timeout=1)
    assert sorted(posted) == ["a", "b"]


async def test_coalescer_skips_the_repeat_when_the_racing_triggers_checks_say_no():
    import asyncio

    from forgetless_operator.kit.queue import Coalescer

    coalescer, runs, release = Coalescer(), [], asyncio.Event()

    async def once() -> bool:
        runs.append(1)
        await release.wait()
        return True

    first = asyncio.ensure_future(coalescer.run("job", once))
    await asyncio.sleep(0)
    checked = []
    await coalescer.run("job", once, needed=lambda: checked.append(1) or False)  # e.g. the echo of our patch
    release.set()
    await first
    assert runs == [1] and checked == [1]  # judged after the run, and not repeated
    release.clear()
    first = asyncio.ensure_future(coalescer.run("job", once))
    await asyncio.sleep(0)
    await coalescer.run("job", once, needed=lambda: False)
    await coalescer.run("job", once, needed=lambda: True)  # a real change came too
    release.set()
    await first
    assert runs == [1, 1, 1]
