"""benchmarks/gpu_throughput.py runs on a CPU (tiny shape), says no GPU was found, and prints the figures."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytest.importorskip("deepspeed")

from tests.component.test_train_stage import REPO, clean_env  # noqa: E402

SCRIPT = REPO / "benchmarks" / "gpu_throughput.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_formula_and_peaks():
    bench = _module()
    shape = {"num_hidden_layers": 2, "hidden_size": 64, "seq": 128}
    attn = 12 * 2 * 64 * 128
    assert bench.flops_per_token(1000, 0, shape, "full") == 6000 + attn
    assert bench.flops_per_token(1000, 10, shape, "lora") == 4000 + 60 + attn
    assert bench.peak_tflops("NVIDIA H200") == 989.0 and bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756.0 and bench.peak_tflops("Some CPU") is None


def test_benchmark_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=240, env=clean_env(), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["method"] for r in report["results"]] == ["full", "lora"]
    for result in report["results"]:
        assert result["tokens_per_second"] > 0 and result["achieved_tflops"] > 0
    full, lora = report["results"]
    assert lora["params_trainable"] < full["params_trainable"]
    if not report["peak_tflops"]:
        assert "no GPU found" in proc.stdout and "MFU n/a" in proc.stdout
    assert "tokens/s" in proc.stdout
