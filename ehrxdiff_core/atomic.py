"""Atomic artifact writes: a killed job never leaves a file or folder that looks finished.

Every stage writes to a temporary sibling (same folder, so the rename is atomic on one file
system) and renames it over the final path only after the write succeeded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask_mode(base: int) -> int:
    """`base` masked by the process umask: mkstemp/mkdtemp create 0600/0700, artifacts should not be."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file path next to `final`; rename it to `final` on success, delete it on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.chmod(_umask_mode(0o666))
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to `final`; swap it in for `final` on success, delete it on error."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp_path.chmod(_umask_mode(0o777))
    try:
        yield tmp_path
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp_path, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, final)
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise
