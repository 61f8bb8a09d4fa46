"""`ldm.target: residual`: the U-Net denoises the latent change from the previous image (scaled to unit
std on the training pairs) and sampling adds it back, so a model that predicts no change returns the
previous image through the autoencoder; `target: image` (the paper's) is unchanged."""

import json

import numpy as np
import pytest
import torch
from test_models_image_only import ME, W_LDM, _batch, _tiny, toy_vae_and_clip

from ehrxdiff_core.config import LdmConfig, SampleConfig, load_config
from ehrxdiff_core.models.ldm import load_ldm
from ehrxdiff_core.models.sampling import sample_batch
from ehrxdiff_core.models.train_ldm import train_ldm
from ehrxdiff_core.models.vae import decode_gray, load_vae

torch.set_num_threads(1)


def _with_target(model, target):
    model.cfg = model.cfg.model_copy(update={"target": target})
    return model


def test_the_default_target_is_the_paper_image_and_the_key_is_checked():
    assert LdmConfig().target == "image"
    assert load_config({"ldm": {"target": "residual"}}).ldm.target == "residual"
    with pytest.raises(ValueError, match=r"ldm\.target"):
        load_config({"ldm": {"target": "change"}})


def test_image_target_is_the_scaled_target_latent():
    model = _tiny(False)
    z, prev = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert torch.equal(model.to_diffused(z, prev), z)
    assert torch.allclose(model.from_diffused(z, prev), z / model.scale)


def test_residual_scale_makes_the_change_unit_std_and_round_trips():
    model = _with_target(_tiny(False), "residual")
    batches = [_batch(6, seed) for seed in (0, 1, 2)]
    scale = model.fit_residual_scale(batches)
    with torch.no_grad():
        d = torch.cat(
            [
                model.to_diffused(model.encode_prev(b["trg"]) * model.scale, model.encode_prev(b["prev"]))
                for b in batches
            ]
        )
    assert scale == model.residual_scale and scale != 1.0
    assert float(d.double().std(unbiased=False)) == pytest.approx(1.0, abs=0.02)
    prev = model.encode_prev(batches[0]["prev"])
    z_trg = model.encode_prev(batches[0]["trg"])
    back = model.from_diffused(model.to_diffused(z_trg * model.scale, prev), prev)
    assert torch.allclose(back, z_trg, atol=1e-5)


def test_identical_previous_and_target_images_are_refused():
    model = _with_target(_tiny(False), "residual")
    b = _batch()
    with pytest.raises(ValueError, match=r"ldm\.target: residual.*identical"):
        model.fit_residual_scale([{**b, "trg": b["prev"]}])
    with pytest.raises(ValueError, match=r"ldm\.target: residual needs training pairs"):
        model.fit_residual_scale([])


def _no_change_sampler(model):
    """Replace the U-Net by the exact v-prediction of a clean sample equal to 0 (no change, for `residual`)."""
    acp = model.scheduler.alphas_cumprod

    def eps(z_t, t, *cond):
        a = acp[t.long()].to(z_t.dtype)[:, None, None, None]
        return (a.sqrt() / (1 - a).sqrt()) * z_t

    model.eps = eps
    return model


@torch.no_grad()
def test_a_model_predicting_no_change_returns_the_previous_image_through_the_autoencoder():
    batch = _batch()
    cfg = SampleConfig(sampler="ddim", steps=10, eta=0.0)
    seeds = list(range(6))
    copy = _tiny(False)
    through_vae = decode_gray(copy.vae, copy.encode_prev(batch["prev"])).clamp(-1, 1)
    through_vae = ((through_vae[:, 0].numpy() + 1) * 127.5).round()
    residual = _no_change_sampler(_with_target(_tiny(False), "residual"))
    residual.fit_residual_scale([_batch(6, 1)])
    image = _no_change_sampler(_tiny(False))
    err_res = np.abs(sample_batch(residual, batch, cfg, seeds, torch.device("cpu")) - through_vae).mean()
    err_img = np.abs(sample_batch(image, batch, cfg, seeds, torch.device("cpu")) - through_vae).mean()
    # DDIM's last step keeps sqrt(1 - alpha_0) ~ 0.04 of the initial noise, in units of the change's std
    assert err_res < 4.0  # gray levels
    assert err_img > 8 * err_res  # the image target's "zero" is a blank latent, not the previous image


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("residual")
    w = toy_vae_and_clip(root)
    cfg = W_LDM.model_copy(update={"target": "residual"})
    info = train_ldm(w["images"], w["embeddings"], w["triplets"], root / "vae", root / "clip", cfg, ME, root / "ldm")
    return root, info


def test_the_stage_fits_the_scale_saves_it_and_the_loaded_model_uses_it(trained):
    root, info = trained
    spec = json.loads((root / "ldm" / "ldm_config.json").read_text())
    assert info["target"] == "residual" and info["residual_scale"] > 0
    assert spec["ldm"]["target"] == "residual" and spec["residual_scale"] == pytest.approx(info["residual_scale"])
    for ema in (False, True):
        model = load_ldm(root / "ldm", load_vae(root / "vae"), use_ema=ema)
        assert model.cfg.target == "residual" and model.residual_scale == pytest.approx(info["residual_scale"])
