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

The result (`promotedModel`) names the directory, and with an output volume the claim, the path
inside the claim and a `pvc://<claim>/<path>` URI (the form KServe's storageUri takes), plus a
content digest over every file, so a consumer can check it got exactly what passed.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from forgetless import atomic
from forgetless.api.schema import FineTuneJob
from forgetless.contract import PROMOTED_DIR, TRAIN_OUTPUT
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
    with atomic.atomic_directory(destination) as staging:
        if merged:
            from forgetless_trainer.modeling import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(job.spec.model, adapter_path=source, base_dir=base_dir)
            model.merge_and_unload().save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            shutil.copytree(source, staging / "adapter")
        else:
            shutil.copytree(source, staging, dirs_exist_ok=True)
    record: dict[str, Any] = {
        "path": str(destination),
        "digest": atomic.directory_digest(destination),
        "format": "merged+adapter" if merged else "full",
    }
    record.update(volume_location(job, destination))
    return record
