"""The progress display: one tqdm bar on a terminal, sparse plain lines elsewhere."""

from __future__ import annotations

import io

from forgetless_trainer.progress import StageProgress, format_duration


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_come_about_every_ten_percent_with_rate_and_time_left():
    stream, clock = io.StringIO(), Clock()
    progress = StageProgress("train", 1608, stream=stream, clock=clock)
    for step in range(1, 1609):
        clock.now += 0.5  # 2 steps/s
        progress.update(step, loss=0.5)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10  # not 160
    assert lines[0] == "[train] step 161/1608 (10 %) · 2 step/s · 12m04s left · loss=0.5"
    assert lines[-1].startswith("[train] step 1608/1608 (100 %) · 2 step/s") and "left" not in lines[-1]


def test_the_last_unit_is_always_reported_and_messages_are_lines_of_their_own():
    stream, clock = io.StringIO(), Clock()
    progress = StageProgress("evaluate", 25, unit="answer", stream=stream, clock=clock)
    for done in (8, 16, 24, 25):
        clock.now += 1
        progress.update(done)
    progress.message("step 200: validation loss 0.3")
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines[:-1]] == ["8/25", "16/25", "24/25", "25/25"]
    assert lines[-1] == "[evaluate] step 200: validation loss 0.3"


def test_a_resumed_run_counts_its_rate_from_where_it_resumed():
    stream, clock = io.StringIO(), Clock()
    progress = StageProgress("train", 100, stream=stream, clock=clock)
    progress.start_at(50)
    clock.now += 10
    progress.update(60)
    assert stream.getvalue().splitlines() == ["[train] step 60/100 (60 %) · 1 step/s · 40s left"]


def test_a_terminal_gets_one_bar_and_no_plain_lines():
    stream = Tty()
    progress = StageProgress("train", 10, stream=stream)
    progress.update(4, loss=1.5)
    progress.close()
    text = stream.getvalue()
    assert "train" in text and "4/10" in text and "loss=1.5" in text and "[train] step" not in text


def test_other_ranks_are_silent():
    stream = io.StringIO()
    progress = StageProgress("train", 10, stream=stream, enabled=False)
    progress.update(10)
    progress.message("hello")
    assert stream.getvalue() == ""


def test_durations_read_short():
    assert [format_duration(s) for s in (0.4, 45, 761, 3725)] == ["0s", "45s", "12m41s", "1h02m"]


def test_a_display_made_after_the_work_began_counts_its_rate_from_the_start():
    stream, clock = io.StringIO(), Clock()
    began = clock.now
    clock.now += 4  # the first batch of 32 answers took 4 s before the total was known
    progress = StageProgress("evaluate", 64, unit="answer", stream=stream, clock=clock, started=began)
    progress.update(32)
    assert stream.getvalue().splitlines() == ["[evaluate] answer 32/64 (50 %) · 8 answer/s · 4s left"]
