"""The config model: defaults validate, and every kind of bad config names its dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ehrxdiff_core.config import ConfigError, PipelineConfig, load_config, section

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "name", ["config.yaml", "tests/configs/tiny.yaml", "configs/paper.yaml", "configs/science.yaml"]
)
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


# Settings that each pass a field check but would fail (or silently mislead) in a later job: rejected here.
@pytest.mark.parametrize(
    "override, key",
    [
        ({"images": {"size": 9}}, r"images\.size: 9 is not a multiple of the autoencoder's downsampling factor 4"),
        ({"images": {"size": 72}}, r"images\.size: the latent side 18 .* U-Net's downsampling factor 4"),
        ({"sample": {"max_pairs": 0}}, r"sample\.max_pairs"),
        ({"sample": {"max_pairs": -2}}, r"sample\.max_pairs"),
        ({"compute": {"device": "tpu"}}, r"compute\.device: device must be"),
        ({"text": {"encoder": {"device": "gpu0"}}}, r"text\.encoder\.device"),
        ({"events": {"tables": []}}, r"events\.tables"),
        ({"events": {"tables": ["labevents", "labevents"]}}, r"events: tables lists a table twice"),
        ({"ldm": {"train": {"ema_decay": 2.0}}}, r"ldm\.train\.ema_decay"),
        ({"clip": {"patch_size": 0}}, r"clip\.patch_size"),
        ({"clip": {"patch_size": 7}}, r"clip\.patch_size: 7 does not divide the ViT input side 64"),
        ({"clip": {"vision_heads": 3}}, r"clip\.vision_heads: 3 does not divide clip\.vision_width 64"),
        ({"vae": {"latent_channels": 0}}, r"vae\.latent_channels"),
        ({"vae": {"block_out_channels": []}}, r"vae\.block_out_channels"),
        ({"ldm": {"attention_levels": [False, True]}}, r"ldm: attention_levels has 2 entries"),
        (
            {"ldm": {"block_out_channels": [24, 32, 32]}},
            r"ldm\.block_out_channels: every width must be a multiple of 24",
        ),
        ({"ldm": {"num_heads": 5}}, r"ldm\.num_heads: 5 does not divide"),
        ({"sample": {"steps": 2000}}, r"sample\.steps: 2000 exceeds ldm\.num_train_timesteps"),
        ({"cohort": {"split": {"fractions": {"train": 1.2, "valid": -0.2, "test": 0.0}}}}, r"cannot be negative"),
        (
            {"cohort": {"split": {"fractions": {"train": 1.0, "valid": 0.0, "test": 0.0}}}},
            r"cohort\.split\.fractions\.valid: must be > 0 .*\n.*cohort\.split\.fractions\.test: must be > 0",
        ),
        ({"cohort": {"min_age": -1}}, r"cohort\.min_age"),
    ],
)
def test_settings_that_would_fail_later_are_rejected_up_front(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(override)


def test_a_zero_test_fraction_is_fine_when_another_split_is_sampled():
    cfg = load_config(
        {"cohort": {"split": {"fractions": {"train": 0.8, "valid": 0.2, "test": 0.0}}}, "sample": {"split": "valid"}}
    )
    assert cfg.cohort.split.fractions["test"] == 0.0


def test_min_age_null_turns_the_age_filter_off():
    assert load_config({"cohort": {"min_age": None}}).cohort.min_age is None


def test_cross_section_errors_do_not_echo_the_whole_config():
    with pytest.raises(ConfigError) as err:
        load_config({"images": {"size": 9}})
    assert "got {" not in str(err.value) and len(str(err.value)) < 600


def test_user_config_files_merge_over_model_defaults_not_the_demo(tmp_path, monkeypatch):
    from ehrxdiff_core.config import read_config_files

    monkeypatch.chdir(REPO)  # the demo config.yaml is right here
    demo = load_config(read_config_files([]))
    assert demo.text.encoder.max_length == 128 and demo.text.rag.top_k == 1  # what config.yaml sets
    user = tmp_path / "user.yaml"
    user.write_text("cohort: {max_gap_hours: 24}\n")
    second = tmp_path / "second.yaml"
    second.write_text("cohort: {pairing: consecutive}\n")
    cfg = load_config(read_config_files([user, second]))
    assert cfg.text.encoder.max_length == 256 and cfg.text.rag.top_k == 2  # the model's defaults
    assert cfg.cohort.max_gap_hours == 24 and cfg.cohort.pairing == "consecutive"
    paper = load_config(read_config_files([REPO / "configs/paper.yaml"]), check_paths=False)
    assert paper.text.encoder.max_length == PipelineConfig().text.encoder.max_length


def test_check_config_validates_the_merged_config(tmp_path, capsys):
    from ehrxdiff_core.cli import main

    base = tmp_path / "base.yaml"
    base.write_text("images: {size: 64}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("images: {size: 9}\n")
    assert main(["check-config", str(base)]) == 0
    assert main(["check-config", str(base), str(bad)]) == 1
    assert "images.size: 9" in capsys.readouterr().err
    assert main(["check-config", "--show", str(base)]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["text"]["encoder"]["max_length"] == 256 and shown["images"]["size"] == 64


def test_resolved_config_file_round_trips(tmp_path):
    from ehrxdiff_core.config import write_resolved_config

    cfg = load_config({"cohort": {"min_age": None}, "sample": {"n_seeds": 3}})
    out = tmp_path / "config.resolved.yaml"
    write_resolved_config(cfg.model_dump(mode="json"), out)
    again = load_config(yaml.safe_load(out.read_text()))
    assert again == cfg and again.cohort.min_age is None
