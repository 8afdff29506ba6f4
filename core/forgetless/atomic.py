"""Atomic writes to a work dir that several processes may share (one place for every writer).

A shared volume (ReadWriteMany) is seen by every rank of a multi-worker run, by stage pods that a
Job retried while the previous one was still dying, and by the operator's user. Two rules keep it
sane:

- a file or directory appears whole or not at all: it is written under a temp name next to its
  target and renamed into place (`os.replace` / `rename` are atomic within one file system);
- temp names are unique per writer (pid + random), so two writers never share a temp file (the
  failure seen in the cluster: both ranks wrote `summary.json.tmp`, one renamed it, the other's
  `os.replace` raised FileNotFoundError).

Only rank 0 writes shared files (see `forgetless_trainer.stages.is_main_process`); these helpers
make even a concurrent writer harmless: the last complete rename wins.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temp_path(target: Path) -> Path:
    """A hidden, unique sibling of `target` (same directory, so the final rename is atomic)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temp path to write `target`'s content to; on success it replaces `target`.

    On an exception the temp file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(target: Path, data: bytes) -> Path:
    with atomic_file(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_text(target: Path, text: str) -> Path:
    return write_bytes(target, text.encode("utf-8"))


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `target` as a whole.

    The previous `target` (if any) is moved aside under a unique name first and deleted after the
    swap, so readers see either the old directory or the new one, never a mix; between the two
    renames `target` is briefly absent. On an exception the staging directory is removed and the
    old `target` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temp_path(target)
    staging.mkdir()
    try:
        yield staging
        old = temp_path(target) if target.exists() else None
        if old is not None:
            target.rename(old)
        staging.rename(target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `lock_file` (created if needed) for the block.

    For work that must happen once per volume (a model conversion) although several ranks or stages
    may ask for it at the same time: the first holder does it, the others wait and then find it done.
    `flock` works across pods on one node and, on Linux, over NFS (emulated with byte-range locks);
    where a file system ignores it the atomic rename of the result still keeps readers safe.
    """
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def directory_digest(root: Path) -> str:
    """`sha256:<hex>` over the relative paths and contents of every file under `root` (sorted).

    Independent of timestamps and of where `root` is, so the same model written twice, or read back
    from another mount, has the same digest.
    """
    root = Path(root)
    total = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        total.update(path.relative_to(root).as_posix().encode() + b"\0" + digest.hexdigest().encode() + b"\n")
    return "sha256:" + total.hexdigest()
