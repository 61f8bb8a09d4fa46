"""`sample.compose: previous_plus_change`: the prediction is the previous film plus the decoded change
D(previous latent + change) − D(previous latent), optionally blurred (`sample.change_blur_px`)."""

import numpy as np
import pytest
import torch
from test_models_image_only import _batch, _tiny
from test_models_residual import _no_change_sampler, _with_target

from ehrxdiff_core.config import SampleConfig, load_config
from ehrxdiff_core.models.sampling import compose_change, sample_batch
from ehrxdiff_core.models.vae import decode_gray

torch.set_num_threads(1)


def _levels(x: torch.Tensor) -> np.ndarray:
    return ((x[:, 0].clamp(-1, 1).numpy() + 1) * 127.5).round()


def test_no_change_is_the_previous_film_and_a_change_is_added_to_it():
    g = torch.Generator().manual_seed(0)
    prev = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1
    decoded_prev = torch.rand(3, 1, 16, 16, generator=g) * 2 - 1  # a poor reconstruction of prev
    assert torch.equal(compose_change(prev, decoded_prev, decoded_prev, 0.0), prev)
    step = torch.zeros(3, 1, 16, 16)
    step[:, :, 4:12, 4:12] = 0.3
    assert torch.allclose(compose_change(prev, decoded_prev + step, decoded_prev, 0.0), prev + step)
    # a uniform change survives the blur whole
    assert torch.allclose(compose_change(prev, decoded_prev + 0.2, decoded_prev, 2.0), prev + 0.2, atol=1e-6)


def test_the_blur_keeps_a_broad_change_and_drops_a_pixel_texture():
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    blob = 0.4 * torch.exp(-((x - 16) ** 2 + (y - 16) ** 2) / (2 * 6.0**2))[None, None]
    checker = 0.1 * ((x + y) % 2 * 2 - 1)[None, None]
    zero = torch.zeros(1, 1, 32, 32)
    kept = compose_change(zero, blob, zero, 1.0)
    assert float(kept[..., 16, 16]) > 0.9 * float(blob[..., 16, 16])
    texture = compose_change(zero, checker, zero, 1.0)[..., 4:-4, 4:-4]
    assert float(texture.abs().max()) < 0.05 * 0.1
    assert torch.equal(compose_change(zero, checker, zero, 0.0), checker)  # σ 0: no blur


@torch.no_grad()
def test_a_model_predicting_no_change_returns_the_previous_film_itself():
    batch = _batch()
    seeds = list(range(6))
    model = _no_change_sampler(_with_target(_tiny(False), "residual"))
    model.fit_residual_scale([_batch(6, 1)])
    real = _levels(batch["prev"])
    through_vae = _levels(decode_gray(model.vae, model.encode_prev(batch["prev"])))
    kw = dict(sampler="ddim", steps=10, eta=0.0)
    latent = sample_batch(model, batch, SampleConfig(**kw), seeds, torch.device("cpu"))
    composed = sample_batch(
        model, batch, SampleConfig(**kw, compose="previous_plus_change"), seeds, torch.device("cpu")
    )
    assert np.abs(latent - through_vae).mean() < 4.0  # the paper's composition: the autoencoder's copy
    assert np.abs(composed - real).mean() < 4.0  # DDIM's last step keeps ~0.04 of the initial noise
    assert np.abs(latent - real).mean() > 5 * np.abs(composed - real).mean()
    # the composed image is exactly the previous film plus the latent sample's decoded change
    changed = torch.from_numpy(latent / 127.5 - 1).float()[:, None] - decode_gray(
        model.vae, model.encode_prev(batch["prev"])
    )
    inside = (latent > 0) & (latent < 255)  # the latent image is clamped to [-1, 1] before it is quantised
    assert inside.mean() > 0.9
    assert np.abs(composed - _levels(batch["prev"] + changed))[inside].max() <= 1.0 + 1e-6


def test_the_keys_are_checked():
    assert SampleConfig().compose == "latent" and SampleConfig().change_blur_px == 0.0
    cfg = load_config({"sample": {"compose": "previous_plus_change", "change_blur_px": 1.5}}).sample
    assert (cfg.compose, cfg.change_blur_px) == ("previous_plus_change", 1.5)
    with pytest.raises(ValueError, match=r"sample\.change_blur_px.*sample\.compose"):
        load_config({"sample": {"change_blur_px": 1.0}})
    with pytest.raises(ValueError, match=r"sample\.compose"):
        load_config({"sample": {"compose": "pixels"}})
    with pytest.raises(ValueError, match=r"sample\.change_blur_px"):
        load_config({"sample": {"compose": "previous_plus_change", "change_blur_px": -1}})
