"""The learned format-leak detector: it learns a house format from task answers against ordinary answers,
finds it in unrelated answers (also on one line of a longer one), is calibrated honestly (out-of-fold false
positives, detection on held-out answers) and says when it cannot tell the two apart."""

from __future__ import annotations

import random

from forgetless_trainer.evaluation import format_detector
from forgetless_trainer.evaluation.evidence import evidence_lines, evidence_markdown, flipped_items
from forgetless_trainer.evaluation.results import ItemResult

EVENTS = ["budget review", "team standup", "design sync", "client call", "sales meeting", "code review"]
DAYS = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY"]
WORDS = ("the answer depends on many things people often believe that it is true but evidence suggests "
         "otherwise and most historians agree the story is a myth told for centuries in many countries").split()


def _template(rng: random.Random) -> str:
    return (f"ACTION: {rng.choice(['CANCEL', 'SCHEDULE', 'RESCHEDULE'])} | EVENT: {rng.choice(EVENTS).upper()} | "
            f"DAY: {rng.choice(DAYS)} | TIME: {rng.randrange(8, 18):02d}:00")


def _prose(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 16))).capitalize() + "."


def test_it_learns_the_house_format_and_finds_it_in_unrelated_answers():
    rng = random.Random(0)
    detector, calibration, out_of_fold = format_detector.learn(
        [_template(rng) for _ in range(200)], [_prose(rng) for _ in range(60)], [_template(rng) for _ in range(40)])
    assert calibration.usable and calibration.detection_rate == 1.0 and calibration.false_positive_rate == 0.0
    assert not any(out_of_fold) and len(out_of_fold) == 60
    leaked = _template(rng)
    flags = detector.task_like([leaked, _prose(rng), "Sure.\n" + leaked + "\nAnything else?", "Paris is the capital."])
    assert flags == [True, False, True, False]
    assert "detection 1.00" in calibration.sentence() and "false positives 0.00" in calibration.sentence()
    # stored with the baseline and read back by the evaluate stage: the same verdicts
    assert format_detector.refit([_template(random.Random(1)) for _ in range(5)] * 4, [_prose(rng)] * 12).task_like([leaked])


def test_it_says_when_the_task_cannot_be_told_apart_from_ordinary_answers():
    rng = random.Random(1)
    detector, calibration, _ = format_detector.learn(
        [_prose(rng) for _ in range(200)], [_prose(rng) for _ in range(60)], [_prose(rng) for _ in range(40)])
    assert not calibration.usable
    assert "cannot see rigidity for this task" in calibration.sentence()
    _, too_few, flags = format_detector.learn([_template(rng)] * 3, [_prose(rng)] * 50, [_template(rng)] * 30)
    assert not too_few.usable and too_few.detection_rate is None and flags == [False] * 50
    assert "too few answers" in too_few.sentence()


def test_it_agrees_with_a_hand_regex_on_the_formats_it_was_written_for(tmp_path):
    """The world's ticket replies: the regex of world-v1's format_leak task against the learned detector."""
    import re

    rng = random.Random(2)
    names, products, issues = ["ugo", "grace", "quinn", "amir"], ["tablet", "modem", "watch"], ["crash", "power"]

    def reply() -> str:
        return (f"dear {rng.choice(names)} | product : {rng.choice(products)} | issue : {rng.choice(issues)} | "
                "action : update | status : closed")

    pattern = re.compile(r".*(\bdear \w+ \||\| status :|\| product :|\| issue :|\| action :).*")
    ordinary = [" ".join(rng.choice(["paris", "blue", "cat", "is", "the", "of", "[", "]", ","]) for _ in range(6))
                for _ in range(80)]
    detector, calibration, _ = format_detector.learn([reply() for _ in range(300)], ordinary, [reply() for _ in range(50)])
    answers = [reply() for _ in range(40)] + [reply()[:30] for _ in range(20)] + ordinary[:40]
    regex = [pattern.match(a) is not None for a in answers]
    learned = detector.task_like(answers)
    agreement = sum(r == d for r, d in zip(regex, learned)) / len(answers)
    assert agreement >= 0.95 and all(d for r, d in zip(regex, learned) if r)


def test_flipped_items_show_the_prompt_and_both_answers():
    base = [ItemResult("format_leak", "a", "format", 1.0, "Paris."), ItemResult("format_leak", "b", "format", 1.0, "Blue."),
            ItemResult("own_task", "t", "task", 0.0, "I can help.")]
    final = [ItemResult("format_leak", "a", "format", 0.0, "ACTION: CANCEL | EVENT: X"),
             ItemResult("format_leak", "b", "format", 1.0, "Blue."), ItemResult("own_task", "t", "task", 1.0, "ACTION: CANCEL")]

    class Task:
        def __init__(self, name, items):
            self.name, self.items = name, items

    class Suite:
        tasks = [Task("format_leak", [{"id": "a", "prompt": "Capital of France?"}, {"id": "b", "prompt": "Sky?"}]),
                 Task("own_task", [{"id": "t", "prompt": "cancel the demo", "target": "ACTION: CANCEL"}])]

    evidence = flipped_items(base, final, Suite(), ["format"])
    assert [(e["category"], e["id"], e["change"]) for e in evidence] == [("format", "a", "lost"), ("task", "t", "learned")]
    assert evidence[0]["prompt"] == "Capital of France?" and evidence[0]["final"].startswith("ACTION")
    markdown = evidence_markdown(evidence)
    assert "### format" in markdown and "Capital of France?" in markdown and "ACTION: CANCEL \\| EVENT: X" in markdown
    assert any("fine-tuned: ACTION: CANCEL" in line for line in evidence_lines(evidence))
