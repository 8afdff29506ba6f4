#!/usr/bin/env python3
"""Build `bundled:general-chat-en`: general chat data for mixing, in the base model's own words.

    python scripts/build_self_rehearsal.py --bigbench DIR [--out core/forgetless/bundled/data/general-chat-en]

Self-synthesized rehearsal (Huang et al., 2024, "Mitigating Catastrophic Forgetting in Large
Language Models with Self-Synthesized Rehearsal"): the general data mixed into fine-tuning are the
base model's (SmolLM2-135M-Instruct, `bundled:smollm2-135m-instruct`) own greedy answers, through
its chat template, to general prompts. Rehearsing them pulls the tuned model back towards what it
did before, not towards some other model's style. Only answers that ended on their own (end-of-turn
within the token budget) are kept, so the data never teaches cut-off replies. The answers are kept
as the model wrote them, wrong ones included (`93 minus 65 equals 99`): rehearsal preserves
behaviour, it does not teach facts. Measured: 242 of 320 prompts kept, 248 s on one thread.

Prompts (none of them is an item of bundled:general-en-v1; DIR as for build_general_en_suite.py):
BIG-bench qa_wikidata facts of relations the suite does not use, arithmetic subtasks it does not use
(2-digit subtraction and multiplication), object_counting, misconceptions statements, and
instructions of the suite's kinds (yes/no, JSON with a key, a <<title>>, a numbered list) on other
questions. Deterministic (seed 2103, greedy decoding, one thread).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "core/forgetless/bundled/data/general-chat-en"
MODEL = "bundled:smollm2-135m-instruct"
SEED = 2103
MAX_NEW_TOKENS = 64
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


def bigbench_prompts(rnd: random.Random, bigbench: Path) -> list[str]:
    load = lambda task: json.loads((bigbench / task / "task.json").read_text(encoding="utf-8"))["examples"]
    facts = load("qa_wikidata")
    prompts = []
    for relation in RELATIONS:
        pool = [e["input"] for e in facts if e["input"].startswith(relation + " ")]
        prompts += ["Complete the sentence: " + p for p in rnd.sample(pool, 16)]
    for subtask in ("2_digit_subtraction", "2_digit_multiplication"):
        prompts += [e["input"] for e in rnd.sample(load(f"arithmetic/{subtask}"), 30)]
    prompts += [e["input"] for e in rnd.sample(load("object_counting"), 40)]
    prompts += ["Is the following statement true or false? " + e["input"] for e in rnd.sample(load("misconceptions"), 40)]
    return prompts


def instruction_prompts() -> list[str]:
    prompts = [f"Answer with yes or no only: {q}" for q in YES_NO]
    prompts += [f'{q} Give your answer as a JSON object with the key "answer".' for q in QUESTIONS]
    prompts += [f"{q} Give your answer a title wrapped in double angular brackets, like <<title>>." for q in QUESTIONS]
    prompts += [f"List three {t} as a numbered list." for t in LIST_TOPICS]
    prompts += [f"{q} Answer in one sentence." for q in QUESTIONS]
    return prompts


def generate(prompts: list[str], batch_size: int = 32) -> list[str | None]:
    """Greedy answers through the chat template; None where the answer did not end by itself."""
    import torch

    from forgetless.api.schema import ModelSpec
    from forgetless_trainer.chat import chat_format
    from forgetless_trainer.modeling import load_model_and_tokenizer

    torch.set_num_threads(1)
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=MODEL))
    fmt = chat_format(tokenizer)
    stop = fmt.end_of_turn_id()
    pad = tokenizer.pad_token_id
    answers: list[str | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    began = time.perf_counter()
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        ids = [tokenizer(fmt.generation_text(prompts[i]), add_special_tokens=False)["input_ids"] for i in index]
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            input_ids[row, width - len(x):] = torch.tensor(x)
            attention[row, width - len(x):] = 1
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=attention, max_new_tokens=MAX_NEW_TOKENS,
                                 do_sample=False, pad_token_id=pad, eos_token_id=stop)
        for row, i in enumerate(index):
            tokens = out[row, width:].tolist()
            if stop in tokens:
                answers[i] = tokenizer.decode(tokens[: tokens.index(stop)], skip_special_tokens=True).strip() or None
        print(f"{start + len(index)}/{len(prompts)} in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bigbench", type=Path, required=True, help="bigbench/benchmark_tasks of the extracted sdist")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    rnd = random.Random(SEED)
    prompts = bigbench_prompts(rnd, args.bigbench) + instruction_prompts()
    answers = generate(prompts)
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in zip(prompts, answers) if a]
    rnd.shuffle(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "train.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{args.out / 'train.jsonl'}: {len(rows)} of {len(prompts)} prompts kept (answers that ended by themselves)")


if __name__ == "__main__":
    main()
