"""Write a directory (or file) so that readers see either the old one or the complete new one.

Checkpoints, final models, exports, converted models and tokenized-data caches
are all written into a temporary sibling (``.tmp-NAME``) and renamed into
place. A process killed half-way leaves only the temporary directory, which
the next writer removes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(target: Path) -> Path:
    return target.with_name(f".tmp-{target.name}")


@contextmanager
def atomic_directory(target: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces ``target`` by one rename."""
    target = Path(target)
    tmp = temporary_sibling(target)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target, fsync=fsync)


def replace_directory(tmp: Path, target: Path, *, fsync: bool = False) -> None:
    """Put the finished ``tmp`` in place of ``target`` by one rename (for a directory several processes filled)."""
    if fsync:
        for f in Path(tmp).rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)


def atomic_write_text(target: Path, text: str) -> None:
    """Write a file through a temporary sibling and one rename (reports, generated JSONL)."""
    target = Path(target)
    tmp = temporary_sibling(target)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if absent) for the block: one process at a time on this machine."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def built_once(target: Path, marker: str, build: Callable[[Path], object]) -> Path:
    """``target``, built by ``build(tmp)`` into a temporary directory and renamed into place, unless it already
    holds ``marker`` (a file the build writes). Several processes of one run may ask at once: one builds, under
    a lock, and the others find it built."""
    target = Path(target)
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(target.with_name(f".{target.name}.lock")):
        if not (target / marker).is_file():
            with atomic_directory(target) as tmp:
                build(tmp)
    return target
