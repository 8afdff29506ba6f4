"""Data mixing (and replay's share): each epoch's composition is exact and deterministic."""

from __future__ import annotations

from collections import Counter

import pytest

from forgetless_trainer import data as D
from forgetless.errors import StageError


def pool(tag: str, n: int) -> list[D.Example]:
    return [D.Example(f"{tag} {i}", "r", source=tag) for i in range(n)]


@pytest.mark.parametrize(
    "n_task, general_fraction, n_general, replay_fraction, n_replay",
    [(30, 0.25, 100, 0.0, 0), (37, 0.2, 5, 0.0, 0), (1, 0.3, 3, 0.0, 0), (500, 0.3, 10_000, 0.1, 7), (13, 0.0, 50, 0.5, 40)],
)
def test_general_fraction_of_every_epoch_is_exact(n_task, general_fraction, n_general, replay_fraction, n_replay):
    task = pool("task", n_task)
    parts = [D.MixPart("general", general_fraction, pool("general", n_general)),
             D.MixPart("replay", replay_fraction, pool("replay", n_replay))]
    for epoch in range(3):
        examples = D.build_epoch(task, parts, epoch, seed=11)
        counts = Counter(e.source for e in examples)
        size = len(examples)
        assert counts["general"] == D.round_half_up(general_fraction * size)
        assert counts["replay"] == (D.round_half_up(replay_fraction * size) if n_replay else 0)
        assert abs(counts["task"] - n_task) <= 1  # all task examples (± 1 from rounding)
        assert size == D.epoch_plan(n_task, parts)[0]


def test_exact_numbers_for_a_worked_example():
    # 30 task examples, 25 % general → epoch of 40 with exactly 10 general examples
    size, counts = D.epoch_plan(30, [D.MixPart("general", 0.25, pool("general", 3))])
    assert (size, counts) == (40, {"general": 10, "task": 30})
    examples = D.build_epoch(pool("task", 30), [D.MixPart("general", 0.25, pool("general", 3))], 0, seed=0)
    assert Counter(e.source for e in examples) == {"task": 30, "general": 10}
    # a small general pool is cycled evenly: 10 draws from 3 examples → 4/3/3
    assert sorted(Counter(e.prompt for e in examples if e.source == "general").values()) == [3, 3, 4]


def test_epochs_are_deterministic_and_reshuffled():
    task, parts = pool("task", 20), [D.MixPart("general", 0.2, pool("general", 50))]
    first = D.build_epoch(task, parts, 0, seed=3)
    assert first == D.build_epoch(task, parts, 0, seed=3)
    assert first != D.build_epoch(task, parts, 1, seed=3)
    assert first != D.build_epoch(task, parts, 0, seed=4)
    assert {e for e in first if e.source == "task"} == set(task)


def test_empty_parts_do_not_enlarge_the_epoch_and_bad_fractions_fail():
    assert D.epoch_plan(10, [D.MixPart("replay", 0.5, [])]) == (10, {"task": 10})
    with pytest.raises(StageError, match="below 1"):
        D.epoch_plan(10, [D.MixPart("general", 0.6, pool("g", 2)), D.MixPart("replay", 0.4, pool("r", 2))])
    with pytest.raises(StageError, match="no training examples"):
        D.build_epoch([], [], 0, seed=0)
