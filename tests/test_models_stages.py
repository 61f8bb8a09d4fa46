"""Entry points on a tiny contract-conformant world: artifacts, sampling (determinism, both
samplers, EMA, several seeds per pair), missing inputs named by config key, Cheff/LDM autoencoder import."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ehrxdiff_core.artifacts.samples import MANIFEST
from ehrxdiff_core.config import ClipConfig, LdmConfig, SampleConfig, TrainLoop, VaeConfig
from ehrxdiff_core.models.sample import sample
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.models.train_ldm import train_ldm
from ehrxdiff_core.models.train_vae import train_vae
from toy_world import write_world

torch.set_num_threads(1)
ME = 6  # max_events
LOOP = dict(batch_size=8, checkpoint_every=3, log_every=2)
VAE = VaeConfig(block_out_channels=[8, 8], layers_per_block=1, train=TrainLoop(steps=4, lr=1e-3, **LOOP))
CLIP = ClipConfig(
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    tab_width=16,
    tab_heads=2,
    tab_ff=32,
    embed_dim=16,
    train=TrainLoop(steps=4, **LOOP),
)
LDM = LdmConfig(
    block_out_channels=[16, 16],
    attention_levels=[False, True],
    num_heads=2,
    cross_attention_dim=16,
    null_augmentation=True,
    cond_dropout=0.2,
    train=TrainLoop(steps=4, ema_decay=0.9, **LOOP),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = write_world(root, n_pairs=32, size=16, dim=8, max_len=ME, drop_image=True)
    w["vae_info"] = train_vae(w["images"], w["triplets"], VAE, root / "models" / "vae")
    w["clip_info"] = train_clip(w["images"], w["embeddings"], w["triplets"], CLIP, ME, root / "models" / "clip")
    w["ldm_info"] = train_ldm(
        w["images"],
        w["embeddings"],
        w["triplets"],
        root / "models" / "vae",
        root / "models" / "clip",
        LDM,
        ME,
        root / "models" / "ldm",
    )
    w["root"] = root
    return w


def _sample(world, out, ldm="ldm", **kw):
    cfg = SampleConfig(**{"steps": 4, "batch_size": 3, "n_seeds": 1, **kw})
    info = sample(
        world["images"],
        world["embeddings"],
        world["triplets"],
        world["root"] / "models" / "vae",
        world["root"] / "models" / ldm,
        cfg,
        ME,
        world["root"] / out,
    )
    return info, world["root"] / out


def _pixels(folder):
    return {p.stem: np.asarray(Image.open(p)) for p in sorted(Path(folder).glob("*.png"))}


def test_model_folders(world):
    models = world["root"] / "models"
    for name, files in {
        "vae": ["config.json", "diffusion_pytorch_model.safetensors"],
        "clip": ["clip_config.json", "model.safetensors"],
        "ldm": [
            "ldm_config.json",
            "unet/config.json",
            "unet_ema/config.json",
            "adapter/model.safetensors",
            "adapter_ema/model.safetensors",
        ],
    }.items():
        for f in files + ["checkpoint.pt", "metrics.csv", "loss.png"]:
            assert (models / name / f).exists(), f"{name}/{f}"
        assert not (models / f"{name}.work").exists()
        assert len(pd.read_csv(models / name / "metrics.csv")) == 4
    scale = json.loads((models / "vae" / "config.json").read_text())["scaling_factor"]
    assert scale == pytest.approx(world["vae_info"]["scaling_factor"]) and scale != 1.0
    assert world["ldm_info"]["n_null"] > 0  # w_null samples were added
    assert world["vae_info"]["latent_shape"] == [3, 8, 8]


def test_samplers_write_contract_pngs_and_manifest(world):
    for sampler in ("ddim", "dpmsolver++"):
        info, out = _sample(world, f"s_{sampler}", sampler=sampler)
        man = pd.read_parquet(out / "manifest.parquet")
        MANIFEST.check_file(out / "manifest.parquet")
        assert set(man["seed_index"]) == {0} and list(man["path"]) == [f"{p}.png" for p in man["pair_id"]]
        test_pairs = pd.read_parquet(world["triplets"]).query("split == 'test'")
        assert len(man) == len(test_pairs) - 1  # the pair with a missing image is dropped
        assert set(man["sampler"]) == {sampler}
        assert set(man["compose"]) == {"latent"} and set(man["change_blur_px"]) == {0.0}
        for pid in man["pair_id"]:
            img = Image.open(out / f"{pid}.png")
            assert img.mode == "L" and img.size == (16, 16)
        assert not list(out.parent.glob(f".{out.name}*"))  # no temp folder left


def test_sampling_is_deterministic_and_batch_independent(world):
    _, a = _sample(world, "det_a", sampler="ddim", eta=1.0)
    _, b = _sample(world, "det_b", sampler="ddim", eta=1.0)
    _, c = _sample(world, "det_c", sampler="ddim", eta=1.0, batch_size=1)
    _, d = _sample(world, "det_d", sampler="ddim", eta=1.0, seed=7)
    pa, pb, pc, pd_ = _pixels(a), _pixels(b), _pixels(c), _pixels(d)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert all(
        np.abs(pa[k].astype(int) - pc[k].astype(int)).max() <= 1 for k in pa
    )  # batch composition: float noise only
    assert any(not np.array_equal(pa[k], pd_[k]) for k in pa)


def test_several_seeds_per_pair(world):
    """Seed index 0 is the one-seed image, bit for bit; index k ≥ 1 lies in seed{k}/ with seed
    `pair_seed(seed + k, pair)`."""
    from ehrxdiff_core.models.datasets import pair_seed

    _, one = _sample(world, "seeds1", sampler="ddim")
    info, two = _sample(world, "seeds2", sampler="ddim", n_seeds=2)
    man = pd.read_parquet(two / "manifest.parquet")
    pairs = sorted(pd.read_parquet(one / "manifest.parquet")["pair_id"])
    assert info["n"] == 2 * len(pairs) and info["n_seeds"] == 2 and len(man) == 2 * len(pairs)
    MANIFEST.check_file(two / "manifest.parquet")
    assert not man.duplicated(["pair_id", "seed_index"]).any() and set(man["seed_index"]) == {0, 1}
    for row in man.itertuples():
        assert row.seed == pair_seed(42 + row.seed_index, row.pair_id)
        assert row.path == (f"{row.pair_id}.png" if row.seed_index == 0 else f"seed1/{row.pair_id}.png")
        assert (two / row.path).exists()
    assert sorted(p.name for p in two.iterdir()) == sorted([f"{p}.png" for p in pairs] + ["manifest.parquet", "seed1"])
    p1, p2, p2b = _pixels(one), _pixels(two), _pixels(two / "seed1")
    assert sorted(p2) == sorted(p2b) == pairs
    assert all(np.array_equal(p1[k], p2[k]) for k in pairs)  # index 0 = today's image
    assert any(not np.array_equal(p2[k], p2b[k]) for k in pairs)  # another seed, another image


def test_composed_sampling_records_its_setting_and_changes_the_images(world):
    _, a = _sample(world, "latent", sampler="ddim")
    info, b = _sample(world, "composed", sampler="ddim", compose="previous_plus_change", change_blur_px=1.0)
    man = pd.read_parquet(b / "manifest.parquet")
    MANIFEST.check_file(b / "manifest.parquet")
    assert set(man["compose"]) == {"previous_plus_change"} and set(man["change_blur_px"]) == {1.0}
    assert (info["compose"], info["change_blur_px"]) == ("previous_plus_change", 1.0)
    pa, pb = _pixels(a), _pixels(b)
    assert sorted(pa) == sorted(pb) and any(not np.array_equal(pa[k], pb[k]) for k in pa)


def test_guidance_uses_null_condition(world):
    _, a = _sample(world, "g1", sampler="dpmsolver++")
    info, b = _sample(world, "g3", sampler="dpmsolver++", guidance_scale=3.0)
    assert set(pd.read_parquet(b / "manifest.parquet")["guidance"]) == {3.0}
    pa, pb = _pixels(a), _pixels(b)
    assert any(not np.array_equal(pa[k], pb[k]) for k in pa)


def test_ema_weights_are_the_ones_used(world):
    from diffusers import UNet2DConditionModel

    from ehrxdiff_core.models.ldm import load_ldm
    from ehrxdiff_core.models.vae import load_vae

    src = world["root"] / "models" / "ldm"
    dst = world["root"] / "models" / "ldm_edit"
    shutil.copytree(src, dst)
    ema = UNet2DConditionModel.from_pretrained(dst / "unet_ema")
    with torch.no_grad():
        ema.conv_out.bias.add_(0.5)
    ema.save_pretrained(dst / "unet_ema")
    vae = load_vae(world["root"] / "models" / "vae")
    loaded = load_ldm(dst, vae, use_ema=True)
    torch.testing.assert_close(loaded.unet.conv_out.bias, ema.conv_out.bias)
    live = load_ldm(dst, vae, use_ema=False)
    assert not torch.equal(live.unet.conv_out.bias, ema.conv_out.bias)

    _, base_ema = _sample(world, "ema_base", sampler="dpmsolver++")
    _, edit_ema = _sample(world, "ema_edit", ldm="ldm_edit", sampler="dpmsolver++")
    _, base_live = _sample(world, "live_base", sampler="dpmsolver++", use_ema=False)
    _, edit_live = _sample(world, "live_edit", ldm="ldm_edit", sampler="dpmsolver++", use_ema=False)
    e0, e1, l0, l1 = map(_pixels, (base_ema, edit_ema, base_live, edit_live))
    assert any(not np.array_equal(e0[k], e1[k]) for k in e0)  # EMA edit changes EMA sampling
    assert all(np.array_equal(l0[k], l1[k]) for k in l0)  # and not live-weight sampling


def test_resume_continues_from_work_dir(world, tmp_path):
    cfg = VAE.model_copy(deep=True)
    work = tmp_path / "vae.work"
    cfg.train.steps = 2
    from ehrxdiff_core.models.train_vae import train_vae

    info2 = train_vae(world["images"], world["triplets"], cfg, tmp_path / "v2", work_dir=work)
    assert info2["steps"] == 2 and not work.exists()
    shutil.copytree(tmp_path / "v2", work)  # pretend the publish had not happened
    cfg.train.steps = 4
    info4 = train_vae(world["images"], world["triplets"], cfg, tmp_path / "v4", work_dir=work)
    assert info4["steps"] == 4
    rows = pd.read_csv(tmp_path / "v4" / "metrics.csv")
    assert list(rows["step"]) == [0, 1, 2, 3]


def test_missing_inputs_name_their_config_key(world, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"vae\.pretrained"):
        train_vae(world["images"], world["triplets"], VaeConfig(pretrained=str(tmp_path / "nope")), tmp_path / "v")
    with pytest.raises(FileNotFoundError, match=r"clip\.pretrained_vision"):
        train_clip(
            world["images"],
            world["embeddings"],
            world["triplets"],
            CLIP.model_copy(update={"pretrained_vision": str(tmp_path / "nope")}),
            ME,
            tmp_path / "c",
        )
    with pytest.raises(FileNotFoundError, match="vae_dir"):
        train_ldm(
            world["images"],
            world["embeddings"],
            world["triplets"],
            tmp_path / "novae",
            world["root"] / "models" / "clip",
            LDM,
            ME,
            tmp_path / "l",
        )
    assert not (tmp_path / "v").exists() and not (tmp_path / "l").exists()


def test_pretrained_vision_reinitialises_positions(world, tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from ehrxdiff_core.models.clip import build_vision

    src = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        )
    )
    src.save_pretrained(tmp_path / "openai")
    vis = build_vision(CLIP.model_copy(update={"pretrained_vision": str(tmp_path / "openai")}), 16)
    assert vis.embeddings.position_embedding.weight.shape == (5, 16)
    torch.testing.assert_close(vis.embeddings.patch_embedding.weight, src.embeddings.patch_embedding.weight)


# --------------------------------------------------------------------------- Cheff / LDM autoencoder import


def ldm_autoencoder_state(ch=32, ch_mult=(1, 2), num_res=1, z=3, in_ch=3, seed=0):
    """A random state dict in LDM's AutoencoderKL layout (taming/ldm `Encoder`/`Decoder` names and shapes)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def conv(name, cin, cout, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        sd[f"{name}.bias"] = torch.randn(cout, generator=g) * 0.05

    def norm(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)

    def res(name, cin, cout):
        (
            norm(f"{name}.norm1", cin),
            conv(f"{name}.conv1", cin, cout, 3),
            norm(f"{name}.norm2", cout),
            conv(f"{name}.conv2", cout, cout, 3),
        )
        if cin != cout:
            conv(f"{name}.nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(f"{name}.norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    conv("encoder.conv_in", in_ch, ch, 3)
    cin = ch
    for i, m in enumerate(ch_mult):
        for j in range(num_res):
            res(f"encoder.down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(ch_mult) - 1:
            conv(f"encoder.down.{i}.downsample.conv", cin, cin, 3)
    res("encoder.mid.block_1", cin, cin), attn("encoder.mid.attn_1", cin), res("encoder.mid.block_2", cin, cin)
    norm("encoder.norm_out", cin), conv("encoder.conv_out", cin, 2 * z, 3)
    conv("quant_conv", 2 * z, 2 * z, 1), conv("post_quant_conv", z, z, 1)
    conv("decoder.conv_in", z, cin, 3)
    res("decoder.mid.block_1", cin, cin), attn("decoder.mid.attn_1", cin), res("decoder.mid.block_2", cin, cin)
    for i in reversed(range(len(ch_mult))):
        for j in range(num_res + 1):
            res(f"decoder.up.{i}.block.{j}", cin, ch * ch_mult[i])
            cin = ch * ch_mult[i]
        if i != 0:
            conv(f"decoder.up.{i}.upsample.conv", cin, cin, 3)
    norm("decoder.norm_out", cin), conv("decoder.conv_out", cin, in_ch, 3)
    return sd


def test_cheff_checkpoint_import_round_trip(world, tmp_path):
    from ehrxdiff_core.models.vae import load_vae

    sd = ldm_autoencoder_state()
    ckpt = tmp_path / "cheff_autoencoder.pt"
    torch.save(
        {"state_dict": {f"first_stage_model.{k}": v for k, v in sd.items()} | {"loss.logvar": torch.zeros(())}}, ckpt
    )
    info = train_vae(world["images"], world["triplets"], VaeConfig(pretrained=str(ckpt)), tmp_path / "vae")
    assert info["scaling_factor"] == pytest.approx(0.18215)
    vae = load_vae(tmp_path / "vae")
    assert (
        vae.config.latent_channels == 3
        and list(vae.config.block_out_channels) == [32, 64]
        and vae.config.in_channels == 3
    )
    got = vae.state_dict()
    assert len(got) == len(sd)  # every LDM tensor has exactly one diffusers home
    torch.testing.assert_close(got["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])
    torch.testing.assert_close(
        got["encoder.down_blocks.0.resnets.0.conv1.weight"], sd["encoder.down.0.block.0.conv1.weight"]
    )
    torch.testing.assert_close(
        got["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"], sd["encoder.down.1.block.0.nin_shortcut.weight"]
    )
    torch.testing.assert_close(
        got["decoder.up_blocks.0.resnets.0.conv1.weight"], sd["decoder.up.1.block.0.conv1.weight"]
    )  # order reversed
    torch.testing.assert_close(
        got["encoder.mid_block.attentions.0.to_q.weight"], sd["encoder.mid.attn_1.q.weight"][:, :, 0, 0]
    )
    torch.testing.assert_close(got["post_quant_conv.weight"], sd["post_quant_conv.weight"])
    # the 1-channel images go through the RGB autoencoder (repeat in, mean out)
    from ehrxdiff_core.models.vae import decode_gray, encode_gray

    z = encode_gray(vae, torch.zeros(1, 1, 16, 16)).mode()
    assert z.shape == (1, 3, 8, 8) and decode_gray(vae, z).shape == (1, 1, 16, 16)


def test_foreign_checkpoint_is_rejected_naming_the_key(world, tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, bad)
    with pytest.raises(ValueError, match=r"vae\.pretrained|LDM autoencoder"):
        train_vae(world["images"], world["triplets"], VaeConfig(pretrained=str(bad)), tmp_path / "v")


def test_tab_attention_dropout_is_separate_from_the_other_dropout():
    """`clip.tab_attention_dropout` sets only the attention-weight dropout of every layer (0 lets
    the fused attention kernel run); unset, it is `tab_dropout`, as torch's layer does; outputs
    of real events do not depend on padding either way."""
    from ehrxdiff_core.config import ClipConfig
    from ehrxdiff_core.models.clip import ClipModel

    base = dict(
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        tab_width=16,
        tab_heads=2,
        tab_ff=32,
        tab_layers=2,
        embed_dim=16,
        tab_dropout=0.1,
    )
    for attn, want in ((None, 0.1), (0.0, 0.0), (0.3, 0.3)):
        clip = ClipModel(ClipConfig(**base, tab_attention_dropout=attn), 8, 16)
        layers = clip.tab.encoder.layers
        assert len(layers) == 2
        assert all(layer.self_attn.dropout == want and layer.dropout1.p == 0.1 for layer in layers), attn
    clip = ClipModel(ClipConfig(**base, tab_attention_dropout=0.0), 8, 16).eval()
    ev, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    padded = torch.cat([ev, torch.randn(2, 3, 8)], 1), torch.cat([mask, torch.zeros(2, 3, dtype=torch.bool)], 1)
    with torch.no_grad():
        assert torch.allclose(clip.tab.tokens(ev, mask)[0, :3], clip.tab.tokens(*padded)[0, :3], atol=1e-5)
