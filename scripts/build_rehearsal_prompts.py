#!/usr/bin/env python3
"""Build `bundled:rehearsal-prompts-en`: the default prompt pool of self-rehearsal.

    python scripts/build_rehearsal_prompts.py [--bigbench DIR] [--out core/forgetless/bundled/data/rehearsal-prompts-en]

Self-rehearsal (forgetless_trainer.self_rehearsal) has the base model answer these prompts and
mixes its own answers into fine-tuning. The pool is general English, of the kinds the regression
suites probe (facts, arithmetic, counting, true/false statements, and instructions: yes/no, JSON
with a key, a <<title>>, a numbered list, one sentence), but none of its prompts is an item of a
bundled suite (tests/unit/test_self_rehearsal.py checks it).

Rows: {"prompt", "source"}, shuffled with seed 2103 so that any first `size` prompts mix the kinds.
Sources: `bigbench:<task>` (BIG-bench qa_wikidata relations the suites do not use, 2-digit
subtraction and multiplication, object_counting, misconceptions; with --bigbench DIR, the
`bigbench/benchmark_tasks` of the BIG-bench 1.0.0 sdist, 16 per relation and 30-40 per task are
drawn; without it the pool's existing bigbench rows are kept), `instruction` and `question` (the
lists below).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "core/forgetless/bundled/data/rehearsal-prompts-en"
SEED = 2103
RELATIONS = ("The native language of", "The religion of", "The instrument of", "The genre of", "The color of")
QUESTIONS = [
    "What is a cloud?", "Why do cats purr?", "What is a museum?", "How do fish breathe?", "What is snow?",
    "What is a mountain?", "Why do we need water?", "What is a farmer?", "What is electricity?", "What is a bridge?",
    "How do plants make food?", "What is a desert?", "What is chocolate made from?", "What is a city?",
    "Why do people cook food?", "What is a forest?", "What is a train?", "What is the wind?", "What is cheese?",
    "What does a pilot do?",
]
YES_NO = [
    "Is milk white?", "Can dogs climb trees?", "Is the ocean salty?", "Do spiders have six legs?", "Is gold a metal?",
    "Can a fish walk?", "Is London in England?", "Do apples grow on trees?", "Is the desert cold at noon?",
    "Are tomatoes red?", "Is a bat a bird?", "Does ice float?", "Is the sun hot?", "Can cows fly?", "Is a rose a flower?",
    "Do camels live in the desert?", "Is salt sweet?", "Are elephants small?", "Is Tokyo in Japan?", "Do frogs jump?",
]
LIST_TOPICS = [
    "insects", "kinds of cheese", "rivers", "things in a bathroom", "ocean animals", "desserts", "clothes",
    "kitchen tools", "winter sports", "farm machines", "toys", "breakfast foods", "metals", "shapes", "dances",
    "kinds of boats", "holidays", "spices", "card games", "garden plants",
]
OPEN_QUESTIONS = [
    "How does a bicycle work?", "Why do leaves change colour in autumn?", "What does a librarian do?",
    "How is bread made?", "What is the difference between weather and climate?", "Why do we sleep?",
    "What is a volcano?", "How do bees help flowers?", "What is a calendar?", "Why is exercise good for you?",
    "What does a dentist do?", "How do you make a cup of tea?", "What is recycling?", "Why do birds migrate?",
    "What is a map used for?", "How do airplanes stay in the air?", "What is a library?", "Why do we have seasons?",
    "What is a good way to learn a new language?", "How do you plant a tree?", "What is a rainbow?",
    "Why should you wash your hands?", "What is a telescope used for?", "How do magnets work?",
    "What is the job of the heart?", "Give me a tip for staying focused while studying.",
    "Write one sentence about the sea.", "Describe a sunny morning in two sentences.",
    "Suggest a name for a pet goldfish.", "Explain what a verb is.", "What is a healthy breakfast?",
    "How do you say thank you politely in an email?", "What is a good way to save money?",
    "Tell me a fun fact about octopuses.", "What should you pack for a day at the beach?",
    "Why is the Moon visible during the day sometimes?", "What is a haiku?", "What is a good name for a bakery?",
    "What is the opposite of ancient?", "Summarize what a thermometer does in one sentence.",
]


def bigbench_prompts(rnd: random.Random, bigbench: Path) -> list[dict]:
    load = lambda task: json.loads((bigbench / task / "task.json").read_text(encoding="utf-8"))["examples"]
    facts = load("qa_wikidata")
    rows = []
    for relation in RELATIONS:
        pool = [e["input"] for e in facts if e["input"].startswith(relation + " ")]
        rows += [{"prompt": "Complete the sentence: " + p, "source": "bigbench:qa_wikidata"} for p in rnd.sample(pool, 16)]
    for subtask in ("2_digit_subtraction", "2_digit_multiplication"):
        rows += [{"prompt": e["input"], "source": f"bigbench:arithmetic/{subtask}"}
                 for e in rnd.sample(load(f"arithmetic/{subtask}"), 30)]
    rows += [{"prompt": e["input"], "source": "bigbench:object_counting"} for e in rnd.sample(load("object_counting"), 40)]
    rows += [{"prompt": "Is the following statement true or false? " + e["input"], "source": "bigbench:misconceptions"}
             for e in rnd.sample(load("misconceptions"), 40)]
    return rows


def instruction_prompts() -> list[dict]:
    prompts = [f"Answer with yes or no only: {q}" for q in YES_NO]
    prompts += [f'{q} Give your answer as a JSON object with the key "answer".' for q in QUESTIONS]
    prompts += [f"{q} Give your answer a title wrapped in double angular brackets, like <<title>>." for q in QUESTIONS]
    prompts += [f"List three {t} as a numbered list." for t in LIST_TOPICS]
    prompts += [f"{q} Answer in one sentence." for q in QUESTIONS]
    return [{"prompt": p, "source": "instruction"} for p in prompts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench", type=Path, help="bigbench/benchmark_tasks of the extracted BIG-bench 1.0.0 sdist")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rnd = random.Random(SEED)
    pool_file = args.out / "prompts.jsonl"
    if args.bigbench:
        bigbench = bigbench_prompts(rnd, args.bigbench)
    else:
        existing = [json.loads(line) for line in pool_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        bigbench = sorted((r for r in existing if r["source"].startswith("bigbench:")), key=lambda r: r["prompt"])
    rows = bigbench + instruction_prompts() + [{"prompt": q, "source": "question"} for q in OPEN_QUESTIONS]
    seen: set[str] = set()
    rows = [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]
    random.Random(SEED).shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with pool_file.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{pool_file}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
