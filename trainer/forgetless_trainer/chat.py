"""Prompt formats: the raw ` =>` format of base models, and chat templates of instruct models.

Which format (chosen once per job, from the tokenizer and `spec.dataset`; `resolve_template`):
1. `dataset.chatTemplate` (an inline Jinja string, or a path to a `.jinja`/text file) overrides
   everything;
2. else the tokenizer's own `chat_template` (an instruct model);
3. else, when `dataset.format` is `chat`, DEFAULT_CHAT_TEMPLATE (ChatML, `<|im_start|>role\n…
   <|im_end|>\n`) so multi-turn data is rendered with roles instead of newline-joined;
4. else none: the raw format of `forgetless_trainer.data` (`f"{prompt} =>"` + `f" {response}"` +
   EOS), byte-for-byte the format the bundled tiny-world model and suites were built with.

With a template, `install_template` puts it on the tokenizer (`tokenizer.chat_template`): the
trained output's saved tokenizer carries it, the evaluator prompts through it, and lm-eval runs
with `apply_chat_template=True`.

Label masks (`ChatFormat.encode`)
    The conversation is rendered to text once; the character span of every assistant turn is
    found by incremental rendering: its start is the length of the render of the turns before it
    with `add_generation_prompt=True` (the scaffolding that opens an assistant turn, e.g.
    `<|start_header_id|>assistant<|end_header_id|>\n\n`, is in that prefix, so it is never
    trained on), its end is the end of its content plus the template's end-of-turn token (the
    first special token the template writes after the content: `<|eot_id|>`, `<|im_end|>`,
    `</s>`, `<end_of_turn>`, `<|end|>`), so the model learns to stop. Whatever the template writes
    after that token (a newline) and every system/user turn stays -100. The text is tokenised
    once (no extra special tokens: templates write their own BOS) with character offsets, and a
    token is labelled when it starts inside an assistant span. Every render must be a prefix of
    the next; a template that rewrites earlier turns (e.g. moves the system prompt to the last
    user turn) is rejected with a message naming `dataset.chatTemplate`.

Too long: the first `max_length` tokens are kept (the system prompt and the first turns); if that
leaves no assistant token, the last `max_length` tokens are kept instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from forgetless.errors import StageError

IGNORE_INDEX = -100

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""ChatML, for a model without a template fine-tuned on chat data (`dataset.format: chat`)."""

Messages = tuple[tuple[str, str], ...]


def load_template(value: str, base_dir: Path | None = None) -> str:
    """`dataset.chatTemplate`: Jinja text (it holds `{{` or `{%`), else a path to a file holding it."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not path.is_file():
        raise StageError(
            f"dataset.chatTemplate: {value!r} is neither a Jinja template (no {{{{ or {{% in it) nor a file "
            f"({path} does not exist); inline the template or point at the file holding it"
        )
    return path.read_text(encoding="utf-8")


def resolve_template(tokenizer: Any, dataset: Any = None, base_dir: Path | None = None) -> str | None:
    """The chat template this job renders with, or None for the raw ` =>` format (module doc)."""
    override = getattr(dataset, "chat_template", None) if dataset is not None else None
    if override:
        return load_template(override, base_dir)
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):  # several named templates: the default one
        own = own.get("default")
    if own:
        return own
    if dataset is not None and getattr(dataset, "format", None) == "chat":
        return DEFAULT_CHAT_TEMPLATE
    return None


def install_template(tokenizer: Any, dataset: Any = None, base_dir: Path | None = None) -> str | None:
    """Resolve the template and set it on the tokenizer (so it is saved and used for evaluation)."""
    template = resolve_template(tokenizer, dataset, base_dir)
    if template is not None:
        tokenizer.chat_template = template
    return template


def messages_of(example: Any) -> Messages:
    """An Example as a conversation: its messages, or one user/assistant exchange."""
    if getattr(example, "messages", None):
        return example.messages
    return (("user", example.prompt), ("assistant", example.response))


class ChatFormat:
    """Renders conversations with a Jinja chat template (see the module doc)."""

    def __init__(self, tokenizer: Any, template: str):
        self.tokenizer = tokenizer
        self.template = template
        if not getattr(tokenizer, "is_fast", False):
            raise StageError("dataset.chatTemplate: chat templates need a fast tokenizer (tokenizer.json) for label masks")
        self._specials = sorted(
            {str(t) for t in getattr(tokenizer, "all_special_tokens", [])}
            | {str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()},
            key=len, reverse=True,
        )

    def render(self, messages: Sequence[tuple[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                [{"role": r, "content": c} for r, c in messages],
                chat_template=self.template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        except Exception as exc:  # jinja TemplateError, raise_exception() in the template
            raise StageError(f"dataset.chatTemplate: the chat template failed to render a record: {exc}") from exc

    def _end_of_turn(self, tail: str) -> int:
        """Length of `tail`'s prefix through the end-of-turn marker: the first special token in it, or,
        when the template's marker is not a special token of this tokenizer, the tail without its
        trailing whitespace."""
        best = None
        for token in self._specials:
            at = tail.find(token)
            if at >= 0 and (best is None or at < best[0] or (at == best[0] and len(token) > best[1])):
                best = (at, len(token))
        return best[0] + best[1] if best else len(tail.rstrip())

    def spans(self, messages: Messages) -> tuple[str, list[tuple[int, int]]]:
        """(full text, [(start, end) character span of each assistant turn])."""
        full = self.render(messages)
        spans = []
        for i, (role, content) in enumerate(messages):
            if role != "assistant":
                continue
            prefix = self.render(messages[:i], add_generation_prompt=True) if i else ""
            through = self.render(messages[: i + 1])
            if not (full.startswith(prefix) and through.startswith(prefix)):
                raise StageError(
                    "dataset.chatTemplate: the chat template does not render a conversation as a sequence of "
                    "turns (an earlier render is not a prefix of a later one), so assistant tokens cannot be "
                    "masked; use a template that renders turns in order"
                )
            text = content if content in through[len(prefix):] else content.strip()
            at = through.find(text, len(prefix))
            if at < 0:
                raise StageError(
                    "dataset.chatTemplate: the template changes the assistant's content; use one that writes it verbatim"
                )
            end = at + len(text)
            end += self._end_of_turn(through[end:])
            if not full.startswith(through[:end]):
                raise StageError(
                    "dataset.chatTemplate: the chat template renders an assistant turn differently when more turns "
                    "follow, so assistant tokens cannot be masked; use a template that renders turns in order"
                )
            spans.append((len(prefix), end))
        return full, spans

    def encode(self, messages: Messages, max_length: int) -> tuple[list[int], list[int]]:
        text, spans = self.spans(messages)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [
            tok if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for tok, (begin, _) in zip(ids, offsets)
        ]
        if len(ids) > max_length:
            head = labels[:max_length]
            if any(x != IGNORE_INDEX for x in head):
                return ids[:max_length], head
            return ids[-max_length:], labels[-max_length:]
        return ids, labels

    def end_of_turn_id(self) -> int | None:
        """The token id that closes an assistant turn (what generation stops on), if it is one token."""
        text, spans = self.spans((("user", "x"), ("assistant", "y")))
        start, end = spans[0]
        tail = text[text.find("y", start) + 1 : end]
        if not tail:
            return None
        ids = self.tokenizer(tail, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    def generation_text(self, prompt: str, system: str | None = None) -> str:
        turns = ((("system", system),) if system else ()) + (("user", prompt),)
        return self.render(turns, add_generation_prompt=True)


def chat_format(tokenizer: Any) -> ChatFormat | None:
    """The ChatFormat of a tokenizer that carries a template (after `install_template`), else None."""
    template = resolve_template(tokenizer)
    return ChatFormat(tokenizer, template) if template else None
