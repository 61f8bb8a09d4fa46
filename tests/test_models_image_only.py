"""The image-only control: every event masked in training and sampling, same architecture as
ehrxdiff; and classifier-free guidance, whose unconditional branch differs only by the events."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ehrxdiff_core.config import (
    AdapterConfig,
    ClipConfig,
    LdmConfig,
    PipelineConfig,
    SampleConfig,
    TrainLoop,
    VaeConfig,
    load_config,
)
from ehrxdiff_core.models.clip import ClipModel
from ehrxdiff_core.models.ldm import load_ldm
from ehrxdiff_core.models.sample import sample
from ehrxdiff_core.models.sampling import condition_batch, sample_batch
from ehrxdiff_core.models.train_clip import train_clip
from ehrxdiff_core.models.train_ldm import build_latent_diffusion, train_ldm
from ehrxdiff_core.models.train_vae import train_vae
from ehrxdiff_core.models.vae import build_vae, estimate_scale, load_vae
from toy_world import write_world

torch.set_num_threads(1)
ME = 4  # max_events
DIM = 8  # event embedding width
TINY_CLIP = ClipConfig(
    patch_size=8,
    vision_width=16,
    vision_layers=1,
    vision_heads=2,
    tab_width=16,
    tab_heads=2,
    tab_ff=32,
    embed_dim=16,
    augment_crop_scale=None,
)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 19, 19, generator=g), 4, 1) * 2 - 1
    return x.clamp(-1, 1)


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed + 1)
    return {
        "prev": _images(n, seed),
        "trg": _images(n, seed + 7),
        "events": torch.randn(n, ME, DIM, generator=g),
        "mask": torch.arange(ME).expand(n, -1) < torch.randint(1, ME + 1, (n, 1), generator=g),
        "null": torch.zeros(n, dtype=torch.bool),
        "pair_id": [str(i) for i in range(n)],
    }


def _tiny(mask_events, mode="masked", conditioning="hybrid", seed=0):
    """A tiny LDM built as train_ldm builds it (same seed → same initial weights for both variants)."""
    torch.manual_seed(seed)
    vae = build_vae(VaeConfig(block_out_channels=[8, 8], layers_per_block=1), 16)
    with torch.no_grad():  # a narrow posterior, as a trained VAE has
        vae.quant_conv.weight[3:] = 0
        vae.quant_conv.bias[3:] = -12
    vae.register_to_config(scaling_factor=estimate_scale(vae, _images(8, 0)))
    clip = ClipModel(TINY_CLIP, DIM, 16)
    cfg = LdmConfig(
        block_out_channels=[16, 16],
        attention_levels=[False, True],
        num_heads=2,
        cross_attention_dim=16,
        adapter=AdapterConfig(mode=mode),
        conditioning=conditioning,
        cond_dropout=0.3,
    )
    return build_latent_diffusion(cfg, vae, clip, 16, ME, mask_events=mask_events)


def _variants(batch):
    """The batch as given, with random events instead, with zero-length event tables, and without events."""
    g = torch.Generator().manual_seed(99)
    n = batch["prev"].shape[0]
    rnd = {
        **batch,
        "events": torch.randn(batch["events"].shape, generator=g) * 3,
        "mask": torch.rand(batch["mask"].shape, generator=g) < 0.7,
    }
    empty = {**batch, "events": torch.zeros(n, 0, DIM), "mask": torch.zeros(n, 0, dtype=torch.bool)}
    none = {k: v for k, v in batch.items() if k not in ("events", "mask")}
    return {"random": rnd, "zero_length": empty, "none": none}


def _loss(model, batch, train=True):
    model.train(train)
    torch.manual_seed(5)  # the tab encoder's dropout draws from the global generator
    with torch.no_grad():
        loss, _ = model(batch, torch.Generator().manual_seed(3))
    return loss


@pytest.mark.parametrize("mode,conditioning", [("masked", "hybrid"), ("paper", "hybrid"), ("paper", "crossattn")])
def test_image_only_loss_ignores_every_event(mode, conditioning):
    batch = _batch()
    only = _tiny(True, mode, conditioning)
    base = _loss(only, batch)
    for name, other in _variants(batch).items():
        assert torch.equal(_loss(only, other), base), name  # bit-identical: no event reaches the model
    assert torch.equal(_loss(only, batch, train=False), _loss(only, _variants(batch)["none"], train=False))
    full = _tiny(False, mode, conditioning)
    assert not torch.equal(_loss(full, _variants(batch)["random"]), _loss(full, batch))  # the normal model reads them


@pytest.mark.parametrize("mode", ["masked", "paper"])
def test_image_only_unet_output_ignores_every_event(mode):
    batch = _batch()
    only = _tiny(True, mode)
    full = _tiny(False, mode)
    z = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((6,), 500)

    def eps(model, b):
        model.eval()
        with torch.no_grad():
            prev_mode = model.encode_prev(b["prev"])
            return model.eps(z, t, *model.condition(b, prev_mode, torch.zeros(6, dtype=torch.bool)))

    ref = eps(only, batch)
    for name, other in _variants(batch).items():
        assert torch.equal(eps(only, other), ref), name
    assert not torch.equal(eps(full, _variants(batch)["random"]), eps(full, batch))
    # what the control sees is exactly the normal model's null condition (same weights at the same seed)
    with torch.no_grad():
        prev_mode = full.encode_prev(batch["prev"])
        null_full = full.eps(z, t, *full.condition(batch, prev_mode, torch.ones(6, dtype=torch.bool)))
    assert torch.equal(ref, null_full)


@pytest.mark.parametrize("mode", ["masked", "paper"])
def test_same_architecture_and_parameter_count(mode):
    only, full = _tiny(True, mode), _tiny(False, mode)
    spec_only, spec_full = only.config, full.config
    assert sum(p.numel() for p in only.parameters()) == sum(p.numel() for p in full.parameters())
    so, sf = only.state_dict(), full.state_dict()
    assert so.keys() == sf.keys() and all(torch.equal(so[k], sf[k]) for k in so)  # same seed → same initial weights
    assert spec_only == {**spec_full, "mask_events": True} and spec_full["mask_events"] is False


def test_spec_round_trips_the_flag(tmp_path):
    vae_dir = tmp_path / "vae"
    for flag in (True, False):
        model = _tiny(flag)
        model.vae.save_pretrained(vae_dir)
        model.save(tmp_path / f"ldm_{flag}")
        assert json.loads((tmp_path / f"ldm_{flag}" / "ldm_config.json").read_text())["mask_events"] is flag
        loaded = load_ldm(tmp_path / f"ldm_{flag}", load_vae(vae_dir), use_ema=False)
        assert loaded.mask_events is flag
        assert loaded.config == model.config  # the saved config is the model's own: it rebuilds the same model
    spec = json.loads((tmp_path / "ldm_False" / "ldm_config.json").read_text())
    del spec["mask_events"]  # a model saved before the switch existed is an ehrxdiff model
    (tmp_path / "ldm_False" / "ldm_config.json").write_text(json.dumps(spec))
    assert load_ldm(tmp_path / "ldm_False", load_vae(vae_dir), use_ema=False).mask_events is False


def test_missing_events_for_conditioned_rows_is_an_error():
    full = _tiny(False)
    with pytest.raises(ValueError, match="event embeddings are missing"):
        _loss(full, _variants(_batch())["none"], train=False)


# ---------------------------------------------------------------------------- classifier-free guidance


def test_guidance_branches_differ_only_by_the_events():
    """Unconditional = null events; the previous image's ViT and VAE tokens and the hybrid concat stay."""
    full = _tiny(False, "masked")
    batch = _batch()
    cfg = SampleConfig(guidance_scale=3.0)
    (ctx_c, attn_c, cat_c), (ctx_u, attn_u, cat_u), _ = condition_batch(full, batch, cfg)
    n_img = full.adapter.out_tokens - ME  # ViT + VAE tokens, after the event tokens
    assert torch.equal(ctx_c[:, -n_img:], ctx_u[:, -n_img:]) and torch.equal(cat_c, cat_u)
    assert not attn_u[:, :-n_img].any() and attn_u[:, -n_img:].all()  # no event attended
    assert torch.equal(attn_c[:, :-n_img], batch["mask"][:, : attn_c.shape[1] - n_img])
    assert not torch.equal(ctx_c[:, 0], ctx_u[:, 0])  # the first event token: a real event vs the null table


@pytest.mark.parametrize("mode", ["masked", "paper"])
def test_guidance_is_a_no_op_for_the_image_only_model(mode):
    only = _tiny(True, mode)
    full = _tiny(False, mode)
    batch = _batch()
    z = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.full((6,), 300)
    with torch.no_grad():
        prev_mode = only.encode_prev(batch["prev"])
        for model, same in ((only, True), (full, False)):
            model.eval()
            eps_c = model.eps(z, t, *model.condition(batch, prev_mode, torch.zeros(6, dtype=torch.bool)))
            eps_u = model.eps(z, t, *model.condition(batch, prev_mode, torch.ones(6, dtype=torch.bool)))
            assert torch.equal(eps_c, eps_u) is same
    seeds = list(range(6))
    kw = dict(sampler="dpmsolver++", steps=3)
    plain = sample_batch(only, batch, SampleConfig(**kw), seeds, torch.device("cpu"))
    guided = sample_batch(only, batch, SampleConfig(**kw, guidance_scale=4.0), seeds, torch.device("cpu"))
    assert np.array_equal(plain, guided)
    assert not np.array_equal(
        sample_batch(full, batch, SampleConfig(**kw), seeds, torch.device("cpu")),
        sample_batch(full, batch, SampleConfig(**kw, guidance_scale=4.0), seeds, torch.device("cpu")),
    )


# ------------------------------------------------------------------------------- entry points + config


LOOP = dict(batch_size=8, checkpoint_every=10, log_every=2)
W_VAE = VaeConfig(block_out_channels=[8, 8], layers_per_block=1, train=TrainLoop(steps=2, lr=1e-3, **LOOP))
W_CLIP = TINY_CLIP.model_copy(update={"train": TrainLoop(steps=2, **LOOP)})
W_LDM = LdmConfig(
    block_out_channels=[16, 16],
    attention_levels=[False, True],
    num_heads=2,
    cross_attention_dim=16,
    train=TrainLoop(steps=3, ema_decay=0.9, **LOOP),
)


def toy_vae_and_clip(root):
    """The toy world under `root`, with its autoencoder (`root/vae`) and CLIP (`root/clip`) trained."""
    w = write_world(root, n_pairs=24, size=16, dim=DIM, max_len=ME)
    train_vae(w["images"], w["triplets"], W_VAE, root / "vae")
    train_clip(w["images"], w["embeddings"], w["triplets"], W_CLIP, ME, root / "clip")
    return w


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    w = toy_vae_and_clip(root)
    for name, flag in (("ldm", False), ("ldm_image_only", True)):
        w[name] = train_ldm(
            w["images"],
            w["embeddings"],
            w["triplets"],
            root / "vae",
            root / "clip",
            W_LDM,
            ME,
            root / name,
            mask_events=flag,
        )
    # the same pairs with other events: every pair's events are replaced by those of another pair
    import h5py

    scrambled = root / "scrambled.h5"
    with h5py.File(w["embeddings"]) as src, h5py.File(scrambled, "w") as dst:
        src.copy("texts", dst)
        src.copy("pairs", dst)
        ids = dst["pairs/pair_id"][()]
        del dst["pairs/pair_id"]
        dst["pairs"].create_dataset("pair_id", data=np.roll(ids, 1), dtype=h5py.string_dtype("utf-8"))
    w["scrambled"], w["root"] = scrambled, root
    return w


def _sample_dir(world, ldm, embeddings, out, **kw):
    cfg = SampleConfig(**{"steps": 3, "batch_size": 4, "n_seeds": 2, "sampler": "ddim", **kw})
    info = sample(
        world["images"],
        embeddings,
        world["triplets"],
        world["root"] / "vae",
        world["root"] / ldm,
        cfg,
        ME,
        world["root"] / out,
    )
    images = {
        p.relative_to(world["root"] / out).as_posix(): np.asarray(Image.open(p))
        for p in (world["root"] / out).rglob("*.png")
    }
    return info, images


def test_train_ldm_writes_the_flag_and_the_same_budget(world):
    full, only = world["ldm"], world["ldm_image_only"]
    for name, flag in (("ldm", False), ("ldm_image_only", True)):
        assert json.loads((world["root"] / name / "ldm_config.json").read_text())["mask_events"] is flag
    assert only["mask_events"] is True and full["mask_events"] is False
    for key in ("steps", "n_pairs", "n_null", "unet_params", "adapter_trainable_params"):
        assert only[key] == full[key], key
    assert only["final_loss"] != full["final_loss"]  # the events did reach the normal model in training


def test_sampling_the_image_only_model_ignores_events(world):
    info, own = _sample_dir(world, "ldm_image_only", world["embeddings"], "io_real")
    _, other = _sample_dir(world, "ldm_image_only", world["scrambled"], "io_scrambled")
    assert info["mask_events"] is True and len(own) == 2 * info["n_pairs"] == info["n"]
    assert own.keys() == other.keys() and all(np.array_equal(own[k], other[k]) for k in own)
    _, full = _sample_dir(world, "ldm", world["embeddings"], "full_real")
    _, full_other = _sample_dir(world, "ldm", world["scrambled"], "full_scrambled")
    assert any(not np.array_equal(full[k], full_other[k]) for k in full)
    man = pd.read_parquet(world["root"] / "io_real" / "manifest.parquet")
    assert set(man["pair_id"]) == set(pd.read_parquet(world["root"] / "full_real" / "manifest.parquet")["pair_id"])


def test_controls_config():
    assert PipelineConfig().controls.image_only is True
    assert load_config({"controls": {"image_only": False}}).controls.image_only is False
    assert PipelineConfig().sample.n_seeds == 2
    with pytest.raises(ValueError, match=r"controls\.nope"):
        load_config({"controls": {"nope": 1}})
    with pytest.raises(ValueError, match=r"sample\.n_seeds"):
        load_config({"sample": {"n_seeds": 0}})
