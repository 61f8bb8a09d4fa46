"""The per-rule conda environments parse and pin the same versions as pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))


def _pins(reqs):
    out = {}
    for r in reqs:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)", r)
        assert m, f"not an exact pin: {r!r}"
        out[m.group(1).lower()] = m.group(2)
    return out


def _project_pins():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        pins.update(_pins(extra))
    return pins


def test_there_are_envs_for_every_rule_family():
    assert {p.stem for p in ENVS} >= {"data", "text", "models", "evaluate"}


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_env_parses_and_agrees_with_pyproject(env):
    spec = yaml.safe_load(env.read_text())
    assert spec["name"].startswith("ehrxdiff-")
    deps = spec["dependencies"]
    assert "python=3.11" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    pins = _pins(pip)
    project = _project_pins()
    for name, version in pins.items():
        assert name in project, f"{env.name}: {name} is not a dependency in pyproject.toml"
        assert project[name] == version, f"{env.name}: {name}=={version} but pyproject pins {project[name]}"


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.stem)
def test_every_env_is_used_by_a_rule(env):
    rules_text = "".join(p.read_text() for p in (REPO / "rules").glob("*.smk"))
    assert f'envs/{env.name}"' in rules_text, f"no rule uses {env.name}"
