#!/usr/bin/env python3
"""Training throughput and MFU of a ~1B Llama-shaped model (random weights, built from a config),
bf16 under DeepSpeed ZeRO-2, full fine-tuning and LoRA, one process.

On a GPU: Llama-3.2-1B's shape (hidden 2048, 16 layers, 32 heads / 8 KV heads, FFN 8192, vocab
128256, tied embeddings: 1.24 B parameters), sequences of 2048 tokens. Without a GPU (or with
`--tiny`) a tiny shape runs on the CPU in seconds, says that no GPU was found, and still prints
the figures (MFU needs a known peak, so it is n/a on a CPU).

FLOPs per trained token (the figure MFU is computed from; PaLM appendix B convention):
    N      = parameters used in matmuls: every Linear of the decoder + the LM head (the input
             embedding is a lookup, not a matmul; a tied head still counts once as the head)
    attn   = 12 · layers · hidden · seq   (QKᵀ and A·V: 2·2·seq·hidden per layer forward, ×3 with
             the backward; causal masking is not subtracted, as in the PaLM/Megatron convention)
    full   = 6·N + attn                      (forward 2N, backward 4N: input and weight gradients)
    LoRA   = 4·N + 6·N_lora + attn            (frozen base: forward 2N + input gradients 2N, no weight
             gradients; the adapters' own N_lora parameters are trained fully: 6·N_lora)
    MFU    = FLOPs per token × tokens/s ÷ the GPU's dense bf16 peak (PEAK_BF16 below).

Launch (single process; the world-size-1 env vars are filled in like the trainer does):
    python benchmarks/gpu_throughput.py                 # GPU: 1B shape; CPU: tiny shape
    python benchmarks/gpu_throughput.py --tiny --steps 5
    python benchmarks/gpu_throughput.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("core", "trainer")]

PEAK_BF16 = {  # dense bf16 TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
    "H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L40": 181.0,
    "A10G": 125.0, "A10": 125.0, "L4": 121.0, "RTX 4090": 165.0, "A6000": 155.0, "V100": 125.0,
}
"""H100/H200 SXM; an H100 PCIe is 756 (matched by the name "H100 PCIe" below)."""

ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=128256, seq=2048, batch=4)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, seq=128, batch=4)


def peak_tflops(name: str) -> float | None:
    if "H100" in name and "PCIe" in name:
        return 756.0
    for key, value in PEAK_BF16.items():
        if key in name:
            return value
    return None


def matmul_params(model) -> int:
    """Weights of every Linear (the LM head included, tied or not); the input embedding is a lookup."""
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def flops_per_token(n_matmul: int, n_lora: int, shape: dict, method: str) -> float:
    attn = 12 * shape["num_hidden_layers"] * shape["hidden_size"] * shape["seq"]
    if method == "full":
        return 6 * n_matmul + attn
    return 4 * n_matmul + 6 * n_lora + attn


def run(method: str, shape: dict, steps: int, warmup: int, device) -> dict:
    import deepspeed
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**{k: v for k, v in shape.items() if k not in ("seq", "batch")},
                         max_position_embeddings=shape["seq"], tie_word_embeddings=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(dtype=torch.bfloat16)
    if device.type == "cuda":
        model.config._attn_implementation = "sdpa"
    n_matmul = matmul_params(model)
    n_lora = 0
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
        n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5 if method == "full" else 2e-4)
    ds_config = {
        "train_micro_batch_size_per_gpu": shape["batch"], "gradient_accumulation_steps": 1,
        "train_batch_size": shape["batch"], "gradient_clipping": 1.0, "zero_optimization": {"stage": 2},
        "bf16": {"enabled": True}, "zero_allow_untested_optimizer": True, "zero_force_ds_cpu_optimizer": False,
        "torch_adam": True, "steps_per_print": 1 << 30,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (shape["batch"], shape["seq"]), generator=generator).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(warmup + steps):
        sync()
        began = time.perf_counter()
        loss = engine(input_ids=ids, labels=ids, use_cache=False).loss
        engine.backward(loss)
        engine.step()
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - began)
    tokens = shape["batch"] * shape["seq"] * len(times)
    seconds = sum(times)
    per_token = flops_per_token(n_matmul, n_lora, shape, method)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del engine, model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return {
        "method": method, "params_matmul": n_matmul, "params_trainable": n_lora or n_matmul,
        "tokens_per_second": tokens / seconds, "seconds_per_step": seconds / len(times),
        "flops_per_token": per_token, "achieved_tflops": per_token * tokens / seconds / 1e12,
        "loss": float(loss.detach()), "peak_memory_gib": memory,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny shape (automatic without a GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 on GPU, 5 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3 on GPU, 1 tiny)")
    parser.add_argument("--methods", default="full,lora")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    os.environ.setdefault("DS_BUILD_OPS", "0")
    from forgetless_trainer import quiet

    quiet.silence()
    import torch

    from forgetless_trainer.training import distributed

    gpu = torch.cuda.is_available()
    tiny = args.tiny or not gpu
    shape = TINY if tiny else ONE_B
    steps = args.steps or (5 if tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    ranks = distributed.setup_env(1)
    device = distributed.device_for(ranks.local_rank)
    distributed.init_process_group(ranks)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    peak = peak_tflops(name) if gpu else None
    if not gpu:
        print("no GPU found: running the tiny shape on the CPU (MFU needs a GPU's peak: n/a)")
    print(f"device: {name}; shape: {'tiny' if tiny else 'Llama-3.2-1B'} "
          f"(hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, seq {shape['seq']}, batch {shape['batch']}); "
          f"bf16, ZeRO-2, {steps} timed steps after {warmup} warm-up")
    results = []
    for method in args.methods.split(","):
        result = run(method.strip(), shape, steps, warmup, device)
        result["mfu"] = result["achieved_tflops"] / peak if peak else None
        results.append(result)
        mfu = f"{100 * result['mfu']:.1f} %" if result["mfu"] is not None else "n/a"
        mem = f", peak memory {result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] else ""
        print(f"{method:>4}: {result['tokens_per_second']:,.0f} tokens/s, {result['seconds_per_step']:.3f} s/step, "
              f"{result['achieved_tflops']:.3f} TFLOP/s achieved, MFU {mfu} (peak {peak or 'unknown'} TFLOP/s){mem}")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "tiny": tiny, "peak_tflops": peak, "results": results}, indent=2))
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
