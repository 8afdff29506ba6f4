"""General KL(π₀‖π) on the general probe items: the adapter-disabled path (LoRA) and the cached-base
path (full fine-tuning) agree, it is 0 at the start and positive once the weights moved, the top-k
cache bounds it from below, and the trainer reports it (summary, history, metric) and can budget on it."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

from forgetless_trainer.training.general_kl import GeneralKL, Row, has_adapter, probe_rows  # noqa: E402


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32)


def _lora(model):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"],
                                              task_type="CAUSAL_LM"))
    return model


def _rows():
    # word ids of the tiny vocabulary (tests.support.tiny_models.TINY_WORDS after 5 specials/markers): contexts of 3-6 tokens
    g = torch.Generator().manual_seed(1)
    rows = []
    for n in range(10):
        context = [2] + torch.randint(5, 60, (3 + n % 4,), generator=g).tolist() + [4]
        answer = torch.randint(5, 60, (1 + n % 3,), generator=g).tolist()
        rows.append(Row(tuple(context), tuple(answer)))
    return rows


def _perturb(params, scale=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


def test_lora_with_the_adapter_disabled_equals_a_separately_loaded_base(tiny_model_dir):
    lora = _lora(_load(tiny_model_dir))
    _perturb([p for n, p in lora.named_parameters() if "lora_B" in n])
    assert has_adapter(lora)
    rows = _rows()
    free = GeneralKL(rows, batch_rows=4)
    via_adapter = free.measure(lora)
    assert free.reference == "adapter-disabled"
    cached = GeneralKL(rows, batch_rows=4)
    cached.cache_reference(_load(tiny_model_dir))  # a second copy of the same base weights
    assert cached.reference == "cached-full"
    via_cache = cached.measure(lora)
    assert via_adapter > 1e-3
    assert via_cache == pytest.approx(via_adapter, abs=1e-5)
    assert lora.training is True  # measuring leaves the train/eval mode as it found it


def test_zero_at_step_zero_and_positive_after_a_perturbation(tiny_model_dir):
    model = _load(tiny_model_dir)
    kl = GeneralKL(_rows())
    kl.cache_reference(model)
    assert abs(kl.measure(model)) < 1e-7
    _perturb([model.model.layers[0].mlp.down_proj.weight], scale=0.2)
    assert kl.measure(model) > 1e-4
    lora = _lora(_load(tiny_model_dir))  # B = 0 at initialisation: the model is its base
    assert abs(GeneralKL(_rows()).measure(lora)) < 1e-7


def test_the_top_k_cache_bounds_the_exact_kl_from_below(tiny_model_dir):
    model = _load(tiny_model_dir)
    exact, coarse = GeneralKL(_rows()), GeneralKL(_rows(), full_cache_limit_bytes=0, top_k=8)
    exact.cache_reference(model)
    coarse.cache_reference(model)
    assert coarse.reference == "cached-top8" and abs(coarse.measure(model)) < 1e-6
    _perturb([model.model.layers[1].self_attn.o_proj.weight], scale=0.3)
    full, bounded = exact.measure(model), coarse.measure(model)
    assert 0 < bounded <= full + 1e-6


def test_probe_rows_are_the_general_items_answers_as_the_evaluator_prompts_them():
    from forgetless.suites import load_suite
    from forgetless_trainer.modeling import load_model_and_tokenizer
    from forgetless.api.schema import ModelSpec

    _, tokenizer = load_model_and_tokenizer(ModelSpec(name="bundled:tiny-world"))
    suite = load_suite("bundled:world-v1")
    rows = probe_rows(suite, tokenizer, 2)
    general = [t for t in suite.tasks if t.category != "task"]
    # every general task gives its 2 items, but refusal items without a reference answer are skipped
    with_answer = sum(1 for t in general for i in t.items[:2] if t.scorer == "multiple_choice" or i.get("target"))
    assert len(rows) == with_answer < 2 * len(general)
    mc = suite.task("knowledge_mc").items[0]
    prompt = tokenizer(f"{mc['prompt']} =>")["input_ids"]
    correct = tokenizer(f"{mc['prompt']} => {mc['choices'][mc['target_index']]}")["input_ids"][len(prompt):]
    assert Row(tuple(prompt), tuple(correct)) in rows


@pytest.mark.parametrize("method, reference", [("full", "cached-full"), ("lora", "adapter-disabled")])
def test_the_trainer_reports_the_general_kl(tmp_path, manifest, tiny_model_dir, method, reference):
    from forgetless_trainer.live_metrics import REGISTRY
    from forgetless_trainer.training.loop import train
    from tests.component.test_train_stage import make_job

    job = make_job(manifest, tiny_model_dir, tmp_path / "data", name=f"kl-{method}", method={"type": method},
                   training={"learningRate": 1e-2})
    summary = train(job, tmp_path / "work").summary
    history = summary["generalKLHistory"]
    assert history[0] == [0, 0.0] and history[-1][0] == summary["stepsTaken"]
    assert summary["generalKL"] > 0 and summary["generalKLReference"] == reference and summary["generalKLTokens"] > 0
    labels = {"namespace": "local", "finetunejob": f"kl-{method}"}
    assert REGISTRY.get_sample_value("forgetless_train_general_kl", labels) == pytest.approx(summary["generalKL"], abs=1e-6)


def test_a_kl_budget_breaches_rolls_back_and_never_runs_the_probe(tmp_path, manifest, tiny_model_dir):
    from forgetless_trainer.training.loop import train
    from tests.component.test_train_stage import make_job, trainable

    def probe(model, tokenizer):
        raise AssertionError("signal kl must not generate or score")

    job = make_job(manifest, tiny_model_dir, tmp_path / "data", name="kl-budget", method={"type": "full"}, training={"epochs": 2, "learningRate": 1e-2},
                   mitigation={"forgettingBudget": {"signal": "kl", "maxKL": 1e-6, "probeIntervalSteps": 3,
                                                    "onBreach": "Stop"}})
    start = trainable(__import__("transformers").AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)))
    result = train(job, tmp_path / "work", probe=probe)
    summary = result.summary
    assert summary["stoppedReason"] == "forgetting_budget" and summary["steps"] == 3
    assert "general KL" in summary["message"] and "rolled back to step 0" in summary["message"]
    assert summary["budgetSignal"] == "kl" and summary["probeHistory"] == []
    final = trainable(result.model)
    assert all(torch.allclose(final[n], start[n]) for n in final)  # back at step 0: the base weights
    assert summary["generalKL"] == pytest.approx(0.0, abs=1e-6)


def test_with_a_chat_template_the_answer_follows_the_generation_prompt(tmp_path):
    from transformers import AutoTokenizer

    from forgetless.suites import load_suite
    from forgetless_trainer.chat import chat_format
    from tests.support.tiny_models import build

    tokenizer = AutoTokenizer.from_pretrained(str(build("qwen2", tmp_path / "qwen")))
    suite = load_suite("bundled:world-v1")
    rows = probe_rows(suite, tokenizer, 1)
    item = suite.task("knowledge_qa").items[0]
    context = chat_format(tokenizer).generation_text(item["prompt"])  # what the evaluator prompts with
    whole = tokenizer(context + item["target"], add_special_tokens=False)["input_ids"]
    prompt = tokenizer(context, add_special_tokens=False)["input_ids"]
    assert Row(tuple(prompt), tuple(whole[len(prompt):])) in rows
