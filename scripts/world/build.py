"""Write the world's data, suite and vocabulary to disk (deterministic bytes)."""
from __future__ import annotations

import json
import os

from . import lexicon as L
from .generator import STAGE2_MIX, World, max_tokens

DEFAULT_SEED = 1234
GENERAL_SIZE = 20000
SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>")


def _dump_jsonl(path: str, rows) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=False, ensure_ascii=True) + "\n")


def write_suite(world: World, tickets_test: list, out_dir: str) -> dict:
    tasks = world.suite(tickets_test)
    meta = []
    for name, cat, scorer, items, opts in tasks:
        fn = f"{name}.jsonl"
        _dump_jsonl(os.path.join(out_dir, fn), items)
        if scorer == "multiple_choice":
            mnt = 1
        elif scorer == "refusal":
            mnt = 12
        else:
            mnt = max_tokens(items) + 4
        meta.append({"name": name, "category": cat, "path": fn, "scorer": scorer, "max_new_tokens": mnt, **opts})
    suite = {
        "name": "world-v1",
        "version": "1",
        "description": ("Held-out regression suite of the bundled synthetic world (seed %d): instruction following, "
                        "format, knowledge, reasoning and safety skills learned by bundled:tiny-world in pretraining, "
                        "plus the narrow support-ticket task (category 'task').  No prompt here appears in any "
                        "pretraining, general or task training example." % world.seed),
        "seed": world.seed,
        "tasks": meta,
    }
    with open(os.path.join(out_dir, "suite.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(suite, f, indent=2)
        f.write("\n")
    return suite


def vocabulary(world: World, texts=()) -> list:
    """Special tokens first, then every word the world can produce, sorted."""
    words = set(L.PAYLOAD_WORDS) | set(L.PUNCT) | set(L.DIGITS)
    for t in texts:
        words.update(t.split())
    # enumerate every template word to be safe
    ex = list(world.training_stream("vocab-scan", 20000))
    for e in ex:
        words.update(e.prompt.split())
        words.update(e.response.split())
    words -= set(SPECIAL_TOKENS)
    return list(SPECIAL_TOKENS) + sorted(words)


def build_all(root: str, seed: int = DEFAULT_SEED) -> dict:
    """Write data/support-tickets, data/general, suites/world-v1 and data/vocab.txt under ``root``
    (the ``core/forgetless/bundled`` directory)."""
    world = World(seed)
    tickets = world.tickets()
    tdir = os.path.join(root, "data", "support-tickets")
    for split, rows in tickets.items():
        _dump_jsonl(os.path.join(tdir, f"{split}.jsonl"), rows)
    suite = write_suite(world, tickets["test"], os.path.join(root, "suites", "world-v1"))
    # bundled:general follows the mixture the model finished pretraining on (STAGE2_MIX: the stage-1
    # mixture plus extra 2-3 step arithmetic), so mixing/replaying it rehearses what the model last
    # consolidated; with PRETRAIN_MIX (2.7 % 3-step chains) LoRA + 30 % mixing kept 95.3 % of the general
    # score, with STAGE2_MIX 97.2 % (same model and recipe, see benchmarks/forgetting_matrix.py).
    general = [{"id": f"general-{i:05d}", "prompt": e.prompt, "response": e.response, "skill": e.skill}
               for i, e in enumerate(world.training_stream("general", GENERAL_SIZE, STAGE2_MIX))]
    _dump_jsonl(os.path.join(root, "data", "general", "train.jsonl"), general)
    texts = []
    for rows in tickets.values():
        for r in rows:
            texts += [r["prompt"], r["response"]]
    for t in suite["tasks"]:
        with open(os.path.join(root, "suites", "world-v1", t["path"])) as f:
            for line in f:
                it = json.loads(line)
                texts.append(it["prompt"])
                texts += [it.get("target", "")] + it.get("choices", [])
    vocab = vocabulary(world, texts)
    with open(os.path.join(root, "data", "vocab.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(vocab) + "\n")
    return {"seed": seed, "vocab_size": len(vocab), "general": len(general),
            "tickets": {k: len(v) for k, v in tickets.items()},
            "suite_tasks": {t["name"]: t["category"] for t in suite["tasks"]}}
