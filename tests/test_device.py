"""One device setting (`compute.device`) and one resolver for every torch stage."""

import re
from pathlib import Path

import pytest
import torch

from ehrxdiff_core.config import ConfigError, load_config
from ehrxdiff_core.device import resolve_device
from ehrxdiff_core.runlog import compute_settings

LIB = Path(__file__).resolve().parents[1] / "ehrxdiff_core"
SCRIPTS = Path(__file__).resolve().parents[1] / "workflow_scripts"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_compute_settings_fill_defaults_and_validate():
    assert compute_settings({}).device == "auto"
    assert compute_settings({"compute": None}).image_cache_fraction == 0.5
    got = compute_settings({"compute": {"device": "cpu", "image_cache_fraction": 0.25}})
    assert (got.device, got.image_cache_fraction) == ("cpu", 0.25)
    with pytest.raises(ValueError, match="device must be"):
        compute_settings({"compute": {"device": "tpu"}})


def test_the_text_encoder_has_no_device_setting_of_its_own():
    with pytest.raises(ConfigError, match=r"text\.encoder\.device: unknown config key"):
        load_config({"text": {"encoder": {"device": "cpu"}}})


def test_only_the_resolver_turns_auto_into_a_device():
    """No other module decides what 'auto' means, and the workflow scripts read only `compute` from the
    run's config, through `compute_settings`, and the sampled split the cohort checks, through
    `required_splits`: neither changes an output, so neither is a param."""
    offenders = [
        str(p.relative_to(LIB))
        for p in LIB.rglob("*.py")
        if p.name != "device.py" and re.search(r"is_available\(\) else", p.read_text())
    ]
    assert offenders == []
    for script in SCRIPTS.glob("*.py"):
        text = script.read_text()
        sanctioned = text.count("compute_settings(snakemake.config)") + text.count("required_splits(snakemake.config)")
        assert text.count("snakemake.config") == sanctioned, script.name
