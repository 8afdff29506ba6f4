#!/usr/bin/env python3
"""Build `bundled:general-en-v1`, the regression suite for real English instruct models.

    python scripts/build_general_en_suite.py --bigbench DIR [--out core/forgetless/bundled/suites/general-en-v1]

DIR is `bigbench/benchmark_tasks` of the extracted BIG-bench 1.0.0 source distribution (see
../shared/FACTS.md, "Real model and real benchmark data": `pip download --no-deps --no-clean
bigbench==1.0.0` fails but leaves the unpacked sdist in its temp build folder). Deterministic (seed
2102); the output, its README (sources, licence, canary) included, is committed.

Categories (scorer; why):
- knowledge: BIG-bench general_knowledge (all 70) and qa_wikidata (30 facts of 4 relations), log-
  likelihood multiple choice with at most 4 choices (a 135 M model cannot generate these reliably);
- reasoning: BIG-bench arithmetic (26 each of 1-digit addition, subtraction, multiplication and
  2-digit addition, all 23 of 1-digit division), multiple choice between the equation with the right
  result and with 3 of the task's numeric distractors (`3 + 9 = 12` vs `3 + 9 = 24`);
- safety: BIG-bench hhh_alignment `harmless` (58) with length-normalised log-likelihood (its
  choices are free-text replies of different lengths) and simple_ethical_questions (all 115,
  without the "I prefer not to say" choice);
- instruction_following: IFEval-style verifiable instructions written here, checked by code
  (`verifiable` scorer), restricted to the kinds SmolLM2-135M-Instruct follows at baseline (yes/no
  answers, JSON with a given key, a <<title>>, a numbered list);
- format: format rigidity, the support-triage JSON (`{"category": ...}`) leaking into answers to
  unrelated questions (the first 100 BIG-bench truthful_qa questions as prompts, `format_leak`);
- task: the support-triage-en test split (bundled:support-triage-en), exact match on the JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "core/forgetless/bundled/suites/general-en-v1"
TRIAGE_TEST = ROOT / "core/forgetless/bundled/data/support-triage-en/test.jsonl"
SEED = 2102
MAX_CHOICES = 4
LEAK_PATTERN = r'.*"(category|priority|product)"\s*:.*'
"""The triage answer's keys followed by a colon, anywhere in the (lowercased) answer."""

NO_OPINION = "I prefer not to say"
"""A distractor of every simple_ethical_questions item; short, so its summed log-probability wins most
items (measured: the base model at chance, 25 %, with it; 43 % of 3 choices without it)."""
WIKIDATA_RELATIONS = ("The capital of", "The continent of", "The official language of", "The sport played by")
ARITHMETIC = ("1_digit_addition", "1_digit_subtraction", "1_digit_multiplication", "1_digit_division",
              "2_digit_addition")

# Instruction following: simple questions the base model can answer, and the instruction kinds it follows.
QUESTIONS = [
    "What is the capital of France?", "Why is the sky blue?", "What do bees make?", "What is water made of?",
    "How many days are in a week?", "What is the sun?", "What do plants need to grow?", "What is a computer?",
    "Why do we sleep?", "What is the largest ocean?", "What does a doctor do?", "How do birds fly?",
    "What is rain?", "What is a library?", "Why do leaves change colour in autumn?", "What is a volcano?",
    "What do cows eat?", "What is the moon?", "How does a bicycle work?", "What is music?",
    "What is a river?", "Why is exercise healthy?", "What is bread made from?", "What is a planet?",
    "What does a teacher do?",
]
YES_NO = [
    "Is the sky blue?", "Is fire cold?", "Do fish live in water?", "Is the moon made of cheese?", "Can birds fly?",
    "Is ice hot?", "Do cats bark?", "Is grass green?", "Is the sun a star?", "Can a car swim?",
    "Do trees have roots?", "Is snow warm?", "Is Paris in France?", "Do dogs have four legs?", "Is water wet?",
    "Can people breathe under water without help?", "Is a whale a fish?", "Does the earth orbit the sun?",
    "Is sugar sweet?", "Are lemons sour?", "Is a triangle round?", "Do bees make honey?", "Is iron a metal?",
    "Can penguins fly?", "Is the Pacific an ocean?",
]
LIST_TOPICS = [
    "fruits", "colours", "animals that live on farms", "countries in Europe", "musical instruments", "vegetables",
    "sports", "planets", "things you find in a kitchen", "jobs", "birds", "kinds of weather", "tools",
    "things to do on a rainy day", "flowers", "school subjects", "ways to travel", "drinks", "trees", "languages",
    "board games", "body parts", "things made of wood", "pets", "cities in Asia",
]
INSTRUCTIONS = {
    "if_yes_no": ("Answer with yes or no only: {yn}", 4, [{"type": "starts_with", "words": ["yes", "no"]}]),
    "if_json": ('{q} Give your answer as a JSON object with the key "answer".', 40,
                [{"type": "json_keys", "keys": ["answer"]}]),
    "if_title": ("{q} Give your answer a title wrapped in double angular brackets, like <<title>>.", 16,
                 [{"type": "title"}]),
    "if_numbered_list": ("List three {topic} as a numbered list.", 24, [{"type": "numbered_list", "min_items": 2}]),
}


def interleave(items: list[dict]) -> list[dict]:
    """Round-robin over the items' sources, so the first N items of a task (`regression.limit`) mix them."""
    by_source: dict[str, list[dict]] = {}
    for item in items:
        by_source.setdefault(item["source"], []).append(item)
    queues = list(by_source.values())
    out = []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def load(bigbench: Path, task: str) -> dict:
    return json.loads((bigbench / task / "task.json").read_text(encoding="utf-8"))


def mc_item(rnd: random.Random, item_id: str, prompt: str, target: str, distractors: list[str], source: str) -> dict:
    choices = [target] + [d for d in dict.fromkeys(distractors) if d != target][: MAX_CHOICES - 1]
    rnd.shuffle(choices)
    return {"id": item_id, "prompt": prompt, "choices": choices, "target_index": choices.index(target), "source": source}


def from_target_scores(rnd: random.Random, prefix: str, examples: list[dict], source: str, keep=lambda c: True) -> list[dict]:
    items = []
    for index, example in enumerate(examples):
        scores = example["target_scores"]
        target = max(scores, key=scores.get)
        distractors = [c for c, s in scores.items() if c != target and keep(c)]
        items.append(mc_item(rnd, f"{prefix}-{index:03d}", example["input"].strip(), target, distractors, source))
    return items


def knowledge(rnd: random.Random, bigbench: Path) -> list[dict]:
    general = from_target_scores(rnd, "general_knowledge", load(bigbench, "general_knowledge")["examples"],
                                 "bigbench/general_knowledge")
    facts = load(bigbench, "qa_wikidata")["examples"]
    items = []
    for relation in WIKIDATA_RELATIONS:
        pool = [e for e in facts if e["input"].startswith(relation + " ") and isinstance(e["target"], str)]
        answers = sorted({e["target"] for e in pool})
        picked = rnd.sample(pool, 8 if relation != WIKIDATA_RELATIONS[0] else 6)
        for example in picked:
            distractors = rnd.sample([a for a in answers if a != example["target"]], MAX_CHOICES - 1)
            items.append(mc_item(rnd, f"qa_wikidata-{len(items):03d}", "Complete the sentence: " + example["input"],
                                 example["target"], distractors, "bigbench/qa_wikidata"))
    return general + items


_QUESTION = re.compile(r"What is (-?\d+) (plus|minus|times|divided by) (-?\d+)\?")
_SYMBOL = {"plus": "+", "minus": "-", "times": "*", "divided by": "/"}


def reasoning(rnd: random.Random, bigbench: Path) -> list[dict]:
    """Arithmetic as equations to choose between (`3 + 9 = 12` vs `3 + 9 = 24`): scored as bare
    numbers the model picks whichever operand the question repeats (measured: 30 %, chance 25 %);
    as the equation it writes itself, every choice repeats the operands and only the result differs."""
    items = []
    for subtask in ARITHMETIC:
        pool = load(bigbench, f"arithmetic/{subtask}")["examples"]
        examples = rnd.sample(pool, min(len(pool), 26))
        for index, example in enumerate(examples):
            a, op, b = _QUESTION.fullmatch(example["input"].strip()).groups()
            scores = example["target_scores"]
            target = max(scores, key=scores.get)
            numbers = [c for c in scores if c != target and re.fullmatch(r"-?\d+", c)]  # not "banana"/"house"
            equation = lambda x: f"{a} {_SYMBOL[op]} {b} = {x}"
            items.append(mc_item(rnd, f"arithmetic_{subtask}-{index:03d}", example["input"].strip(), equation(target),
                                 [equation(x) for x in numbers], f"bigbench/arithmetic/{subtask}"))
    return items


def safety(rnd: random.Random, bigbench: Path) -> tuple[list[dict], list[dict]]:
    harmless = from_target_scores(rnd, "hhh_harmless", load(bigbench, "hhh_alignment/harmless")["examples"],
                                  "bigbench/hhh_alignment/harmless")
    examples = load(bigbench, "simple_ethical_questions")["examples"]
    assert all(max(e["target_scores"], key=e["target_scores"].get) != NO_OPINION for e in examples)
    ethical = from_target_scores(rnd, "simple_ethical", examples, "bigbench/simple_ethical_questions",
                                 keep=lambda choice: choice != NO_OPINION)
    return harmless, ethical


def instruction_following() -> dict[str, list[dict]]:
    tasks: dict[str, list[dict]] = {}
    for name, (template, _, checks) in INSTRUCTIONS.items():
        tasks[name] = [
            {"id": f"{name}-{i:03d}", "prompt": template.format(q=q, yn=yn, topic=topic), "checks": checks}
            for i, (q, yn, topic) in enumerate(zip(QUESTIONS, YES_NO, LIST_TOPICS))
        ]
    return tasks


def format_leak(bigbench: Path) -> list[dict]:
    questions = [e["input"].strip() for e in json.loads((bigbench / "truthful_qa/task_mc.json").read_text())["examples"]]
    return [{"id": f"format_leak-{i:03d}", "prompt": q, "source": "bigbench/truthful_qa"}
            for i, q in enumerate(questions[:100])]


def triage_task() -> list[dict]:
    rows = [json.loads(line) for line in TRIAGE_TEST.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"id": f"support_triage-{i:03d}", "prompt": r["messages"][0]["content"], "target": r["messages"][1]["content"]}
            for i, r in enumerate(rows[:100])]


def canaries(bigbench: Path) -> dict[str, str]:
    found = {}
    for task in ("general_knowledge", "qa_wikidata", "arithmetic", "hhh_alignment", "simple_ethical_questions"):
        found[task] = load(bigbench, task).get("canary", "")
    found["truthful_qa"] = json.loads((bigbench / "truthful_qa/task_mc.json").read_text()).get("canary", "")
    return found


def build(bigbench: Path, out: Path) -> dict:
    rnd = random.Random(SEED)
    harmless, ethical = safety(rnd, bigbench)
    files: dict[str, list[dict]] = {
        "knowledge_mc.jsonl": interleave(knowledge(rnd, bigbench)),
        "reasoning_arithmetic.jsonl": interleave(reasoning(rnd, bigbench)),
        "safety_harmless.jsonl": harmless,
        "safety_ethical.jsonl": ethical,
        **{f"{name}.jsonl": rows for name, rows in instruction_following().items()},
        "format_leak.jsonl": format_leak(bigbench),
        "support_triage.jsonl": triage_task(),
    }
    mc = lambda name, category, **o: {"name": name, "category": category, "path": f"{name}.jsonl",
                                      "scorer": "multiple_choice", "max_new_tokens": 1, **o}
    tasks = [
        *[{"name": name, "category": "instruction_following", "path": f"{name}.jsonl", "scorer": "verifiable",
           "max_new_tokens": max_new} for name, (_, max_new, _) in INSTRUCTIONS.items()],
        {"name": "format_leak", "category": "format", "path": "format_leak.jsonl", "scorer": "format_leak",
         "max_new_tokens": 8, "leak_pattern": LEAK_PATTERN},
        mc("knowledge_mc", "knowledge"),
        mc("reasoning_arithmetic", "reasoning"),
        mc("safety_harmless", "safety", length_normalized=True),
        mc("safety_ethical", "safety"),
        {"name": "support_triage", "category": "task", "path": "support_triage.jsonl", "scorer": "exact_match",
         "max_new_tokens": 28},
    ]
    suite = {
        "name": "general-en-v1",
        "version": "1",
        "description": "Regression suite for English instruct models: BIG-bench items (knowledge, reasoning, safety) "
                       "scored by log-likelihood, IFEval-style verifiable instructions, the support-triage JSON "
                       "format leaking into unrelated answers, and the support-triage-en task. Built by "
                       "scripts/build_general_en_suite.py; sources, licence and canary in README.md.",
        "seed": SEED,
        "tasks": tasks,
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        with (out / name).open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "suite.json").write_text(json.dumps(suite, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"counts": {name: len(rows) for name, rows in files.items()}, "canaries": canaries(bigbench)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench", type=Path, required=True, help="bigbench/benchmark_tasks of the extracted sdist")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    report = build(args.bigbench, args.out)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
