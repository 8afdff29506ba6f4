"""The operator-wide resync loop's pure parts: which jobs it reconciles, and kopf's peering rule."""

from datetime import datetime, timedelta, timezone

import pytest

from forgetless_operator.handlers import needs_resync, peering_allows

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
