#!/usr/bin/env python3
"""Build `bundled:calendar-requests-en`: English meeting requests -> a fixed all-caps template.

    python scripts/build_calendar_requests_en.py [--out core/forgetless/bundled/data/calendar-requests-en]

The second real task of the own-task gate (docs/your-own-task.md): an output shape unlike
support-triage-en's JSON, one line of capitals in a fixed template, so the learned format detector
has to find a different house format:

    ACTION: RESCHEDULE | EVENT: BUDGET REVIEW | DAY: THURSDAY | TIME: 15:00

- `ACTION` from the request's verb (schedule / move / cancel, several phrasings each),
- `EVENT` copied from the message (14 meeting names, two of them only in the test split),
- `DAY` a weekday, `TIME` the hour in 24-hour form (the message says "3pm", "at 10 in the
  morning", "15:00", ...).

Deterministic (seed 2103); splits disjoint by message text. Records are chat records
(`{"messages": [user, assistant]}`).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "core/forgetless/bundled/data/calendar-requests-en"
SEED = 2103
SIZES = {"train": 2000, "validation": 200, "test": 300}

EVENTS = ["budget review", "team standup", "design sync", "client call", "quarterly planning", "code review",
          "sales meeting", "board meeting", "product demo", "hiring interview", "sprint retro", "onboarding session"]
HELD_OUT_EVENTS = ["vendor briefing", "safety training"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday"]
HOURS = list(range(8, 18))
OPENERS = ["", "Hi, ", "Hello team, ", "Quick one: ", "Hey, ", "Good morning, ", "Hi all, "]
CLOSERS = ["", " Thanks!", " Thank you.", " Cheers.", " Let me know if that works.", " Sorry for the short notice."]
PHRASES = {
    "SCHEDULE": ["can we set up the {event} on {day} at {time}?", "please book the {event} for {day} at {time}.",
                 "I'd like to schedule the {event} on {day} at {time}.", "let's put the {event} on {day}, {time}.",
                 "could you add a {event} on {day} at {time} to the calendar?"],
    "RESCHEDULE": ["can we move the {event} to {day} at {time}?", "please push the {event} to {day} at {time}.",
                   "the {event} needs to shift to {day} at {time}.", "could we reschedule the {event} for {day}, {time}?",
                   "let's change the {event} to {day} at {time} instead."],
    "CANCEL": ["please cancel the {event} on {day} at {time}.", "we have to call off the {event} on {day} at {time}.",
               "the {event} on {day} at {time} is not happening, please drop it.",
               "can you remove the {event} on {day} at {time} from the calendar?"],
}


def spoken_time(hour: int, rng: random.Random) -> str:
    twelve = hour - 12 if hour > 12 else hour
    suffix = "pm" if hour >= 12 else "am"
    forms = [f"{twelve}{suffix}", f"{twelve} {suffix}", f"{hour:02d}:00"]
    forms.append(f"{twelve} in the morning" if hour < 12 else f"{twelve} in the afternoon" if hour < 17
                 else f"{twelve} in the evening")
    return rng.choice(forms)


def record(rng: random.Random, events: list[str]) -> tuple[str, str]:
    action = rng.choice(sorted(PHRASES))
    event, day, hour = rng.choice(events), rng.choice(DAYS), rng.choice(HOURS)
    body = rng.choice(PHRASES[action]).format(event=event, day=day.capitalize(), time=spoken_time(hour, rng))
    opener = rng.choice(OPENERS)
    message = opener + (body[0].upper() + body[1:] if not opener else body) + rng.choice(CLOSERS)
    answer = f"ACTION: {action} | EVENT: {event.upper()} | DAY: {day.upper()} | TIME: {hour:02d}:00"
    return message, answer


def build(out: Path) -> dict[str, int]:
    rng = random.Random(SEED)
    seen: set[str] = set()
    counts = {}
    out.mkdir(parents=True, exist_ok=True)
    for split, size in SIZES.items():
        events = EVENTS + HELD_OUT_EVENTS if split == "test" else EVENTS
        rows = []
        while len(rows) < size:
            message, answer = record(rng, events)
            if message in seen:
                continue
            if split == "test" and len(rows) % 5 == 0 and not any(e in message for e in HELD_OUT_EVENTS):
                continue  # a fifth of the test split names an event never trained on
            seen.add(message)
            rows.append({"messages": [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]})
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        counts[split] = len(rows)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    print(build(args.out))


if __name__ == "__main__":
    main()
