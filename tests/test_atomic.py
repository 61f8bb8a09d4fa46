"""Atomic writes: nothing at the final path unless the write finished; normal permissions."""

from __future__ import annotations

import os
import stat

import pytest

from ehrxdiff_core.atomic import atomic_dir, atomic_path


def test_atomic_path_success_and_mode(tmp_path):
    final = tmp_path / "a" / "out.txt"
    with atomic_path(final) as tmp:
        tmp.write_text("x")
        assert not final.exists()
    assert final.read_text() == "x"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(final.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in final.parent.iterdir()] == ["out.txt"]


def test_atomic_path_error_leaves_nothing(tmp_path):
    final = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(final) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_and_cleans(tmp_path):
    final = tmp_path / "model"
    final.mkdir()
    (final / "old").write_text("old")
    with atomic_dir(final) as tmp:
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    with pytest.raises(ValueError):
        with atomic_dir(tmp_path / "other") as tmp:
            (tmp / "x").write_text("x")
            raise ValueError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
