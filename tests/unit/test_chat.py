"""Chat templates: exact label masks for the five families' templates, the default template, the
override, and the raw ` =>` format kept byte-for-byte for base models."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from forgetless.api.schema import DatasetSpec  # noqa: E402
from forgetless_trainer import chat  # noqa: E402
from forgetless_trainer import data as D  # noqa: E402
from forgetless_trainer.stages import StageError  # noqa: E402
from tests.support.tiny_models import FAMILIES  # noqa: E402

CONVERSATION = (
    ("system", "you are a helpful assistant ."),
    ("user", "reverse alpha beta"),
    ("assistant", "beta alpha"),
    ("user", "copy delta"),
    ("assistant", "delta"),
)

# what the loss must cover, per assistant turn: the content and the end-of-turn token, nothing else
LABELLED = {
    "llama": ["beta alpha<|eot_id|>", "delta<|eot_id|>"],
    "qwen2": ["beta alpha<|im_end|>", "delta<|im_end|>"],
    "mistral": [" beta alpha</s>", " delta</s>"],
    "gemma2": ["beta alpha<end_of_turn>", "delta<end_of_turn>"],
    "phi3": ["beta alpha<|end|>", "delta<|end|>"],
}


def _tokenizer(family_model, name):
    from forgetless_trainer.modeling import load_tokenizer

    return load_tokenizer(str(family_model(name)))


def labelled_runs(tokenizer, ids, labels):
    runs, current = [], []
    for tok, lab in zip(ids, labels):
        if lab == -100:
            if current:
                runs.append(current)
            current = []
        else:
            assert lab == tok
            current.append(tok)
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_assistant_turn_and_its_end_of_turn_token_is_labelled_nothing_else(family_model, name):
    tokenizer = _tokenizer(family_model, name)
    fmt = chat.ChatFormat(tokenizer, chat.resolve_template(tokenizer))
    conversation = CONVERSATION[1:] if name == "gemma2" else CONVERSATION  # Gemma 2 has no system role
    ids, labels = fmt.encode(conversation, 512)
    text = tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in conversation], tokenize=False)
    assert tokenizer.decode(ids) == text  # the whole rendered conversation, its own BOS once
    assert labelled_runs(tokenizer, ids, labels) == LABELLED[name]
    # the end-of-turn token is one real added token, and generation stops on it
    eot = FAMILIES[name].end_of_turn
    assert fmt.end_of_turn_id() == tokenizer.convert_tokens_to_ids(eot) != tokenizer.unk_token_id


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_instruction_record_of_an_instruct_model_is_one_exchange_through_the_template(family_model, name):
    tokenizer = _tokenizer(family_model, name)
    encoder = D.Encoder(tokenizer, 512, chat=chat.ChatFormat(tokenizer, chat.resolve_template(tokenizer)))
    ids, labels = encoder.encode(D.Example("reverse alpha beta", "beta alpha"))
    assert labelled_runs(tokenizer, ids, labels) == LABELLED[name][:1]
    prompt = chat.ChatFormat(tokenizer, chat.resolve_template(tokenizer)).generation_text("reverse alpha beta")
    assert tokenizer.decode(ids).startswith(prompt)  # the evaluator prompts with exactly the trained prefix
    # text records stay raw (all tokens + EOS) even with a template
    t_ids, t_labels = encoder.encode(D.Example("", "hello world", "text"))
    assert t_ids == t_labels and t_ids[-1] == tokenizer.eos_token_id


def test_gemma_rejects_a_system_turn_with_a_message_naming_the_field(family_model):
    tokenizer = _tokenizer(family_model, "gemma2")
    fmt = chat.ChatFormat(tokenizer, chat.resolve_template(tokenizer))
    with pytest.raises(StageError, match="dataset.chatTemplate: .*System role not supported"):
        fmt.encode(CONVERSATION, 512)


def test_chat_records_parse_system_and_all_turns():
    record = {"system": "be brief", "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ciao"}]}
    example = D.parse_record(record, "chat", "x:1")
    assert example.messages == (("system", "be brief"), ("user", "hi"), ("assistant", "hello"),
                                ("user", "bye"), ("assistant", "ciao"))
    assert (example.prompt, example.response) == ("hi\nhello\nbye", "ciao")  # the raw view, unchanged
    assert D.parse_record(example.to_record(), None, "x:2").messages == example.messages  # replay round trip
    with pytest.raises(StageError, match='"system" must be a string'):
        D.parse_record({**record, "system": 3}, "chat", "x:3")


def test_template_resolution_default_override_and_raw(tiny_model_dir, tmp_path):
    from forgetless_trainer.modeling import load_tokenizer

    base = load_tokenizer(str(tiny_model_dir))  # no template: a base model
    assert chat.resolve_template(base, DatasetSpec(task={"path": "t.jsonl"})) is None
    assert chat.resolve_template(base, DatasetSpec(task={"path": "t.jsonl"}, format="chat")) == chat.DEFAULT_CHAT_TEMPLATE
    inline = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} </s> {% endfor %}"
              "{% if add_generation_prompt %}assistant : {% endif %}")
    assert chat.resolve_template(base, DatasetSpec(task={"path": "t.jsonl"}, chatTemplate=inline)) == inline
    file = tmp_path / "tpl.jinja"
    file.write_text(inline)
    assert chat.resolve_template(base, DatasetSpec(task={"path": "t.jsonl"}, chatTemplate="tpl.jinja"), tmp_path) == inline
    with pytest.raises(StageError, match="dataset.chatTemplate: 'nope.jinja' is neither"):
        chat.resolve_template(base, DatasetSpec(task={"path": "t.jsonl"}, chatTemplate="nope.jinja"), tmp_path)
    # the override renders with the base tokenizer: assistant content + the (special) </s> labelled
    fmt = chat.ChatFormat(base, inline)
    ids, labels = fmt.encode((("user", "copy alpha"), ("assistant", "alpha beta")), 64)
    assert labelled_runs(base, ids, labels) == ["alpha beta </s>"]  # WordLevel decode joins with spaces


def test_default_chatml_on_a_base_tokenizer_labels_content_and_im_end(family_model):
    tokenizer = _tokenizer(family_model, "llama")
    fmt = chat.ChatFormat(tokenizer, chat.DEFAULT_CHAT_TEMPLATE)
    ids, labels = fmt.encode(CONVERSATION, 512)
    assert labelled_runs(tokenizer, ids, labels) == ["beta alpha<|im_end|>", "delta<|im_end|>"]


def test_base_model_instruction_records_keep_the_raw_prompt_format_exactly(tiny_model_dir):
    from forgetless_trainer.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids, labels = D.Encoder(tokenizer, 32).encode(D.Example("reverse alpha beta", "beta alpha"))
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["reverse", "alpha", "beta", "=>", "beta", "alpha", "</s>"]
    assert labels[:4] == [-100] * 4 and labels[4:] == ids[4:]


def test_bundled_tiny_world_has_no_template_and_stays_raw():
    from forgetless import bundled
    from forgetless_trainer.modeling import load_tokenizer

    tokenizer = load_tokenizer(str(bundled.resolve("bundled:tiny-world", "model")))
    assert chat.resolve_template(tokenizer, DatasetSpec(task={"path": "bundled:support-tickets"})) is None
    assert chat.chat_format(tokenizer) is None


def test_evaluator_prompts_an_instruct_model_through_its_template_and_stops_at_end_of_turn(family_model):
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from forgetless.suites import load_suite
    from forgetless_trainer.evaluation import lmeval
    from forgetless_trainer.evaluation.evaluator import evaluate_suite

    tokenizer = _tokenizer(family_model, "llama")
    model = AutoModelForCausalLM.from_pretrained(family_model("llama"))
    seen = {}
    real = model.generate

    def spy(**kwargs):
        seen.setdefault("prompt", tokenizer.decode(kwargs["input_ids"][0][kwargs["attention_mask"][0].bool()]))
        seen["eos"] = kwargs["eos_token_id"]
        return real(**kwargs)

    model.generate = spy
    suite = load_suite("bundled:world-v1").subset(1)
    result = evaluate_suite(model, tokenizer, suite, batch_size=4)
    assert len(result.items) == len(suite.tasks)
    prompt = seen["prompt"]
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n")
    assert prompt.endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n") and " =>" not in prompt
    assert tokenizer.convert_tokens_to_ids("<|eot_id|>") in seen["eos"]
    assert lmeval.uses_chat_template(tokenizer)
    from forgetless_trainer.modeling import load_tokenizer
    from forgetless import bundled

    assert not lmeval.uses_chat_template(load_tokenizer(str(bundled.resolve("bundled:tiny-world", "model"))))
