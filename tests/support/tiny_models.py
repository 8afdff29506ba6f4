"""Tiny random-weight models of the families people fine-tune, built locally (no hub access).

`build(family, path)` writes a `save_pretrained` model of ~100 k parameters (2 layers, hidden 32)
and a byte-level BPE tokenizer trained here with `tokenizers` (vocab ≈ 400) whose tokenizer config
carries the family's chat template (written from the published templates) and whose special
tokens (`<|eot_id|>`, `<|im_end|>`, `</s>`, `<end_of_turn>`, `<|end|>`, …) are real added tokens.
Also `word_level_llama(path)`: the plainer word-level Llama most tests use (`tiny_model_dir`).
Test support only: nothing in a runtime package imports this.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
    "{%- else %}\n"
    "    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "{%- endif %}\n"
    "{%- for message in messages %}\n"
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n"
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n"
    "    {{- '<|im_start|>assistant\\n' }}\n"
    "{%- endif %}\n"
)

MISTRAL_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}\n"
    "    {%- set system_message = messages[0]['content'] %}\n"
    "    {%- set loop_messages = messages[1:] %}\n"
    "{%- else %}\n"
    "    {%- set loop_messages = messages %}\n"
    "{%- endif %}\n"
    "\n"
    "{{- bos_token }}\n"
    "{%- for message in loop_messages %}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {%- endif %}\n"
    "    {%- if message['role'] == 'user' %}\n"
    "        {%- if loop.first and system_message is defined %}\n"
    "            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}\n"
    "        {%- else %}\n"
    "            {{- ' [INST] ' + message['content'] + ' [/INST]' }}\n"
    "        {%- endif %}\n"
    "    {%- elif message['role'] == 'assistant' %}\n"
    "        {{- ' ' + message['content'] + eos_token}}\n"
    "    {%- else %}\n"
    "        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}\n"
    "    {%- endif %}\n"
    "{%- endfor %}\n"
)

GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    config_class: str
    model_class: str
    template: str
    specials: tuple[str, ...]
    bos: str | None
    eos: str
    pad: str
    end_of_turn: str
    linear: tuple[str, ...]
    """The family's linear layer names inside a decoder layer (lm_head excluded)."""
    extra: tuple[tuple[str, object], ...] = ()


LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

FAMILIES: dict[str, Family] = {
    "llama": Family(
        "llama", "LlamaConfig", "LlamaForCausalLM", LLAMA3_TEMPLATE,
        ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"),
        "<|begin_of_text|>", "<|eot_id|>", "<|finetune_right_pad_id|>", "<|eot_id|>", LLAMA_LINEAR,
    ),
    "qwen2": Family(
        "qwen2", "Qwen2Config", "Qwen2ForCausalLM", QWEN25_TEMPLATE,
        ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        None, "<|im_end|>", "<|endoftext|>", "<|im_end|>", LLAMA_LINEAR,
    ),
    "mistral": Family(
        "mistral", "MistralConfig", "MistralForCausalLM", MISTRAL_TEMPLATE,
        ("<unk>", "<s>", "</s>", "[INST]", "[/INST]"),
        "<s>", "</s>", "<unk>", "</s>", LLAMA_LINEAR,
    ),
    "gemma2": Family(
        "gemma2", "Gemma2Config", "Gemma2ForCausalLM", GEMMA2_TEMPLATE,
        ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"),
        "<bos>", "<eos>", "<pad>", "<end_of_turn>", LLAMA_LINEAR,
        (("final_logit_softcapping", 30.0), ("attn_logit_softcapping", 50.0), ("query_pre_attn_scalar", 8),
         ("sliding_window", 16), ("head_dim", 8)),
    ),
    "phi3": Family(
        "phi3", "Phi3Config", "Phi3ForCausalLM", PHI3_TEMPLATE,
        ("<unk>", "<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"),
        "<s>", "<|endoftext|>", "<|endoftext|>", "<|end|>", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    ),
}

CORPUS = (
    "the quick brown fox jumps over the lazy dog . reverse alpha beta gamma . copy delta epsilon zeta . "
    "what is the capital of france ? paris . you are a helpful assistant . hello how are you ? fine thanks . "
    "sort these words : one two three four five . answer with yes or no . the order is late . sorry "
    "i can not help with that . write json { \"a\" : 1 } . first last count list kv plain ticket reply "
)


def _tokenizer(family: Family):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(family.specials), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([CORPUS] * 20, trainer=trainer)
    kwargs = {"eos_token": family.eos, "pad_token": family.pad}
    if family.bos:
        kwargs["bos_token"] = family.bos
    extra = [t for t in family.specials if t not in kwargs.values()]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, additional_special_tokens=extra, **kwargs)
    tokenizer.chat_template = family.template
    return tokenizer


def build(name: str, path: Path, *, seed: int = 0) -> Path:
    """A tiny `name` model + tokenizer saved in `path` (see FAMILIES)."""
    import torch
    import transformers

    family = FAMILIES[name]
    tokenizer = _tokenizer(family)
    config_class = getattr(transformers, family.config_class)
    config = config_class(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=name not in ("mistral", "phi3"),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **dict(family.extra),
    )
    if name == "phi3":
        config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    model = getattr(transformers, family.model_class)(config)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# --------------------------------------------------------------------------- the word-level Llama

TINY_WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
    "upsilon phi chi psi omega copy reverse sort count first last list kv plain what is the of a an "
    "ticket reply status closed open refund order late broken sorry can not help with that yes no "
    "one two three four five six seven eight nine zero plus minus then"
).split()


def word_level_llama(path: Path) -> Path:
    """A randomly initialised 2-layer word-level Llama (~40 k params, vocabulary TINY_WORDS, no chat
    template) + tokenizer in HF form: the `tiny_model_dir` fixture."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + ["=>"] + TINY_WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
