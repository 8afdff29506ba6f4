"""A full output volume at promotion: the stage fails naming the volume and the bytes needed, no
partial model is visible, and a model promoted earlier stays intact."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

pytest.importorskip("torch")

from forgetless import atomic  # noqa: E402
from forgetless.errors import StageError  # noqa: E402


def _job_with_trained_output(tmp_path: Path, tiny_model_dir: Path, full: bool):
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from forgetless.api.manifests import validate_document

    workdir = tmp_path / "work"
    output = workdir / "train" / "output"
    if full:
        AutoModelForCausalLM.from_pretrained(tiny_model_dir).save_pretrained(output)
        AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(output)
    else:
        from peft import LoraConfig, get_peft_model

        peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                    LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
        peft_model.save_pretrained(output)
    document = yaml.safe_load(f"""
apiVersion: forgetless.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: space}}
spec:
  model: {{name: {tiny_model_dir}}}
  dataset: {{task: {{path: /unused.jsonl}}}}
  method: {{type: {"full" if full else "lora"}}}
""")
    return validate_document(document), workdir


def _earlier_model(workdir: Path) -> tuple[Path, str]:
    earlier = workdir / "promoted"
    earlier.mkdir(parents=True)
    (earlier / "config.json").write_text('{"earlier": true}')
    return earlier, atomic.directory_digest(earlier)


@pytest.mark.parametrize("full", [False, True], ids=["lora", "full"])
def test_too_little_free_space_fails_before_writing_naming_the_bytes(tmp_path, tiny_model_dir, monkeypatch, full):
    from forgetless_trainer import promotion

    job, workdir = _job_with_trained_output(tmp_path, tiny_model_dir, full)
    earlier, digest = _earlier_model(workdir)
    Usage = namedtuple("Usage", "total used free")
    monkeypatch.setattr(promotion.shutil, "disk_usage", lambda path: Usage(10_000, 9_000, 1_000))
    with pytest.raises(StageError) as caught:
        promotion.promote(job, workdir)
    message = str(caught.value)
    assert "1000 B free" in message and "promotion needs" in message and "bytes)" in message
    needed = int(message.split("(")[1].split(" bytes")[0])
    assert needed > 1_000
    assert atomic.directory_digest(earlier) == digest
    assert sorted(p.name for p in workdir.iterdir()) == ["promoted", "train"]  # no staging left behind


def test_enospc_while_writing_leaves_nothing_partial_and_the_earlier_model_intact(tmp_path, tiny_model_dir, monkeypatch):
    from forgetless_trainer import promotion

    job, workdir = _job_with_trained_output(tmp_path, tiny_model_dir, full=True)
    earlier, digest = _earlier_model(workdir)
    real_copy = shutil.copytree

    def filling_copy(src, dst, **kwargs):
        real_copy(src, dst, **kwargs)  # half of it lands, then the volume is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(promotion.shutil, "copytree", filling_copy)
    with pytest.raises(StageError, match=r"ran out of space while promoting \(No space left on device\).*bytes"):
        promotion.promote(job, workdir)
    assert atomic.directory_digest(earlier) == digest
    assert sorted(p.name for p in workdir.iterdir()) == ["promoted", "train"]
