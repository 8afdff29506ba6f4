"""What one forgetting-budget check costs: the general KL (forward passes) vs the probe (generation + scoring).

    python benchmarks/kl_cost.py [--model tiny-world|smollm2] [--repeat 3]

Loads the model of examples/budget-kl.yaml (tiny-world) or examples/smollm2-naive.yaml (SmolLM2-135M-
Instruct, the `smollm2` extra), builds the general KL on its suite's general probe items (16 per task)
and caches the base (the full distribution, and the top-256 cache the trainer uses for large
vocabularies), moves the weights a little (Gaussian noise on the MLP weights), then times one KL
measurement and one probe (`suite_probe`: the same 16 items per task, generated and scored by the
evaluator) and prints the ratio, and the top-256 KL next to the exact one (a lower bound of it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = {"tiny-world": "budget-kl.yaml", "smollm2": "smollm2-naive.yaml"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MANIFESTS), default="tiny-world")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--noise", type=float, default=0.002)
    args = parser.parse_args()

    import torch

    from forgetless.api.manifests import validate_document
    from forgetless_trainer.chat import install_template
    from forgetless_trainer.mitigations.forgetting_budget import suite_probe
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless_trainer.training import general_kl

    job = validate_document(yaml.safe_load((REPO / "examples" / MANIFESTS[args.model]).read_text()))
    model, tokenizer = load_model_and_tokenizer(job.spec.model)
    install_template(tokenizer, job.spec.dataset)
    exact = general_kl.for_job(job, tokenizer, max_length=model.config.max_position_embeddings)
    top = general_kl.GeneralKL(exact.rows, pad_id=exact.pad_id, full_cache_limit_bytes=0)
    vocab = model.config.vocab_size
    print(f"{args.model}: {len(exact.rows)} rows, {exact.tokens} answer tokens, vocabulary {vocab}; full cache "
          f"{exact.tokens * vocab * 4 / 2**20:.1f} MB, top-{general_kl.TOP_K} cache "
          f"{exact.tokens * (general_kl.TOP_K * 12 + 4) / 2**20:.1f} MB")
    exact.cache_reference(model)
    top.cache_reference(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "mlp" in name:
                param.add_(torch.randn(param.shape, generator=generator) * args.noise)

    def timed(fn):
        fn()  # warm up
        began = time.perf_counter()
        for _ in range(args.repeat):
            value = fn()
        return value, (time.perf_counter() - began) / args.repeat

    value, kl_seconds = timed(lambda: exact.measure(model))
    bounded = top.measure(model)
    probe = suite_probe(job, 16)
    _, probe_seconds = timed(lambda: probe(model, tokenizer))
    print(f"KL {value:.5f} nats/token (top-{general_kl.TOP_K} cache: {bounded:.5f}, "
          f"{100 * bounded / value:.1f} % of it)")
    print(f"one check: KL {kl_seconds:.2f} s, probe {probe_seconds:.2f} s: {probe_seconds / kl_seconds:.1f}x "
          f"(mean of {args.repeat}, torch threads {torch.get_num_threads()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
