#!/usr/bin/env python3
"""Regenerate the bundled world's data, suite and vocabulary (deterministic from --seed).

Writes under core/forgetless/bundled/:
  data/support-tickets/{train,validation,test}.jsonl   narrow task (bundled:support-tickets)
  data/general/train.jsonl                              general instruction data (bundled:general)
  data/vocab.txt                                        word-level vocabulary for the tokenizer
  suites/world-v1/                                      regression suite (bundled:world-v1)
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "core"))

from world.build import DEFAULT_SEED, build_all  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--out", default=os.path.join(ROOT, "core", "forgetless", "bundled"))
    a = ap.parse_args()
    print(json.dumps(build_all(a.out, a.seed), indent=2))


if __name__ == "__main__":
    main()
