"""Stage code dependencies follow the imports, so a code edit reruns exactly its stage and downstream."""

from __future__ import annotations

from pathlib import Path

from ehrxdiff_core.provenance import ROOT, stage_sources


def _names(files):
    return {str(Path(f).relative_to(ROOT)) for f in files}


def test_cohort_depends_on_its_imports_not_on_events():
    names = _names(stage_sources("data/cohort.py"))
    assert "data/cohort.py" in names and "data/split.py" in names and "data/duck.py" in names
    assert "data/events.py" not in names
    assert "config.py" not in names  # config values reach rules as params


def test_events_includes_filters_and_serialization():
    names = _names(stage_sources("data/events.py"))
    assert {"data/events.py", "data/event_filters.py", "data/serialize.py", "data/tables.py"} <= names
    assert "data/cohort.py" not in names


def test_folder_entry_takes_every_module():
    names = _names(stage_sources("data"))
    assert {"data/cohort.py", "data/events.py", "data/ingest.py"} <= names


def test_an_import_from_the_package_root_is_followed_without_error():
    """`from ehrxdiff_core import set_offline_flags` names the package itself (its __init__, ignored)."""
    files = stage_sources("text/encoders.py")
    assert any(f.endswith("text/encoders.py") for f in files)
    assert not any(f.endswith("ehrxdiff_core/__init__.py") for f in files)
