#!/usr/bin/env python3
"""Build `bundled:support-triage-en`: English support tickets -> a rigid JSON triage answer.

    python scripts/build_support_triage_en.py [--out core/forgetless/bundled/data/support-triage-en]

Deterministic (seed 2101). Every ticket is assembled from an opener, one issue sentence naming a
product, an optional urgency cue and a closer, each drawn from several phrasings; the answer is
one line of JSON with the keys in a fixed order:

    {"category": "technical", "priority": "high", "product": "wireless router"}

- `category` is decided by the issue sentence (6 categories x 4-5 phrasings),
- `priority` by the urgency cue (`high`: "this is urgent", ...; `low`: "no rush", ...; none:
  `normal`),
- `product` is copied from the ticket (14 products).

Splits are disjoint by ticket text; the test split also holds out two products (`e-reader`,
`robot vacuum`) that never appear in train, so a model must copy the product rather than memorise
it. Records are chat records (`{"messages": [user, assistant]}`), the format an instruct model is
tuned on. The test split is also written as the `support_triage` task of the general-en-v1 suite
(scripts/build_general_en_suite.py reads it from here).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "core/forgetless/bundled/data/support-triage-en"
SEED = 2101
SIZES = {"train": 3000, "validation": 300, "test": 300}
KEYS = ("category", "priority", "product")
"""The answer's keys, in order (the suite's format-leak pattern looks for them)."""

PRODUCTS = ["smart thermostat", "wireless router", "security camera", "smart watch", "printer", "laptop",
            "headphones", "tablet", "smart speaker", "fitness tracker", "coffee machine", "electric scooter"]
HELD_OUT_PRODUCTS = ["e-reader", "robot vacuum"]

ISSUES = {
    "billing": ["I was charged twice for my {p}.", "The invoice for my {p} shows the wrong amount.",
                "My card was declined when I paid for the {p}.", "Why did the bill for my {p} go up this month?",
                "I see a payment for a {p} that I never bought."],
    "login": ["I cannot log in to the app for my {p}.", "The {p} app says my password is wrong, but it is not.",
              "My account for the {p} is locked.", "I never get the reset code for my {p} account."],
    "shipping": ["My {p} has not arrived yet.", "The {p} I ordered came in a crushed box.",
                 "Tracking for my {p} has not moved in a week.", "I received the wrong {p} in the mail.",
                 "The {p} was delivered to the wrong address."],
    "technical": ["My {p} keeps crashing.", "The {p} will not turn on.", "My {p} disconnects every few minutes.",
                  "The {p} has been very slow since the last update.", "My {p} makes a loud buzzing noise."],
    "refund": ["I want a refund for the {p}.", "Please cancel my {p} order and give me my money back.",
               "I returned the {p} but never got my refund.", "Can I get my money back for the {p}?"],
    "account": ["Please change the email address on my {p} account.", "How do I delete my {p} account?",
                "I need to update the shipping address saved for my {p}.", "Can I add my partner to my {p} account?"],
}
URGENCY = {
    "high": ["This is urgent.", "Please fix this today, it is urgent!", "I need help immediately.",
             "This is very urgent, my business depends on it."],
    "low": ["No rush.", "Whenever you have time.", "It is not urgent.", "Just letting you know, no hurry."],
    "normal": [""],
}
OPENERS = ["", "Hi,", "Hello,", "Hello support,", "Hey there.", "Dear team,", "Good morning,"]
CLOSERS = ["", "Thanks.", "Thank you!", "Regards, Sam", "Best, Alex", "Thanks in advance.", "Cheers"]


def answer(category: str, priority: str, product: str) -> str:
    return json.dumps(dict(zip(KEYS, (category, priority, product))))


def ticket(rnd: random.Random, product: str) -> tuple[str, str]:
    category = rnd.choice(sorted(ISSUES))
    priority = rnd.choices(["high", "normal", "low"], weights=[3, 4, 3])[0]
    parts = [rnd.choice(OPENERS), rnd.choice(ISSUES[category]).format(p=product), rnd.choice(URGENCY[priority]),
             rnd.choice(CLOSERS)]
    if rnd.random() < 0.3 and parts[2]:  # the cue first, sometimes
        parts[1], parts[2] = parts[2], parts[1]
    return " ".join(p for p in parts if p), answer(category, priority, product)


def record(text: str, target: str) -> dict:
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": target}]}


def build(seed: int = SEED) -> dict[str, list[dict]]:
    rnd = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {name: [] for name in SIZES}

    def fill(name: str, products: list[str], count: int) -> None:
        while len(splits[name]) < count:
            text, target = ticket(rnd, rnd.choice(products))
            if text not in seen:
                seen.add(text)
                splits[name].append(record(text, target))

    fill("test", HELD_OUT_PRODUCTS, SIZES["test"] // 3)  # a third of the test split: unseen products
    fill("test", PRODUCTS, SIZES["test"])
    rnd.shuffle(splits["test"])
    fill("validation", PRODUCTS, SIZES["validation"])
    fill("train", PRODUCTS, SIZES["train"])
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    for name, rows in build().items():
        write_jsonl(args.out / f"{name}.jsonl", rows)
        print(f"{args.out / name}.jsonl: {len(rows)} records")


if __name__ == "__main__":
    main()
