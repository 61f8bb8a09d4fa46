"""The paper's U-Net and fusion adapter, built from configs/paper.yaml on the meta device."""

from pathlib import Path

import pytest
import torch
import yaml

from ehrxdiff_core.config import load_config
from ehrxdiff_core.models.adapter import FusionAdapter
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.ldm import build_unet

torch.set_num_threads(1)
PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper.yaml"


@pytest.fixture(scope="module")
def cfg():
    raw = yaml.safe_load(PAPER.read_text())
    return load_config(raw, check_paths=False)  # the MIMIC folders of the preset do not exist here


def _build(cfg, ldm_cfg):
    with torch.device("meta"):
        clip = ClipModel(cfg.clip, 1536, 256)
        adapter = FusionAdapter(ldm_cfg.adapter, clip, (3, 64, 64), ldm_cfg.cross_attention_dim, 1024)
        unet = build_unet(ldm_cfg, 3, 64)
    return clip, adapter, unet


def _inputs(b=2, n_real=700):
    ev = torch.zeros(b, 1024, 1536, device="meta")
    mask = torch.arange(1024).expand(b, -1) < n_real
    return torch.zeros(b, 1, 256, 256, device="meta"), torch.zeros(b, 3, 64, 64, device="meta"), ev, mask.to("meta"), torch.zeros(b, dtype=torch.bool, device="meta")


def test_paper_geometry(cfg):
    clip, adapter, unet = _build(cfg, cfg.ldm)
    vc = clip.vision.config
    assert (vc.image_size // vc.patch_size) ** 2 + 1 == 65  # ViT-B/32 at 256 px
    assert adapter.n_tokens == 1024 + 65 + 3 and adapter.out_tokens == 1024
    assert adapter.fuse.weight.shape == (1024, 1092)
    assert adapter.vae_proj.weight.shape == (768, 64 * 64)
    assert list(unet.config.block_out_channels) == [224, 448, 896, 896]
    assert tuple(unet.config.down_block_types) == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert unet.config.cross_attention_dim == 768 and unet.config.in_channels == 3 and unet.config.out_channels == 3
    attn = unet.down_blocks[1].attentions[0].transformer_blocks[0].attn2
    assert attn.heads == 8 and attn.to_k.in_features == 768
    assert clip.tab.encoder.layers[0].self_attn.num_heads == 24 and len(clip.tab.encoder.layers) == 2


def test_paper_forward_shapes_on_meta(cfg):
    _, adapter, unet = _build(cfg, cfg.ldm)
    with torch.no_grad():
        ctx, attn = adapter(*_inputs())
        assert ctx.shape == (2, 1024, 768) and attn is None
        out = unet(torch.zeros(2, 3, 64, 64, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"), encoder_hidden_states=ctx).sample
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
        out = unet(torch.zeros(2, 6, 64, 64, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"),
                   encoder_hidden_states=ctx, encoder_attention_mask=attn).sample
    assert out.shape == (2, 3, 64, 64)


def test_image_only_ablation_drops_ehr(cfg):
    ldm = cfg.ldm.model_copy(deep=True)
    ldm.adapter.use_ehr = False
    _, adapter, _ = _build(cfg, ldm)
    assert adapter.n_tokens == 65 + 3 and not hasattr(adapter, "tab")
