#!/usr/bin/env python3
"""Write a model's self-rehearsal data to a folder, outside any job.

    python scripts/build_self_rehearsal.py --model bundled:smollm2-135m-instruct --out DIR [--size 256] [--max-new-tokens 64] [--prompts FILE]

The same code as the baseline stage's (forgetless_trainer.self_rehearsal): the model's greedy
answers to the first `size` prompts of the pool (default bundled:rehearsal-prompts-en) through its
chat template, keeping the answers that ended on their own. Useful to make the data once and name
it in `dataset.general` (e.g. on a volume shared by many jobs). Deterministic (greedy decoding).

`bundled:general-chat-en` was made by this script's first version (git history: commit faf6b96) from 320 prompts that are now the BIG-bench part of bundled:rehearsal-prompts-en plus its
instructions; it stays as it was so its figures stay reproducible.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from forgetless import atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:smollm2-135m-instruct")
    parser.add_argument("--out", type=Path, required=True, help="folder for train.jsonl")
    parser.add_argument("--prompts", default="bundled:rehearsal-prompts-en")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    import json

    import torch

    from forgetless.api.schema import DataSource, ModelSpec
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless_trainer.self_rehearsal import generate, kept_records, read_prompts

    torch.set_num_threads(1)
    prompts = read_prompts(DataSource(path=args.prompts), args.size)
    model, tokenizer = load_model_and_tokenizer(ModelSpec(name=args.model))
    began = time.perf_counter()
    answers = generate(model, tokenizer, prompts, args.max_new_tokens,
                       progress=lambda done, total: print(f"{done}/{total}", flush=True))
    records = kept_records(prompts, answers)
    atomic.write_text(args.out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    print(f"{args.out / 'train.jsonl'}: {len(records)} of {len(prompts)} answers kept "
          f"({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    main()
