"""Sampling: DDIM (paper: 100 steps, η = 1) or DPM-Solver++ chosen by `sample.sampler`, optional
classifier-free guidance against the null-event condition, `sample.n_seeds` seeds per pair, PNG +
manifest output (the samples-folder contract of `ehrxdiff_core.artifacts.samples`).

The scheduler is the only thing that changes between samplers (diffusers' interchangeable
`set_timesteps` / `step`). Each pair's initial noise and DDIM noise come from its own generator
(seed + hash(pair_id)), so an image does not depend on which batch it was in. Latents are not
clipped (as the original); decoding uses latents / scale and clamps pixels to [-1, 1]; under
`sample.compose: previous_plus_change` the decoded change is added to the previous film instead
(`compose_change`). Seed index k of a pair uses `pair_seed(sample.seed + k, pair_id)`, so index 0 is the
one-seed image.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from ehrxdiff_core.config import LdmConfig, SampleConfig
from ehrxdiff_core.models.datasets import from_unit_range
from ehrxdiff_core.models.ldm import LatentDiffusion
from ehrxdiff_core.models.vae import decode_gray


def make_scheduler(sample: SampleConfig, ldm: LdmConfig):
    common = dict(
        num_train_timesteps=ldm.num_train_timesteps,
        beta_start=ldm.beta_start,
        beta_end=ldm.beta_end,
        beta_schedule="scaled_linear",
        prediction_type=ldm.prediction_type,
    )
    if sample.sampler == "ddim":
        # LDM's uniform DDIM timesteps 1, 11, …, 991: "leading" spacing + offset 1; α_0 for the last step
        return DDIMScheduler(
            **common, clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
        )
    return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)


@torch.no_grad()
def condition_batch(
    model: LatentDiffusion, batch: dict, sample: SampleConfig
) -> tuple[tuple, tuple | None, torch.Tensor]:
    """The conditional inputs of a batch, under guidance the unconditional ones (null events, same previous
    image), and the previous image's latent; computed once and shared by every seed of the batch."""
    model.eval()
    prev_mode = model.encode_prev(batch["prev"])
    null = torch.zeros(prev_mode.shape[0], dtype=torch.bool, device=prev_mode.device)
    cond = model.condition(batch, prev_mode, null)
    uncond = None
    if sample.guidance_scale != 1.0 and not model.mask_events:  # image-only: both branches are the same input
        uncond = model.condition(batch, prev_mode, torch.ones_like(null))
    return cond, uncond, prev_mode


@torch.no_grad()
def denoise(
    model: LatentDiffusion,
    cond: tuple,
    uncond: tuple | None,
    prev_mode: torch.Tensor,
    sample: SampleConfig,
    seeds: list[int],
    device: torch.device,
    base: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> np.ndarray:
    """uint8 images (B, S, S) from conditioned inputs and the previous latents (added back under
    `ldm.target: residual`); `seeds[i]` drives every random draw of pair i. `base` (`composition_base`:
    the previous films and their latents decoded alone) is needed by `sample.compose: previous_plus_change`."""
    sched = make_scheduler(sample, model.cfg)
    sched.set_timesteps(sample.steps, device=device)
    gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
    b = len(seeds)
    c = model.unet.config.out_channels
    h = w = model.unet.config.sample_size
    z = torch.stack([torch.randn(c, h, w, generator=g) for g in gens]).to(device) * sched.init_noise_sigma
    for t in sched.timesteps:
        zin = sched.scale_model_input(z, t)
        tt = t.expand(b).to(device)
        eps = model.eps(zin, tt, *cond)
        if uncond is not None:
            eps_u = model.eps(zin, tt, *uncond)
            eps = eps_u + sample.guidance_scale * (eps - eps_u)
        kwargs = {}
        if isinstance(sched, DDIMScheduler):
            kwargs = {"eta": sample.eta, "generator": gens}
        z = _step(sched, eps, t, z, kwargs, gens)
    x = decode_gray(model.vae, model.from_diffused(z, prev_mode))
    if sample.compose == "previous_plus_change":
        if base is None:
            raise ValueError("sample.compose: previous_plus_change needs the previous films (composition_base)")
        x = compose_change(base[0], x, base[1], sample.change_blur_px)
    return from_unit_range(x.clamp(-1, 1))


@torch.no_grad()
def composition_base(
    model: LatentDiffusion, batch: dict, sample: SampleConfig, prev_mode: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(the previous films, their latents decoded alone) under `sample.compose: previous_plus_change`, else
    None; computed once per batch and shared by every seed, like `condition_batch`."""
    if sample.compose != "previous_plus_change":
        return None
    return batch["prev"], decode_gray(model.vae, prev_mode)


def compose_change(prev: torch.Tensor, decoded: torch.Tensor, decoded_prev: torch.Tensor, blur_px: float):
    """The previous films plus the decoded change (`sample.compose: previous_plus_change`):
    prev + G(decoded − decoded_prev), where decoded_prev is the previous latent decoded alone and G a
    Gaussian blur of σ = `blur_px` pixels (none at 0). What the sample leaves unchanged keeps the
    previous film's own pixels, so the autoencoder's reconstruction error cancels out of it; the blur
    keeps only the change's coarser structure. All (B, 1, S, S) in [-1, 1]; not clamped."""
    change = decoded - decoded_prev
    if blur_px > 0:
        from torchvision.transforms.functional import gaussian_blur

        radius = max(1, math.ceil(3 * blur_px))
        change = gaussian_blur(change, kernel_size=2 * radius + 1, sigma=blur_px)
    return prev.to(change.dtype) + change


def sample_batch(
    model: LatentDiffusion, batch: dict, sample: SampleConfig, seeds: list[int], device: torch.device
) -> np.ndarray:
    """uint8 images (B, S, S) for one batch; `seeds[i]` drives every random draw of pair i."""
    return sample_seeds(model, batch, sample, [seeds], device)[0][0]


def _step(sched, eps, t, z, kwargs, gens):
    """One scheduler step; DDIM's η-noise is drawn per pair from its own CPU generator."""
    if "generator" in kwargs and kwargs["eta"] > 0:
        # diffusers draws one tensor for a list of generators only on matching devices; draw on CPU per pair.
        noise = torch.stack([torch.randn(z.shape[1:], generator=g) for g in gens]).to(z.device, z.dtype)
        return sched.step(eps, t, z, eta=kwargs["eta"], variance_noise=noise).prev_sample
    return sched.step(eps, t, z, **({"eta": kwargs["eta"]} if "eta" in kwargs else {})).prev_sample


def sample_seeds(
    model: LatentDiffusion, batch: dict, sample: SampleConfig, seed_lists: list[list[int]], device: torch.device
) -> list[tuple[np.ndarray, float]]:
    """(images, seconds) per seed list of one batch: conditioned once, denoised once per list; each list's
    seconds include an equal share of the conditioning."""
    t0 = time.perf_counter()
    cond, uncond, prev_mode = condition_batch(model, batch, sample)
    base = composition_base(model, batch, sample, prev_mode)
    share = (time.perf_counter() - t0) / len(seed_lists)
    out = []
    for seeds in seed_lists:
        t1 = time.perf_counter()
        imgs = denoise(model, cond, uncond, prev_mode, sample, seeds, device, base=base)
        out.append((imgs, share + time.perf_counter() - t1))
    return out
