"""Promotion: write the model that passed the gate where deployment picks it up (one code path).

The evaluate stage calls `promote` right after it ran the gate, in a pod as in `forgetless run` and
`forgetless sweep` (nothing else calls it), so a model reaches the promote path only when the gate
did not block it (Passed, Warned with `onRegression: Warn`, or Rescued: then the interpolated model
of WORKDIR/rescue/output) and `spec.output.promote` is true. A blocked job writes nothing there
and leaves an earlier promoted model in place.

What is written (atomically: a staging directory renamed over the target):
- LoRA: the adapter merged into the base weights (a plain model `from_pretrained` loads, with its
  tokenizer) and the adapter itself under `adapter/`;
- full fine-tuning: the trained model and tokenizer as the train stage wrote them.

Where: `spec.output.promotePath` if set, else `<work dir>/promoted`. With an output volume
(`output.pvc`) promotePath is a path inside that volume (below its subPath), as every other
in-volume path of the spec; locally it is a plain path (relative to the current directory).

Space: before writing, the free space where the model goes is compared with what it needs (the
merged weights + the adapter, or the full model's files); too little, or ENOSPC / EDQUOT while
writing, fails the stage with a StageError naming the volume and the bytes needed. The staging
directory is removed and an earlier promoted model stays as it was.

The result (`promotedModel`) names the directory, and with an output volume the claim, the path
inside the claim and a `pvc://<claim>/<path>` URI (the form KServe's storageUri takes), plus a
content digest over every file, so a consumer can check it got exactly what passed.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from forgetless import atomic
from forgetless.api.schema import FineTuneJob
from forgetless.contract import PROMOTED_DIR, TRAIN_OUTPUT
from forgetless.errors import StageError
from forgetless.locations import pvc_root, resolve_path



def promotion_target(job: FineTuneJob, workdir: Path, base_dir: Path | None = None) -> Path:
    output = job.spec.output
    if not output.promote_path:
        return Path(workdir) / PROMOTED_DIR
    return resolve_path(output.promote_path, pvc=output.pvc, kind="model", base_dir=base_dir)


def volume_location(job: FineTuneJob, path: Path) -> dict[str, str]:
    """`{claimName, pathInVolume, uri}` of `path` when it lies on the job's output volume, else {}."""
    pvc = job.spec.output.pvc
    if pvc is None:
        return {}
    try:
        inside = Path(path).resolve().relative_to((pvc_root() / pvc.claim_name).resolve())
    except ValueError:
        return {}
    relative = inside.as_posix()
    return {"claimName": pvc.claim_name, "pathInVolume": relative, "uri": f"pvc://{pvc.claim_name}/{relative}"}


def _bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def _volume_name(job: FineTuneJob, destination: Path) -> str:
    claim = job.spec.output.pvc.claim_name if job.spec.output.pvc is not None else None
    return f"the output volume (PVC {claim})" if claim else f"the file system of {destination.parent}"


def promote(job: FineTuneJob, workdir: Path, base_dir: Path | None = None,
            source: Path | None = None) -> dict[str, Any] | None:
    """Write the trained model (or `source`: the rescued model, in the train stage's output format) to
    the promotion target; returns the `promotedModel` record.

    None when `spec.output.promote` is false. The caller has already checked the gate.
    """
    if not job.spec.output.promote:
        return None
    source = Path(source) if source is not None else Path(workdir) / TRAIN_OUTPUT
    if not source.is_dir():
        raise FileNotFoundError(f"no trained model in {source}: the train stage writes it there")
    destination = promotion_target(job, workdir, base_dir)
    merged = (source / "adapter_config.json").exists()
    model = tokenizer = None
    if merged:
        from forgetless_trainer.modeling import load_model_and_tokenizer

        model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=source, base_dir=base_dir)
        model = model.merge_and_unload()
        needed = sum(p.numel() * p.element_size() for p in model.parameters()) + _bytes(source)
    else:
        needed = _bytes(source)
    where = _volume_name(job, destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(destination.parent).free
    if free < needed:
        raise StageError(f"{where} has {_size(free)} free, promotion needs {_size(needed)} ({needed} bytes) for the "
                         f"model at {destination}: free space or enlarge the volume, then rerun the evaluate stage; "
                         "an earlier promoted model there is untouched")
    try:
        with atomic.atomic_directory(destination) as staging:
            if merged:
                model.save_pretrained(staging)
                tokenizer.save_pretrained(staging)
                shutil.copytree(source, staging / "adapter")
            else:
                shutil.copytree(source, staging, dirs_exist_ok=True)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StageError(f"{where} ran out of space while promoting ({exc.strerror}): the model needs about "
                         f"{_size(needed)} ({needed} bytes) at {destination}; nothing partial was left and an earlier "
                         "promoted model there is untouched") from exc
    record: dict[str, Any] = {
        "path": str(destination),
        "digest": atomic.directory_digest(destination),
        "format": "merged+adapter" if merged else "full",
    }
    record.update(volume_location(job, destination))
    return record
