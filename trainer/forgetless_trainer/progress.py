"""What a user watches while a stage runs: one progress display per stage.

On a terminal (the stream is a TTY) it is one tqdm bar with the stage's name, its rate and the time
left. Elsewhere (CI, a pod, `kubectl logs`) a bar would be noise, so it prints plain, sparse lines:
one about every 10 % of the work, each with the rate and the time left, plus every message (a
validation, a probe) as its own line:

    [train] step 161/1608 (10 %) · 1.9 step/s · 12m41s left · loss=0.53 lr=0.001
    [train] step 200: validation loss 0.3114 (best 0.3114 at step 200)

Only rank 0 draws (`enabled`); other ranks keep silent. Every update is also published as the
`forgetless_stage_*` gauges (forgetless_trainer.live_metrics: done, total, share, time left), which the
operator reads into `status.trainerStatus` while a stage pod runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from forgetless.timefmt import format_duration  # noqa: F401 - re-exported (the progress line's durations)




def _values_text(values: dict[str, float | None]) -> str:
    """`loss=0.53 lr=0.001`: the values a step reports, those that are set."""
    return " ".join(f"{k}={v:.4g}" for k, v in values.items() if v is not None)


def is_terminal(stream: Any) -> bool:
    return bool(getattr(stream, "isatty", None)) and stream.isatty()


def terminal_width(stream: Any) -> int:
    """Columns of the terminal behind `stream`; 0 when unknown (a pty made without a size, e.g. `script`)."""
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class StageProgress:
    """Progress of one stage's loop over `total` units (steps, answers), from `initial` (a resumed run)."""

    def __init__(self, stage: str, total: int, *, unit: str = "step", initial: int = 0,
                 enabled: bool = True, stream: TextIO | None = None, clock=time.monotonic,
                 started: float | None = None) -> None:
        """`started`: when the work began on `clock`, if before this display was made (the rate counts from it)."""
        self.stage = stage
        self.unit = unit
        self.total = max(int(total), 0)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.every = max(1, -(-self.total // 10))  # a plain line about every 10 %
        self.done = initial
        self._start_done = initial
        self._started = clock() if started is None else started
        self._last_printed = initial
        self.bar = None
        if enabled and is_terminal(self.stream):
            from tqdm.auto import tqdm

            width = terminal_width(self.stream)  # a terminal of unknown size (0 columns) would get no bar at all
            self.bar = tqdm(total=self.total, initial=initial, file=self.stream, desc=stage, unit=unit,
                            dynamic_ncols=width > 0, ncols=None if width > 0 else 80,
                            nrows=None if width > 0 else 24, leave=True)
        self.publish()

    def start_at(self, done: int) -> None:
        """A resumed run starts at `done`: the bar jumps there, the rate counts from there."""
        self.done = self._start_done = self._last_printed = done
        self._started = self.clock()
        self.publish()
        if self.bar is not None:
            self.bar.update(done - self.bar.n)

    def rate(self) -> float | None:
        """Units per second since this display started (a resumed run counts only what it did)."""
        elapsed = self.clock() - self._started
        done = self.done - self._start_done
        return done / elapsed if elapsed > 0 and done > 0 else None

    def line(self, **values: float | None) -> str:
        share = 100 * self.done / self.total if self.total else 100.0
        parts = [f"[{self.stage}] {self.unit} {self.done}/{self.total} ({share:.0f} %)"]
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.done < self.total:
                parts.append(f"{format_duration(self.remaining_seconds())} left")
        text = _values_text(values)
        return " · ".join(parts) + (f" · {text}" if text else "")

    def remaining_seconds(self) -> float | None:
        """Time left at the rate so far; None before the first unit (no rate yet)."""
        rate = self.rate()
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate else None

    def publish(self) -> None:
        from forgetless_trainer import live_metrics

        live_metrics.stage_progress(self.stage, self.done, self.total, self.remaining_seconds())

    def update(self, done: int, **values: float | None) -> None:
        """Move to `done` units; `values` (loss, lr, …) go on the bar or the line."""
        self.done = done
        self.publish()
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            text = _values_text(values)
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            return
        if done >= self._last_printed + self.every or (done >= self.total and self._last_printed < self.total):
            self._last_printed = done
            print(self.line(**values), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """A line of its own (a validation, a probe, a resume), above the bar on a terminal."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"[{self.stage}] {text}", file=self.stream)
        else:
            print(f"[{self.stage}] {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
