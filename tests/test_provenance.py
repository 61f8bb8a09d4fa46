"""Stage code dependencies follow the imports, so a code edit reruns exactly its stage and downstream."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ehrxdiff_core.provenance import ROOT, script_sources

REPO = ROOT.parent
SCRIPTS = REPO / "workflow_scripts"


def _names(script: str) -> set[str]:
    return {str(Path(f).relative_to(ROOT)) for f in script_sources(SCRIPTS / f"{script}.py")}


def _rules() -> dict[str, str]:
    """Rule name -> the rule's text, for every rule (and `use rule ... as`) of rules/*.smk."""
    out = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        parts = re.split(r"(?m)^(?:rule (\w+):|use rule \w+ as (\w+) with:)$", smk.read_text())
        for i in range(1, len(parts), 3):
            out[parts[i] or parts[i + 1]] = parts[i + 2]
    return out


def test_every_rule_takes_its_code_inputs_from_its_own_script():
    """No hand-written module list: a rule running `workflow_scripts/X.py` lists `code("X")`, a rule
    that inherits its script (`use rule sample as ...`) lists its parent's."""
    rules = _rules()
    assert len(rules) > 15
    scripts = {}
    for name, text in rules.items():
        m = re.search(r'"\.\./workflow_scripts/(\w+)\.py"', text)
        if m:
            scripts[name] = m.group(1)
    every = "".join(smk.read_text() for smk in (REPO / "rules").glob("*.smk"))
    parent = {m.group(2): m.group(1) for m in re.finditer(r"use rule (\w+) as (\w+) with:", every)}
    for name, base in parent.items():
        scripts[name] = scripts[base]
    for name, text in rules.items():
        codes = re.findall(r"^\s+code=(.*),$", text, flags=re.M)
        if name not in scripts:
            assert not codes, name
            continue
        if name == "resolved_config":  # config only: no library code behind its output
            assert not codes
            continue
        if name in parent and "input:" not in text:  # inherits its parent's inputs, code= included
            continue
        assert codes, f"rule {name} has no code= input"
        assert re.fullmatch(r'code\("' + scripts[name] + r'"\)( \+ \[GLOSSARY\])?', codes[0]), (name, codes[0])


def test_each_script_imports_its_stage_from_one_module():
    for script in sorted(SCRIPTS.glob("*.py")):
        if script.stem == "resolved_config":
            continue
        stage_modules = {
            m
            for m in re.findall(r"^from (ehrxdiff_core[\w.]*) import", script.read_text(), flags=re.M)
            if m
            not in (
                "ehrxdiff_core.config",
                "ehrxdiff_core.runlog",
                "ehrxdiff_core.models.launch",
                "ehrxdiff_core.atomic",
            )
        }
        assert len(stage_modules) == 1, (script.name, stage_modules)


def test_a_training_stage_does_not_depend_on_the_other_models():
    vae = _names("train_vae")
    assert {"models/train_vae.py", "models/vae.py", "models/training.py", "models/launch.py"} <= vae
    assert (
        not {"models/clip.py", "models/ldm.py", "models/adapter.py", "models/train_clip.py", "models/sample.py"} & vae
    )
    sample = _names("sample")
    assert {"models/sample.py", "models/ldm.py", "models/sampling.py"} <= sample
    assert not {"models/training.py", "models/train_ldm.py", "models/runs.py"} & sample


def test_cohort_depends_on_its_imports_not_on_events():
    names = _names("cohort")
    assert {"data/cohort.py", "data/split.py", "data/duck.py"} <= names
    assert "data/events.py" not in names and "data/images.py" not in names
    assert "config.py" not in names  # config values reach rules as params


def test_events_includes_filters_and_serialization():
    names = _names("events")
    assert {"data/events.py", "data/event_filters.py", "data/serialize.py", "data/tables.py"} <= names
    assert "data/cohort.py" not in names


def test_evaluation_stages_are_separate():
    assert "evaluation/evaluate.py" not in _names("train_evaluator")
    assert "evaluation/train_evaluator.py" not in _names("evaluate")
    assert not {"evaluation/evaluate.py", "evaluation/train_evaluator.py"} & _names("report")


def test_an_import_from_the_package_root_is_followed_without_error():
    """`from ehrxdiff_core import set_offline_flags` names the package itself (its __init__, ignored)."""
    files = script_sources(SCRIPTS / "rag_index.py")
    assert any(f.endswith("text/encoders.py") for f in files)
    assert not any(f.endswith("ehrxdiff_core/__init__.py") for f in files)


def test_a_script_without_library_imports_is_refused(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("import json\nfrom ehrxdiff_core.config import TextConfig\n")
    with pytest.raises(ValueError, match="imports no ehrxdiff_core module"):
        script_sources(script)


def test_what_config_imports_is_not_followed():
    """The config imports the event-table registry only to check `events.tables`: editing the registry reruns
    the stages that use it (ingest, events, knowledge, embed), not every stage that reads a config section."""
    assert "data/tables.py" not in _names("cohort") and "data/tables.py" not in _names("train_vae")
    assert {"data/tables.py", "data/event_filters.py"} <= _names("events") & _names("knowledge") & _names("ingest")
