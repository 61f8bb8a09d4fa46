"""The config model: defaults validate, and every kind of bad config names its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ehrxdiff_core.config import ConfigError, PipelineConfig, load_config, section

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["config.yaml", "tests/configs/tiny.yaml", "configs/paper.yaml", "configs/science.yaml"])
def test_shipped_configs_validate(name):
    raw = yaml.safe_load((REPO / name).read_text())
    if name == "configs/paper.yaml":  # points at MIMIC folders that do not exist here
        cfg = load_config(raw, check_paths=False)
        assert cfg.data.source == "mimic"
    else:
        cfg = load_config(raw)
        assert cfg.data.source == "synthetic"


def test_science_config_is_the_fair_world_with_every_control():
    cfg = load_config(yaml.safe_load((REPO / "configs/science.yaml").read_text()))
    s = cfg.synthetic
    assert s.label_noise == s.uncertain_band == s.blank_negative_rate == 0.0 and s.randomized_treatment > 0
    assert cfg.controls.image_only and cfg.sample.n_seeds >= 2 and cfg.evaluate.bootstrap >= 2000
    assert s.patients >= 1000


def test_paper_preset_keeps_the_paper_conditioning():
    cfg = load_config(yaml.safe_load((REPO / "configs/paper.yaml").read_text()), check_paths=False)
    assert cfg.ldm.cond_dropout == 0.0 and cfg.sample.guidance_scale == 1.0 and not cfg.text.numeric_features


def test_defaults_are_the_demo():
    cfg = load_config({})
    assert cfg.events.max_events == 1024
    assert cfg.cohort.views == ["AP", "PA"] and cfg.cohort.max_gap_hours == 48 and cfg.cohort.min_age == 18
    assert cfg.cohort.pairing == "all"
    assert cfg.text.encoder.name == "minilm"


def test_unknown_key_names_dotted_path():
    with pytest.raises(ConfigError, match=r"cohort\.max_gap_hourz: unknown config key"):
        load_config({"cohort": {"max_gap_hourz": 12}})


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match=r"colour: unknown config key"):
        load_config({"colour": "blue"})


def test_wrong_type_names_dotted_path():
    with pytest.raises(ConfigError, match=r"images\.size: .*integer"):
        load_config({"images": {"size": "big"}})


def test_missing_input_path_names_key(tmp_path):
    with pytest.raises(ConfigError, match=r"vae\.pretrained: pretrained autoencoder not found: /nonexistent/vae"):
        load_config({"vae": {"pretrained": "/nonexistent/vae"}})


def test_mimic_source_requires_roots():
    with pytest.raises(ConfigError, match=r"data\.mimic\.mimiciv_root must be set"):
        load_config({"data": {"source": "mimic"}})


def test_split_fractions_checked():
    with pytest.raises(ConfigError, match=r"cohort\.split.*sum to 1"):
        load_config({"cohort": {"split": {"fractions": {"train": 0.5, "valid": 0.1, "test": 0.1}}}})


def test_section_is_plain_json():
    cfg = PipelineConfig()
    assert section(cfg, "cohort")["max_gap_hours"] == 48.0
    assert isinstance(section(cfg, "data.duckdb")["threads"], int)


def test_partial_nested_section_keeps_its_own_defaults():
    cfg = load_config({"ldm": {"train": {"steps": 6}}, "clip": {"train": {"batch_size": 4}}})
    assert cfg.ldm.train.steps == 6
    assert cfg.ldm.train.ema_decay == PipelineConfig().ldm.train.ema_decay is not None
    assert cfg.ldm.train.lr == PipelineConfig().ldm.train.lr
    assert cfg.clip.train.warmup_steps == PipelineConfig().clip.train.warmup_steps
    assert cfg.clip.train.batch_size == 4


def test_unknown_key_inside_a_merged_section_is_still_an_error():
    with pytest.raises(ConfigError, match=r"ldm\.train\.stepz: unknown config key"):
        load_config({"ldm": {"train": {"stepz": 6}}})


def test_compute_section_is_validated():
    assert load_config({"compute": {"device": "cpu"}}).compute.device == "cpu"
    with pytest.raises(ConfigError, match=r"compute\.devise: unknown config key"):
        load_config({"compute": {"devise": "cuda"}})
