"""The paper preset (configs/paper.yaml): its U-Net and fusion adapter on the meta device, its
autoencoder rules (import required, latent scale) and the stages it runs."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.config import ClipConfig, ConfigError, TrainLoop, VaeConfig, _deep_merge, load_config
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.datasets import load_pairs, to_unit_range
from ehrxdiff_core.models.ldm import build_unet
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.models.train_vae import train_vae
from ehrxdiff_core.models.vae import CHEFF_SCALE, cheff_vae_config, estimate_scale, load_vae
from toy_world import write_world

torch.set_num_threads(1)
PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


def paper_raw(**sections) -> dict:
    """configs/paper.yaml as a mapping, with `sections` deep-merged over it."""
    return _deep_merge(yaml.safe_load(PAPER.read_text()), sections)


@pytest.fixture(scope="module")
def cfg():
    return load_config(paper_raw(), check_paths=False)  # the MIMIC folders and Cheff's file do not exist here


def _build(cfg, ldm_cfg):
    with torch.device("meta"):
        clip = ClipModel(cfg.clip, 1536, 256)
        adapter = FusionAdapter(ldm_cfg.adapter, clip, (3, 64, 64), ldm_cfg.cross_attention_dim, 1024)
        unet = build_unet(ldm_cfg, 3, 64)
    return clip, adapter, unet


def _inputs(b=2, n_real=700):
    ev = torch.zeros(b, 1024, 1536, device="meta")
    mask = torch.arange(1024).expand(b, -1) < n_real
    return (
        torch.zeros(b, 1, 256, 256, device="meta"),
        torch.zeros(b, 3, 64, 64, device="meta"),
        ev,
        mask.to("meta"),
        torch.zeros(b, dtype=torch.bool, device="meta"),
    )


def test_paper_geometry(cfg):
    clip, adapter, unet = _build(cfg, cfg.ldm)
    vc = clip.vision.config
    assert (vc.image_size // vc.patch_size) ** 2 + 1 == 65  # ViT-B/32 at 256 px
    assert adapter.n_tokens == 1024 + 65 + 3 and adapter.out_tokens == 1024
    assert adapter.fuse.weight.shape == (1024, 1092)
    assert adapter.vae_proj.weight.shape == (768, 64 * 64)
    assert list(unet.config.block_out_channels) == [224, 448, 896, 896]
    assert tuple(unet.config.down_block_types) == (
        "DownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
    )
    assert unet.config.cross_attention_dim == 768 and unet.config.in_channels == 3 and unet.config.out_channels == 3
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert attn.heads == 8 and attn.to_k.in_features == 768
    assert clip.tab.encoder.layers[0].self_attn.num_heads == 24 and len(clip.tab.encoder.layers) == 2


def test_paper_forward_shapes_on_meta(cfg):
    _, adapter, unet = _build(cfg, cfg.ldm)
    with torch.no_grad():
        ctx, attn = adapter(*_inputs())
        assert ctx.shape == (2, 1024, 768) and attn is None
        out = unet(
            torch.zeros(2, 3, 64, 64, device="meta"),
            torch.zeros(2, dtype=torch.long, device="meta"),
            encoder_hidden_states=ctx,
        ).sample
    assert out.shape == (2, 3, 64, 64)


def test_masked_and_hybrid_variants_on_meta(cfg):
    ldm = cfg.ldm.model_copy(deep=True)
    ldm.adapter.mode = "masked"
    ldm.conditioning = "hybrid"
    _, adapter, unet = _build(cfg, ldm)
    assert unet.config.in_channels == 6
    with torch.no_grad():
        ctx, attn = adapter(*_inputs())
        assert ctx.shape == (2, 1092, 768) and attn.shape == (2, 1092)
        out = unet(
            torch.zeros(2, 6, 64, 64, device="meta"),
            torch.zeros(2, dtype=torch.long, device="meta"),
            encoder_hidden_states=ctx,
            encoder_attention_mask=attn,
        ).sample
    assert out.shape == (2, 3, 64, 64)


def test_image_only_ablation_drops_ehr(cfg):
    ldm = cfg.ldm.model_copy(deep=True)
    ldm.adapter.use_ehr = False
    _, adapter, _ = _build(cfg, ldm)
    assert adapter.n_tokens == 65 + 3 and not hasattr(adapter, "tab")


# ------------------------------------------------------------------------------------- autoencoder


def test_paper_preset_imports_the_autoencoder_and_leaves_its_scale_to_the_import(cfg):
    assert cfg.vae.require_pretrained and cfg.vae.pretrained.endswith("cheff_autoencoder.pt")
    assert cfg.vae.scaling_factor is None  # a Cheff checkpoint file gets CHEFF_SCALE on import


def test_paper_preset_without_an_autoencoder_is_refused_naming_vae_pretrained():
    with pytest.raises(ConfigError, match=r"(?m)^  vae\.pretrained: must be set.*vae\.require_pretrained: false"):
        load_config(paper_raw(vae={"pretrained": None}), check_paths=False)
    cfg = load_config(paper_raw(vae={"pretrained": None, "require_pretrained": False}), check_paths=False)
    assert cfg.vae.pretrained is None and cfg.vae.scaling_factor is None  # trained here, scale estimated


def test_a_fixed_scale_for_a_self_trained_autoencoder_is_refused():
    raw = paper_raw(vae={"pretrained": None, "require_pretrained": False, "scaling_factor": 0.18215})
    with pytest.raises(ConfigError, match=r"vae\.scaling_factor: 0\.18215 is set but vae\.pretrained is not"):
        load_config(raw, check_paths=False)
    cfg = load_config(paper_raw(vae={"scaling_factor": 0.2}), check_paths=False)  # an import may set it
    assert cfg.vae.scaling_factor == 0.2


TINY_VAE = VaeConfig(block_out_channels=[8, 8], train=TrainLoop(steps=2, batch_size=4, checkpoint_every=2, log_every=1))


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), n_pairs=16, size=16, dim=8, max_len=4)


def test_trained_autoencoder_gets_its_scale_estimated_from_data(tiny_world, tmp_path):
    info = train_vae(tiny_world["images"], tiny_world["triplets"], TINY_VAE, tmp_path / "vae", device="cpu")
    vae = load_vae(tmp_path / "vae")
    store = open_image_store(tiny_world["images"])
    pairs = load_pairs(tiny_world["triplets"], "train", store)
    ids = sorted(set(pairs["prev_dicom_id"]) | set(pairs["trg_dicom_id"]))
    expected = estimate_scale(vae, to_unit_range(store.load(ids)))  # 1 / std of the published model's latents
    assert vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    assert info["scaling_factor"] == pytest.approx(expected, rel=1e-4)
    assert abs(info["scaling_factor"] - CHEFF_SCALE) > 0.05


def test_stage_refuses_a_fixed_scale_without_an_import(tiny_world, tmp_path):
    cfg = TINY_VAE.model_copy(update={"scaling_factor": CHEFF_SCALE})  # model_copy skips validation
    with pytest.raises(ValueError, match=r"vae\.scaling_factor: 0\.18215 is set but vae\.pretrained is not"):
        train_vae(tiny_world["images"], tiny_world["triplets"], cfg, tmp_path / "vae", device="cpu")
    assert not (tmp_path / "vae").exists() and not (tmp_path / "vae.work").exists()


@pytest.mark.parametrize("broken", ["copy", "link"])
def test_publishing_links_the_checkpoint_instead_of_copying_it(tiny_world, tmp_path, monkeypatch, broken):
    """The paper LDM's checkpoint.pt is ~8 GB: published by a hard link, by a copy only across filesystems."""
    from ehrxdiff_core.models import runs

    def fail(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(runs.shutil, "copy2", fail) if broken == "copy" else monkeypatch.setattr(runs.os, "link", fail)
    train_vae(tiny_world["images"], tiny_world["triplets"], TINY_VAE, tmp_path / "vae", device="cpu")
    assert (tmp_path / "vae" / "checkpoint.pt").stat().st_size > 0 and (tmp_path / "vae" / "metrics.csv").exists()
    assert not (tmp_path / "vae.work").exists()


@pytest.mark.parametrize("configured, expected", [(None, 0.3), (0.5, 0.5)])
def test_imported_folder_keeps_its_scale_unless_configured(tiny_world, tmp_path, configured, expected):
    from diffusers import AutoencoderKL

    folder = tmp_path / "cheff_diffusers"
    AutoencoderKL(
        **{**cheff_vae_config(16, ch=32, ch_mult=(1, 1), num_res_blocks=1), "scaling_factor": 0.3}
    ).save_pretrained(folder)
    info = train_vae(
        tiny_world["images"],
        tiny_world["triplets"],
        VaeConfig(pretrained=str(folder), scaling_factor=configured),
        tmp_path / "vae",
    )
    assert info["scaling_factor"] == pytest.approx(expected)
    assert load_vae(tmp_path / "vae").config.scaling_factor == pytest.approx(expected)


# ------------------------------------------------------------------------------------ CLIP's ViT


TINY_CLIP = ClipConfig(
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    tab_width=16,
    tab_heads=2,
    tab_ff=32,
    embed_dim=16,
    train=TrainLoop(steps=2, batch_size=4, checkpoint_every=2, log_every=1),
)


def test_random_vit_is_logged_and_recorded_in_the_saved_config(tiny_world, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ehrxdiff_core.models.clip")
    info = train_clip(
        tiny_world["images"],
        tiny_world["embeddings"],
        tiny_world["triplets"],
        TINY_CLIP,
        4,
        tmp_path / "clip",
        device="cpu",
    )
    assert info["vision_init"] == "random"
    spec = json.loads((tmp_path / "clip" / "clip_config.json").read_text())
    assert spec["vision_init"] == "random"
    assert ClipModel.load(tmp_path / "clip").vision_init == "random"  # kept through save and load
    msgs = [r for r in caplog.records if "random weights" in r.getMessage()]
    assert msgs and all(r.levelno == logging.INFO for r in msgs)  # a tiny ViT has no pretrained weights to miss


def test_random_vit_of_the_paper_geometry_is_a_warning(cfg, caplog):
    with torch.device("meta"):
        ClipModel(cfg.clip.model_copy(update={"pretrained_vision": None}), 1536, 256)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("clip.pretrained_vision is unset" in m and "RANDOM weights" in m for m in warnings), warnings


def test_pretrained_vit_records_its_folder(tmp_path, caplog):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    ).save_pretrained(tmp_path / "openai")
    model = ClipModel(TINY_CLIP.model_copy(update={"pretrained_vision": str(tmp_path / "openai")}), 8, 16)
    assert model.spec()["vision_init"] == str(tmp_path / "openai")
    assert not [r for r in caplog.records if "random weights" in r.getMessage()]


# ------------------------------------------------------------------------------ the preset, trained


@pytest.mark.slow
def test_paper_preset_trains_through_the_stages_on_cpu(tmp_path, caplog):
    """configs/paper.yaml's geometry through the real stages, 2 LDM steps at batch 1: 256 px, an imported
    autoencoder of Cheff's geometry (random weights), ViT-B/32 from random weights, the paper U-Net and adapter.
    Only the data, the step counts, the batch sizes and the EMA (memory) are changed."""
    from diffusers import AutoencoderKL

    from ehrxdiff_core.models.train_ldm import train_ldm

    caplog.set_level(logging.INFO)
    w = write_world(tmp_path / "world", n_pairs=8, size=256, dim=48, max_len=6)  # 48: the 24 event heads divide it
    cheff = tmp_path / "cheff"
    AutoencoderKL(**cheff_vae_config(256)).save_pretrained(cheff)
    small = {"num_workers": 0, "gpus": 1, "log_every": 1}
    cfg = load_config(
        paper_raw(
            vae={"pretrained": str(cheff)},
            clip={"train": {**small, "steps": 1, "batch_size": 2, "checkpoint_every": 1}},
            ldm={
                "train": {
                    **small,
                    "steps": 2,
                    "batch_size": 1,
                    "grad_accum": 1,
                    "ema_decay": None,
                    "checkpoint_every": 2,
                }
            },
        ),
        check_paths=False,
    )
    assert cfg.images.size == 256 and cfg.events.max_events == 1024 and cfg.ldm.train.gradient_checkpointing
    models = tmp_path / "models"

    vae_info = train_vae(w["images"], w["triplets"], cfg.vae, models / "vae", device="cpu")
    assert vae_info["scaling_factor"] == pytest.approx(CHEFF_SCALE)

    clip_info = train_clip(
        w["images"], w["embeddings"], w["triplets"], cfg.clip, cfg.events.max_events, models / "clip", device="cpu"
    )
    assert clip_info["steps"] == 1 and clip_info["vision_init"] == "random"
    assert any(
        r.levelno == logging.WARNING and "clip.pretrained_vision is unset" in r.getMessage() for r in caplog.records
    )

    info = train_ldm(
        w["images"],
        w["embeddings"],
        w["triplets"],
        models / "vae",
        models / "clip",
        cfg.ldm,
        cfg.events.max_events,
        models / "ldm",
        device="cpu",
    )
    assert info["steps"] == 2 and info["n_null"] > 0 and info["images_cached"]
    assert 500e6 < info["unet_params"] < 510e6  # 224/448/896/896 channels, attention at 32², 16², 8²
    losses = pd.read_csv(models / "ldm" / "metrics.csv")["loss"]
    assert len(losses) == 2 and losses.notna().all() and (losses > 0).all()
    spec = json.loads((models / "ldm" / "ldm_config.json").read_text())
    assert spec["latent_shape"] == [3, 64, 64] and spec["scaling_factor"] == pytest.approx(CHEFF_SCALE)
    assert spec["ldm"]["adapter"]["mode"] == "paper" and spec["ldm"]["conditioning"] == "crossattn"
    assert spec["ldm"]["target"] == "image" and spec["residual_scale"] == 1.0  # the target latent, as the paper
    assert spec["clip_spec"]["vision_init"] == "random"
    assert not (models / "ldm.work").exists()
