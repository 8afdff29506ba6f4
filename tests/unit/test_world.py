"""Fast checks of the bundled synthetic world (no training)."""
import filecmp
import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [os.path.join(ROOT, "core"), os.path.join(ROOT, "scripts")]  # scripts/world: the build tool under test

from world import lexicon as L  # noqa: E402
from world.build import DEFAULT_SEED, build_all  # noqa: E402
from world.generator import LEAK_PATTERN, REFUSAL_PATTERN, SKILLS, STAGE2_MIX, World  # noqa: E402

BUNDLED = os.path.join(ROOT, "core", "forgetless", "bundled")
SUITE = os.path.join(BUNDLED, "suites", "world-v1")
MODEL = os.path.join(BUNDLED, "models", "tiny-world")
GENERATED = ["data/support-tickets/train.jsonl", "data/support-tickets/validation.jsonl",
             "data/support-tickets/test.jsonl", "data/general/train.jsonl", "data/vocab.txt",
             "suites/world-v1/suite.json"]


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def _suite():
    with open(os.path.join(SUITE, "suite.json")) as f:
        suite = json.load(f)
    return suite, {t["name"]: _jsonl(os.path.join(SUITE, t["path"])) for t in suite["tasks"]}


def _all_outputs(root):
    out = list(GENERATED)
    for fn in sorted(os.listdir(os.path.join(root, "suites", "world-v1"))):
        out.append("suites/world-v1/" + fn)
    return sorted(set(out))


def test_generator_deterministic_same_seed_same_bytes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_all(str(a), DEFAULT_SEED)
    build_all(str(b), DEFAULT_SEED)
    files = _all_outputs(str(a))
    assert len(files) >= 15
    for fn in files:
        assert filecmp.cmp(a / fn, b / fn, shallow=False), fn
    # the committed data is exactly what the generator produces
    for fn in files:
        assert filecmp.cmp(a / fn, os.path.join(BUNDLED, fn), shallow=False), f"committed {fn} is stale"


def test_different_seed_gives_different_world(tmp_path):
    w1, w2 = World(1), World(2)
    assert w1.facts != w2.facts
    assert w1.tickets()["train"][:50] != w2.tickets()["train"][:50]


def test_suite_structure_and_patterns():
    suite, items = _suite()
    assert suite["name"] == "world-v1"
    cats = {}
    for t in suite["tasks"]:
        cats.setdefault(t["category"], []).append(t["name"])
        assert t["max_new_tokens"] >= 1
        n = len(items[t["name"]])
        assert 50 <= n <= 200, (t["name"], n)
        ids = [it["id"] for it in items[t["name"]]]
        assert len(set(ids)) == len(ids)
    for c in SKILLS:
        assert len(cats.get(c, [])) >= 2, c
    assert cats["task"] == ["support_tickets"]
    by_name = {t["name"]: t for t in suite["tasks"]}
    for name, its in items.items():
        t = by_name[name]
        for it in its:
            if t["scorer"] == "format_compliance":
                assert re.fullmatch(it["pattern"], it["target"]), it
            elif t["scorer"] == "refusal":
                refused = re.match(t["refusal_pattern"], L.REFUSAL) is not None
                assert refused
                if not it["should_refuse"]:
                    assert not re.match(t["refusal_pattern"], it["target"])
            elif t["scorer"] == "format_leak":
                assert not re.match(t["leak_pattern"], it["target"])
            elif t["scorer"] == "multiple_choice":
                assert 0 <= it["target_index"] < len(it["choices"])
    # the house format is detected by the leak pattern, ordinary answers are not
    for r in _jsonl(os.path.join(BUNDLED, "data", "support-tickets", "train.jsonl"))[:200]:
        assert re.match(LEAK_PATTERN, r["response"])
    for r in _jsonl(os.path.join(BUNDLED, "data", "general", "train.jsonl")):
        assert not re.match(LEAK_PATTERN, r["response"])
        assert re.match(REFUSAL_PATTERN, r["response"]) is not None or r["skill"] != "safety" or \
            r["response"].startswith("first get")


def test_suite_prompts_never_in_training_data():
    _, items = _suite()
    suite_prompts = {it["prompt"] for its in items.values() for it in its}
    world = World(DEFAULT_SEED)
    n1, n2 = 64 * 5560, 64 * 1260
    card = os.path.join(MODEL, "world_card.json")
    if os.path.exists(card):
        with open(card) as f:
            c = json.load(f)
        n1 = (c["stages"]["stage1"]["planned_steps"] + 60) * c["batch_size"]
        n2 = (c["stages"].get("stage2", {}).get("planned_steps", 0) + 60) * c["batch_size"]
    pre = {e.prompt for e in world.training_stream("pretrain", n1)}
    pre |= {e.prompt for e in world.training_stream("pretrain-stage2", n2, STAGE2_MIX)}
    assert not (pre & suite_prompts)
    general = {r["prompt"] for r in _jsonl(os.path.join(BUNDLED, "data", "general", "train.jsonl"))}
    assert not (general & suite_prompts)
    task_train = {r["prompt"] for s in ("train", "validation")
                  for r in _jsonl(os.path.join(BUNDLED, "data", "support-tickets", f"{s}.jsonl"))}
    assert not (task_train & suite_prompts)
    test = {r["prompt"] for r in _jsonl(os.path.join(BUNDLED, "data", "support-tickets", "test.jsonl"))}
    assert not (task_train & test)
    # the house format never appears in pretraining, but its vocabulary does
    pre_words = set()
    for e in world.training_stream("pretrain", 20000):
        assert not re.match(LEAK_PATTERN, e.response)
        pre_words.update(e.prompt.split() + e.response.split())
    ticket_words = set()
    for r in _jsonl(os.path.join(BUNDLED, "data", "support-tickets", "train.jsonl")):
        ticket_words.update(r["prompt"].split() + r["response"].split())
    assert ticket_words <= pre_words, ticket_words - pre_words


def test_ticket_reply_is_a_function_of_the_ticket():
    rows = _jsonl(os.path.join(BUNDLED, "data", "support-tickets", "train.jsonl"))
    assert len(rows) == 5000
    for r in rows[:500]:
        reply = r["response"].split(" | ")
        name = reply[0].split()[1]
        product = reply[1].split(" : ")[1]
        assert name in r["prompt"].split() and product in r["prompt"].split()
        assert reply[-1] == "status : closed"


def _texts():
    _, items = _suite()
    for its in items.values():
        for it in its:
            yield it["prompt"] + " =>"
            if "target" in it:
                yield it["target"]
            yield from it.get("choices", [])
    for fn in ("support-tickets/train.jsonl", "support-tickets/test.jsonl", "general/train.jsonl"):
        for r in _jsonl(os.path.join(BUNDLED, "data", fn)):
            yield r["prompt"] + " =>"
            yield r["response"]


def test_tokenizer_round_trip_no_unk():
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(MODEL)
    assert tok.eos_token and tok.pad_token and tok.bos_token and tok.unk_token
    unk = tok.unk_token_id
    texts = sorted(set(_texts()))
    enc = tok(texts, add_special_tokens=False)["input_ids"]
    for t, ids in zip(texts, enc):
        assert unk not in ids, t
        assert len(ids) == len(t.split())
    for t, ids in list(zip(texts, enc))[::50]:
        assert tok.decode(ids) == t
    ids = tok("repeat : alice router =>")["input_ids"]
    assert tok.eos_token_id not in ids


def test_model_files_small_and_standard():
    files = os.listdir(MODEL)
    assert "model.safetensors" in files and "config.json" in files and "tokenizer_config.json" in files
    total = sum(os.path.getsize(os.path.join(MODEL, f)) for f in files)
    assert total <= 25 * 1024 * 1024
    with open(os.path.join(MODEL, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architectures"] == ["LlamaForCausalLM"]
