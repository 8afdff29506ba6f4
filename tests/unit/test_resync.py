"""The operator-wide resync loop's pure parts: which jobs it reconciles, and kopf's peering rule."""

from datetime import datetime, timedelta, timezone

import pytest

from forgetless_operator.runtime import needs_resync, peering_allows

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
HAND_OFF = {"output": {"handOff": {"inferenceService": {"name": "chat"}}}}


@pytest.mark.parametrize("ftj, expected", [
    ({"status": {"phase": "Training"}}, True),
    ({}, True),  # not started yet: a missed ADDED event is caught up
    ({"status": {"phase": "Succeeded"}}, False),  # finished for good
    ({"status": {"phase": "Blocked"}}, False),
    ({"spec": {"ttlSecondsAfterFinished": 60}, "status": {"phase": "Failed"}}, True),  # TTL to wait for
    ({"spec": HAND_OFF, "status": {"phase": "Succeeded", "promoted": True}}, True),  # hand-off pending
    ({"spec": HAND_OFF, "status": {"phase": "Succeeded", "promoted": True,
                                   "handOff": {"inferenceService": {"phase": "Patched"}}}}, False),
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

    from forgetless_operator.runtime import Coalescer

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
    from forgetless_operator.runtime import Coalescer

    coalescer, runs = Coalescer(), []

    async def failing() -> bool:
        runs.append(1)
        await coalescer.run("job", failing)  # a trigger during the run marks it dirty
        return False

    await coalescer.run("job", failing)
    assert runs == [1]


def test_echo_filter_skips_only_the_created_version_once():
    from forgetless_operator.runtime import EchoFilter

    echoes = EchoFilter()
    created = {"metadata": {"namespace": "ns", "name": "j-baseline", "resourceVersion": "7"}}
    echoes.expect("Job", created)
    assert echoes.is_echo("Job", created)
    assert not echoes.is_echo("Job", created)  # only once
    assert not echoes.is_echo("Job", {"metadata": {"namespace": "ns", "name": "j-baseline", "resourceVersion": "8"}})
