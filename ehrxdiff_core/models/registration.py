"""Rigid-plus-scale registration of one radiograph onto another (`ldm.register_target`).

Two films of the same patient differ by how the patient stood and where the film sat: a rotation,
a magnification and a shift that no EHR event can predict. A model trained to produce the next film
in its own position has to draw that change, and an under-trained one draws it as a blur. With
`ldm.register_target: true` each training target is first moved onto its previous image by the
similarity transform (rotation, isotropic scale, shift) that maximises their normalised
cross-correlation, so the model learns the next film in the previous film's position. The
normalised correlation is blind to a global gain and offset, so a change in exposure does not pull
the geometric fit. With `ldm.register_exposure: true` the moved target's exposure is matched to the
previous film's too (`fit_gamma`): one power law on the whole film, fitted in mean absolute
difference, so a finding that changes part of the lungs moves it little; what is left is the findings'
change and the films' pixel noise.

The fit is gradient ascent (Adam) on the four parameters of every pair at once, through
`torch.nn.functional.affine_grid` / `grid_sample`, coarse to fine (box-filtered at 1/4, 1/2 and full
size) so a shift of a few pixels is found before the fine texture can trap it. Images above 128 px
are fitted box-filtered to 128 px (the parameters are in normalised units) and warped at full size,
so a pair costs the same at 256 or 512 px as at 128 (about 15 ms at 64 px, 45 ms at 128 px and above, on one
CPU core). It needs no weights and works on any image pair of equal size; it is deterministic for
given inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FIT_SIZE = 128  # larger images are fitted box-filtered to this size (the transform is size-free), then warped
LEVELS = (4, 2, 1)  # box-filter factors below the fitting size, coarse to fine
ITERS = (80, 60, 40)  # Adam iterations per level
LR = 0.02
MAX_ANGLE = 0.35  # radians (20 degrees): the fit is clamped to poses a film plausibly differs by
MAX_LOG_SCALE = 0.25  # scale within [0.78, 1.28]
MAX_SHIFT = 0.3  # a fraction of the half-width
# exposure candidates (`fit_gamma`): power laws 0.67-1.49 on [0, 1] intensities, log-spaced, 1 among them
GAMMA_GRID = torch.exp(torch.linspace(-0.4, 0.4, 81, dtype=torch.float64)).float()


def similarity_theta(params: torch.Tensor) -> torch.Tensor:
    """(B, 4) = (angle in radians, log scale, shift x, shift y in normalised units) → (B, 2, 3) for
    `affine_grid`: the output pixel at x samples the input at s·R(angle)·x + shift."""
    ang, log_s, tx, ty = params.unbind(1)
    s = torch.exp(log_s)
    c, si = s * torch.cos(ang), s * torch.sin(ang)
    return torch.stack([torch.stack([c, -si, tx], 1), torch.stack([si, c, ty], 1)], 1)


def warp(images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Resample `images` (B, C, H, W) by the similarity transforms `params` (B, 4); outside the film the
    edge pixels are repeated (a film's border is background, not black)."""
    grid = F.affine_grid(similarity_theta(params).to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalised_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Pearson correlation of the pixels of `a` and `b` (B, C, H, W) → (B,)."""
    a = a.flatten(1) - a.flatten(1).mean(1, keepdim=True)
    b = b.flatten(1) - b.flatten(1).mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def _clamp_(params: torch.Tensor) -> None:
    params[:, 0].clamp_(-MAX_ANGLE, MAX_ANGLE)
    params[:, 1].clamp_(-MAX_LOG_SCALE, MAX_LOG_SCALE)
    params[:, 2:].clamp_(-MAX_SHIFT, MAX_SHIFT)


def _fitting_pair(moving: torch.Tensor, fixed: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Both batches checked to share one (B, C, H, W) shape, as float, box-filtered to `FIT_SIZE` when larger
    (the fitted parameters are size-free: fit small, apply at any size)."""
    if moving.shape != fixed.shape or moving.dim() != 4:
        raise ValueError(f"{what} needs two (B, C, H, W) batches of one shape, got {moving.shape} and {fixed.shape}")
    moving, fixed = moving.detach().float(), fixed.detach().float()
    if moving.shape[-1] > FIT_SIZE:
        moving, fixed = F.adaptive_avg_pool2d(moving, FIT_SIZE), F.adaptive_avg_pool2d(fixed, FIT_SIZE)
    return moving, fixed


def fit_similarity(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """The similarity transforms (B, 4) that carry each `moving` image onto its `fixed` one (both
    (B, 1, H, W), any intensity range), by maximising their normalised cross-correlation."""
    moving, fixed = _fitting_pair(moving, fixed, "registration")
    params = torch.zeros(moving.shape[0], 4, dtype=torch.float32, device=moving.device, requires_grad=True)
    with torch.enable_grad():
        for factor, iters in zip(LEVELS, ITERS):
            size = moving.shape[-1] // factor
            if size < 8:
                continue
            m = F.adaptive_avg_pool2d(moving, size) if factor > 1 else moving
            f = F.adaptive_avg_pool2d(fixed, size) if factor > 1 else fixed
            opt = torch.optim.Adam([params], lr=LR)
            for _ in range(iters):
                opt.zero_grad(set_to_none=True)
                loss = -normalised_correlation(warp(m, params), f).sum()  # per-pair losses: independent fits
                loss.backward()
                opt.step()
                with torch.no_grad():
                    _clamp_(params)
    return params.detach()


def _unit(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as [0, 1] intensities, kept off 0 so every power law is defined."""
    return ((images.float().clamp(-1, 1) + 1) / 2).clamp_min(1e-6)


def apply_gamma(images: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W) through the power law `gamma` (B,) on their [0, 1] intensities."""
    unit = _unit(images)
    return (unit ** gamma.to(unit)[:, None, None, None]) * 2 - 1


@torch.no_grad()
def fit_gamma(moving: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """Per pair, the power law (B,) from `GAMMA_GRID` that brings `moving`'s intensities closest to
    `fixed`'s (both (B, 1, H, W) in [-1, 1], already aligned) in mean absolute difference.

    A grid search: one parameter, the global minimum among the candidates, and the identity (1) is one
    of them, so the match never ends further from `fixed` than it started. Mean absolute difference
    rather than squared: a finding that brightens one region pulls the fit less.
    """
    m, f = _fitting_pair(moving, fixed, "exposure matching")
    unit, grid = _unit(m), GAMMA_GRID.to(m.device)  # the conversion once, the candidates against it
    err = torch.stack([((unit**g) * 2 - 1 - f).abs().flatten(1).mean(1) for g in grid], 1)
    return grid[err.argmin(1)]


@torch.no_grad()
def register(moving: torch.Tensor, fixed: torch.Tensor, exposure: bool = False) -> torch.Tensor:
    """`moving` (B, 1, H, W) resampled onto `fixed`: the target of a pair in its previous image's position
    (and, with `exposure`, at its exposure: `fit_gamma`; images then in [-1, 1]).

    A pair the fit leaves less correlated than it started (a safeguard: gradient ascent from the identity
    does not go downhill, but clamping to the plausible poses can end there) keeps its unregistered target.
    """
    params = fit_similarity(moving, fixed)
    moved = warp(moving.float(), params)
    worse = normalised_correlation(moved, fixed.float()) < normalised_correlation(moving.float(), fixed.float())
    moved[worse] = moving.float()[worse]
    if exposure:
        moved = apply_gamma(moved, fit_gamma(moved, fixed))
    return moved.to(moving.dtype)
