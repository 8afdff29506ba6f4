"""Training data: reading DataSources, the prompt format, epoch mixing, sharding and batching.

Reading
    A DataSource is a JSONL file, or a directory of JSONL files. A directory that holds a
    `train.jsonl` contributes only `train*.jsonl` (split files such as validation.jsonl and
    test.jsonl stay held out, as in `bundled:support-tickets`); any other directory contributes
    every `*.jsonl`, in name order. Every problem is a `StageError` naming the file and line.

Records (docs/contracts.md)
    instruction `{"prompt", "response"}`; chat `{"messages": [{"role", "content"}, ...]}` with an
    optional `"system"` string (with a chat template, chat.py, every assistant turn is trained on;
    without one the last assistant message is the response and the earlier turns' contents joined
    by newlines are the prompt); text `{"text"}` (trained on all tokens). Task data is read in `dataset.format`;
    general and replay data may be in any of the three shapes (detected per record).

Prompt format
    input `f"{prompt} =>"` (with the tokenizer's special tokens, e.g. BOS), target `f" {response}"`
    (no special tokens) + EOS. Prompt and response are tokenised separately and concatenated, so
    the boundary is exact (the evaluator generates from the same prompt ids) and the loss mask
    covers exactly the response tokens + EOS. Too long: the prompt loses tokens from its start
    (the end, next to `=>`, matters most); a response longer than the whole budget keeps its start.

Batching: padding, not packing
    Each micro-batch is right-padded to its own longest example (dynamic padding), pad labels
    -100. Examples here are short and of similar length, so the padding waste is small, while
    packing would need block-diagonal attention (or position resets) to keep examples from
    attending to each other, and would make "one example" no longer one row: the mixing
    fraction, replay draws, the data position saved in checkpoints and per-rank sharding all
    stay exact and simple with one example per row. Right padding + the causal mask also means
    the Fisher estimate can run without an attention mask (padding only follows real tokens).

Mixing
    Each epoch holds all task training examples plus general and replay examples so that
    `n_general == round_half_up(generalFraction * epoch_size)` exactly (same for replay); see
    `epoch_plan`. The epoch is shuffled with a generator seeded by (seed, epoch).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from forgetless import locations
from forgetless.api.schema import DataSource
from forgetless.errors import StageError

IGNORE_INDEX = -100
FORMATS = ("instruction", "chat", "text")


@dataclass(frozen=True)
class Example:
    """One training example: `text` examples have prompt "" and train on all of `response`."""

    prompt: str
    response: str
    kind: str = "instruction"  # instruction | text
    source: str = "task"  # task | general | replay:<origin>
    messages: tuple[tuple[str, str], ...] | None = None
    """A chat record's turns ((role, content), system first); rendered by a chat template (chat.py)."""

    def to_record(self) -> dict[str, Any]:
        if self.messages:
            return {"messages": [{"role": r, "content": c} for r, c in self.messages], "source": self.source}
        if self.kind == "text":
            return {"text": self.response, "source": self.source}
        return {"prompt": self.prompt, "response": self.response, "source": self.source}


def round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


# --------------------------------------------------------------------------- reading


def parse_record(record: Any, fmt: str | None, where: str, source: str = "task") -> Example:
    """A JSON object -> Example; `fmt` None detects the shape. Errors name `where` (file:line)."""
    if not isinstance(record, dict):
        raise StageError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if fmt is None:
        fmt = "chat" if "messages" in record else "text" if "text" in record and "prompt" not in record else "instruction"
    if fmt == "instruction":
        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise StageError(
                f'{where}: an instruction record needs string fields "prompt" and "response" '
                f"(found keys {sorted(record)}; set dataset.format to chat or text if the data is in that shape)"
            )
        return Example(prompt, response, "instruction", source)
    if fmt == "chat":
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            raise StageError(f'{where}: a chat record needs "messages": a non-empty list of {{"role", "content"}} objects')
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=None)
        if last is None or last == 0:
            raise StageError(f"{where}: a chat record needs an assistant message after at least one other turn")
        system = record.get("system")
        if system is not None and not isinstance(system, str):
            raise StageError(f'{where}: "system" must be a string (the system prompt)')
        turns = ((("system", system),) if system else ()) + tuple((str(m.get("role")), m["content"]) for m in messages)
        prompt = "\n".join(m["content"] for m in messages[:last])
        return Example(prompt, messages[last]["content"], "instruction", source, turns)
    if fmt == "text":
        text = record.get("text")
        if not isinstance(text, str) or not text:
            raise StageError(f'{where}: a text record needs a non-empty string field "text"')
        return Example("", text, "text", source)
    raise StageError(f"unknown dataset format {fmt!r} (choose one of {', '.join(FORMATS)})")


def jsonl_files(path: Path, field_name: str) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        if (path / "train.jsonl").is_file():
            return sorted(path.glob("train*.jsonl"))
        files = sorted(p for p in path.glob("*.jsonl") if p.is_file())
        if files:
            return files
        raise StageError(f"{field_name}: directory {path} holds no .jsonl files")
    raise StageError(f"{field_name}: no such file or directory: {path} (check the path, or the pvc it is in)")


def jsonl_records(path: Path) -> Iterable[tuple[str, Any]]:
    """(`file:line`, parsed record) for each non-blank line; a line that is not JSON is a StageError."""
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise StageError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            yield where, record


def read_jsonl(path: Path, fmt: str | None, source: str = "task") -> list[Example]:
    return [parse_record(record, fmt, where, source) for where, record in jsonl_records(path)]


def read_source(
    source: DataSource, fmt: str | None, *, field_name: str, base_dir: Path | None = None, tag: str = "task"
) -> list[Example]:
    """All examples of a DataSource, in file order. `field_name` (e.g. dataset.task) goes in errors."""
    try:
        path = locations.resolve_path(
            source.path, pvc=source.pvc, config_map=source.config_map, kind="data", base_dir=base_dir
        )
    except LookupError as exc:
        raise StageError(f"{field_name}.path: {exc}") from exc
    examples: list[Example] = []
    for file in jsonl_files(path, field_name):
        examples.extend(read_jsonl(file, fmt, tag))
    if not examples:
        raise StageError(f"{field_name}: {path} holds no examples")
    return examples


def split_validation(examples: Sequence[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, validation): `round_half_up(fraction·n)` examples picked by a generator seeded with `seed`;
    at least one example always stays for training."""
    n_val = min(round_half_up(fraction * len(examples)), len(examples) - 1) if fraction > 0 else 0
    order = list(range(len(examples)))
    random.Random(f"validation-{seed}").shuffle(order)
    val_idx = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in val_idx]
    val = [e for i, e in enumerate(examples) if i in val_idx]
    return train, val


# --------------------------------------------------------------------------- mixing


@dataclass
class MixPart:
    """A pool of examples that fills `fraction` of every epoch (drawn cyclically, reshuffled per epoch)."""

    name: str
    fraction: float
    examples: list[Example] = field(default_factory=list)


def epoch_plan(n_task: int, parts: Sequence[MixPart]) -> tuple[int, dict[str, int]]:
    """(epoch size E, {part: count}).

    E = round_half_up(n_task / (1 − Σ fractions)); each part gets round_half_up(fraction·E) and the
    task gets the rest (all task examples, ± 1 from rounding: the shuffled task list is cut or
    wrapped). Parts without examples get 0 and do not enlarge the epoch.
    """
    active = [p for p in parts if p.examples and p.fraction > 0]
    total_fraction = sum(p.fraction for p in active)
    if total_fraction >= 1.0:
        raise StageError("dataMixing.generalFraction + replay.fraction must be below 1 so some task data remains")
    size = max(round_half_up(n_task / (1.0 - total_fraction)), 1)
    counts = {p.name: round_half_up(p.fraction * size) for p in active}
    counts["task"] = size - sum(counts.values())
    return size, counts


def _cyclic(pool: Sequence[Example], n: int, rng: random.Random) -> list[Example]:
    order = list(pool)
    rng.shuffle(order)
    return [order[i % len(order)] for i in range(n)]


def build_epoch(task: Sequence[Example], parts: Sequence[MixPart], epoch: int, seed: int) -> list[Example]:
    """The examples of one epoch, shuffled; composition given by `epoch_plan` (exact)."""
    if not task:
        raise StageError("dataset.task: no training examples left after the validation split")
    _, counts = epoch_plan(len(task), parts)
    rng = random.Random(f"epoch-{seed}-{epoch}")
    chosen = _cyclic(task, counts["task"], rng)
    for part in parts:
        if counts.get(part.name):
            chosen.extend(_cyclic(part.examples, counts[part.name], rng))
    rng.shuffle(chosen)
    return chosen


# --------------------------------------------------------------------------- sharding and batching


def shard_micro_batches(
    epoch: Sequence[Example], *, rank: int, world_size: int, batch_size: int, accumulation: int
) -> list[list[Example]]:
    """This rank's micro-batches of one epoch; every rank gets the same number, a multiple of `accumulation`.

    The epoch is padded cyclically with its own first examples to a multiple of world·accumulation
    (nothing is added with one process and no accumulation), rank r takes every world-th example,
    and its shard is cut into ga·ceil(len/(bs·ga)) near-equal micro-batches (sizes differ by ≤ 1).
    """
    unit = world_size * accumulation
    padded = list(epoch) + [epoch[i % len(epoch)] for i in range((-len(epoch)) % unit)]
    shard = padded[rank::world_size]
    n_micro = accumulation * math.ceil(len(shard) / (batch_size * accumulation))
    base, extra = divmod(len(shard), n_micro)
    batches, start = [], 0
    for i in range(n_micro):
        size = base + (1 if i < extra else 0)
        batches.append(shard[start : start + size])
        start += size
    return batches


def steps_per_epoch(epoch_size: int, *, world_size: int, batch_size: int, accumulation: int) -> int:
    unit = world_size * accumulation
    shard = (epoch_size + (-epoch_size) % unit) // world_size
    return math.ceil(shard / (batch_size * accumulation))


def encode(tokenizer, example: Example, max_length: int, chat=None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels -100 on the prompt; see the module docstring. With `chat` (a
    `forgetless_trainer.chat.ChatFormat`) instruction and chat examples go through the chat template
    and every assistant turn is trained on; text examples stay raw."""
    if chat is not None and example.kind != "text":
        from forgetless_trainer.chat import messages_of

        return chat.encode(messages_of(example), max_length)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if example.kind == "text":
        ids = tokenizer(example.response, add_special_tokens=True)["input_ids"][: max_length - len(eos)] + eos
        return ids, list(ids)
    prompt = tokenizer(f"{example.prompt} =>", add_special_tokens=True)["input_ids"]
    response = tokenizer(f" {example.response}", add_special_tokens=False)["input_ids"] + eos
    if len(response) >= max_length:
        response = response[: max_length - 1]
    if len(prompt) + len(response) > max_length:
        prompt = prompt[len(prompt) + len(response) - max_length :]
    return prompt + response, [IGNORE_INDEX] * len(prompt) + response


def collate(encoded: Iterable[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad to the longest row: {input_ids, attention_mask, labels} as LongTensors."""
    import torch

    rows = list(encoded)
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def mean_token_nll(model: Any, encoder: Any, examples: list[Any], batch_size: int, device: Any) -> float:
    """Mean next-token NLL over the labelled tokens of `examples`, in eval mode without gradients
    (the model's training mode is restored): the validation loss, and the forecast's task/general loss."""
    import torch

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in encoder.batches(examples, batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                nll, mask = token_nll(logits, batch["labels"])
                total += float((nll * mask).sum())
                count += int(mask.sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)


def token_nll(logits, labels):
    """(next-token NLL per position, mask of labelled positions), both (batch, T-1), NLL in fp32."""
    import torch

    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return nll, mask


class Encoder:
    """Tokenises examples once (cached by example) and collates micro-batches."""

    def __init__(self, tokenizer, max_length: int, chat=None, packing: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat = chat
        self.packing = packing
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._cache: dict[Example, tuple[list[int], list[int]]] = {}

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        hit = self._cache.get(example)
        if hit is None:
            hit = self._cache[example] = encode(self.tokenizer, example, self.max_length, self.chat)
        return hit

    def train_batch(self, examples: Sequence[Example]):
        """A training micro-batch: packed rows when `training.packing` is on (training/packing.py)."""
        if self.packing:
            from forgetless_trainer.training.packing import pack

            return pack([self.encode(e) for e in examples], self.max_length, self.pad_id)
        return self.batch(examples)

    def batch(self, examples: Sequence[Example]):
        return collate((self.encode(e) for e in examples), self.pad_id)

    def batches(self, examples: Sequence[Example], batch_size: int):
        for start in range(0, len(examples), batch_size):
            yield self.batch(examples[start : start + batch_size])
