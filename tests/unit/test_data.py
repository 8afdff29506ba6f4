"""Reading DataSources, the prompt format's loss mask, validation split, sharding and batching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forgetless.api.schema import DataSource
from forgetless_trainer import data as D
from forgetless.errors import StageError


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_reads_the_three_formats(tmp_path):
    inst = write_jsonl(tmp_path / "i.jsonl", [{"prompt": "p", "response": "r"}])
    chat = write_jsonl(
        tmp_path / "c.jsonl",
        [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"},
                       {"role": "user", "content": "more"}, {"role": "assistant", "content": "b"}]}],
    )
    text = write_jsonl(tmp_path / "t.jsonl", [{"text": "all of it"}])
    assert D.read_jsonl(inst, "instruction") == [D.Example("p", "r")]
    turns = (("user", "hi"), ("assistant", "a"), ("user", "more"), ("assistant", "b"))
    assert D.read_jsonl(chat, "chat") == [D.Example("hi\na\nmore", "b", messages=turns)]
    assert D.read_jsonl(text, "text") == [D.Example("", "all of it", "text")]
    # general data: the shape is detected per record
    mixed = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "p", "response": "r"}, {"text": "x"}])
    assert [e.kind for e in D.read_jsonl(mixed, None)] == ["instruction", "text"]


@pytest.mark.parametrize(
    "line, fmt, needle",
    [
        ("{not json", "instruction", "not valid JSON"),
        ('{"prompt": "p"}', "instruction", '"prompt" and "response"'),
        ('{"messages": [{"role": "user", "content": "x"}]}', "chat", "assistant message"),
        ('{"text": ""}', "text", '"text"'),
        ("[1, 2]", "instruction", "expected a JSON object"),
    ],
)
def test_malformed_lines_name_the_file_and_line(tmp_path, line, fmt, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "ok", "response": "ok"}, line] if fmt == "instruction" else [line])
    with pytest.raises(StageError) as err:
        D.read_jsonl(path, fmt)
    lineno = 2 if fmt == "instruction" else 1
    assert f"{path}:{lineno}" in str(err.value)
    assert needle in str(err.value)


def test_missing_path_names_field_and_path(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(StageError, match=r"dataset\.task: no such file or directory: .*nope\.jsonl"):
        D.read_source(DataSource(path=str(missing)), "instruction", field_name="dataset.task")
    with pytest.raises(StageError, match=r"dataset\.general\.path: .*no bundled data named 'nothing-here'"):
        D.read_source(DataSource(path="bundled:nothing-here"), None, field_name="dataset.general")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StageError, match="holds no .jsonl files"):
        D.read_source(DataSource(path=str(tmp_path / "empty")), None, field_name="dataset.task")


def test_directory_with_split_files_reads_only_train(tmp_path):
    write_jsonl(tmp_path / "d" / "train.jsonl", [{"prompt": "a", "response": "1"}])
    write_jsonl(tmp_path / "d" / "test.jsonl", [{"prompt": "held", "response": "out"}])
    got = D.read_source(DataSource(path=str(tmp_path / "d")), "instruction", field_name="dataset.task")
    assert [e.prompt for e in got] == ["a"]
    write_jsonl(tmp_path / "e" / "b.jsonl", [{"prompt": "b", "response": "2"}])
    write_jsonl(tmp_path / "e" / "a.jsonl", [{"prompt": "a", "response": "1"}])
    got = D.read_source(DataSource(path=str(tmp_path / "e")), "instruction", field_name="dataset.task")
    assert [e.prompt for e in got] == ["a", "b"]


def test_bundled_task_data_reads(tmp_path):
    got = D.read_source(DataSource(path="bundled:support-tickets"), "instruction", field_name="dataset.task")
    assert len(got) == 5000  # train.jsonl only, not validation/test


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from forgetless_trainer.modeling import load_tokenizer

    return load_tokenizer(str(tiny_model_dir))


def test_loss_mask_covers_response_and_eos_only(tokenizer):
    ids, labels = D.encode(tokenizer, D.Example("alpha beta", "gamma delta"), 64)
    words = tokenizer.convert_ids_to_tokens(ids)
    assert words == ["alpha", "beta", "=>", "gamma", "delta", "</s>"]
    assert labels == [-100, -100, -100, *ids[3:]]
    ids, labels = D.encode(tokenizer, D.Example("", "alpha beta", "text"), 64)
    assert labels == ids and ids[-1] == tokenizer.eos_token_id


def test_truncation_keeps_the_end_of_the_prompt_and_the_response(tokenizer):
    ids, labels = D.encode(tokenizer, D.Example("alpha beta gamma delta epsilon", "zeta eta"), 6)
    assert tokenizer.convert_ids_to_tokens(ids) == ["delta", "epsilon", "=>", "zeta", "eta", "</s>"]
    assert sum(label != -100 for label in labels) == 3


def test_collate_right_pads_with_ignored_labels(tokenizer):
    enc = D.Encoder(tokenizer, 32)
    batch = enc.batch([D.Example("alpha", "beta"), D.Example("alpha beta gamma", "delta epsilon")])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 7)
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert batch["labels"][0, 4:].tolist() == [-100] * 3
    assert batch["input_ids"][0, 4:].tolist() == [tokenizer.pad_token_id] * 3


def test_validation_split_is_deterministic_and_sized():
    examples = [D.Example(str(i), "r") for i in range(25)]
    train, val = D.split_validation(examples, 0.2, seed=7)
    assert len(val) == 5 and len(train) == 20
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(examples)
    assert D.split_validation(examples, 0.2, seed=7) == (train, val)
    assert D.split_validation(examples, 0.2, seed=8)[1] != val
    assert D.split_validation(examples[:1], 0.5, seed=0) == (examples[:1], [])


@pytest.mark.parametrize("n, world, bs, ga", [(10, 1, 4, 1), (45, 2, 4, 1), (45, 2, 3, 2), (7, 3, 4, 2), (1, 2, 8, 4)])
def test_sharding_gives_every_rank_the_same_number_of_micro_batches(n, world, bs, ga):
    epoch = [D.Example(str(i), "r") for i in range(n)]
    shards = [D.shard_micro_batches(epoch, rank=r, world_size=world, batch_size=bs, accumulation=ga) for r in range(world)]
    counts = {len(s) for s in shards}
    assert len(counts) == 1 and counts.pop() % ga == 0
    assert all(0 < len(b) <= bs for s in shards for b in s)
    seen = [e for s in shards for b in s for e in b]
    assert set(seen) == set(epoch)  # every example is used
    assert len(seen) - n < world * ga  # padding stays below one world·ga unit
    assert len(shards[0]) // ga == D.steps_per_epoch(n, world_size=world, batch_size=bs, accumulation=ga)
    if world == 1 and ga == 1:
        assert seen == epoch  # single process: exactly the epoch, in order
