"""`ldm.register_target`: each training target is moved onto its previous image by a fitted rotation,
scale and shift, so the model learns the next film in the previous film's position;
`ldm.register_exposure`: its exposure is matched to the previous film's too."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import LdmConfig
from ehrxdiff_core.models.datasets import PairBatches, to_unit_range
from ehrxdiff_core.models.registration import (
    apply_gamma,
    fit_gamma,
    fit_similarity,
    normalised_correlation,
    register,
    warp,
)
from ehrxdiff_core.synthetic.render import Anatomy, render_chest

STATE = np.full(7, 0.3, np.float32)


def _films(n: int, nuisance: float, seed0: int) -> np.ndarray:
    """One PA film per patient of `n`, each drawn with its own pose (seed0 + i) at `nuisance`."""
    rng = np.random.default_rng(3)
    anatomies = [Anatomy.draw(rng, female=bool(i % 2), age=40.0 + 5 * i) for i in range(n)]
    return np.stack(
        [render_chest(STATE, a, "PA", 64, np.random.default_rng(seed0 + i), nuisance) for i, a in enumerate(anatomies)]
    )


def test_a_known_similarity_transform_is_undone():
    still = to_unit_range(_films(4, 0.0, 0))
    known = torch.tensor([[0.06, 0.05, 0.04, -0.03], [-0.08, -0.04, -0.05, 0.02], [0, 0, 0.06, 0], [0.05, 0, 0, 0]])
    moved = warp(still, known)
    fitted = fit_similarity(moved, still)
    # warping by `known` then `fitted` is the identity: to first order the fitted angle, log scale and shift
    # are those of `known` with the opposite sign (a 5 % shift is 1.6 px at 64 px)
    np.testing.assert_allclose(fitted.numpy(), -known.numpy(), atol=0.015)
    inner = slice(8, 56)  # away from the border the warp fills by repetition
    before = ((moved - still)[..., inner, inner] ** 2).mean()
    after = ((warp(moved, fitted) - still)[..., inner, inner] ** 2).mean()
    assert after < 0.1 * before


def test_two_films_of_a_patient_are_aligned_to_nearly_the_still_pair():
    prev, trg = to_unit_range(_films(8, 1.0, 0)), to_unit_range(_films(8, 1.0, 100))
    still = normalised_correlation(to_unit_range(_films(8, 0.0, 100)), to_unit_range(_films(8, 0.0, 0)))
    raw = normalised_correlation(trg, prev)
    registered = normalised_correlation(register(trg, prev), prev)
    assert (registered > raw).all()
    # what is left is exposure and pixel noise, which registration does not touch: within 0.03 of the
    # pair drawn in one pose, where the raw pairs lag by up to 0.25
    assert (registered > still - 0.03).all() and (raw < still - 0.05).any()


def test_an_image_registered_onto_itself_is_unchanged():
    x = to_unit_range(_films(3, 1.0, 0))
    torch.testing.assert_close(register(x, x), x, atol=1e-4, rtol=0)


def test_a_fit_that_lowers_the_correlation_keeps_the_target(monkeypatch):
    from ehrxdiff_core.models import registration

    prev, trg = to_unit_range(_films(2, 1.0, 0)), to_unit_range(_films(2, 1.0, 100))
    bad = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.3, 0.2, 0.25, -0.25]])  # the second: far off any plausible pose
    monkeypatch.setattr(registration, "fit_similarity", lambda moving, fixed: bad)
    out = registration.register(trg, prev)
    torch.testing.assert_close(out[1], trg[1])  # kept as drawn
    torch.testing.assert_close(out[0], warp(trg[:1], bad[:1])[0])  # the identity fit is applied (a no-op)


class Store:
    def __init__(self, films: dict[str, np.ndarray]):
        self.films, self.size, self.loads = films, 64, 0

    def __contains__(self, dicom_id):
        return dicom_id in self.films

    def load(self, ids):
        self.loads += len(ids)
        return np.stack([self.films[i] for i in ids])


def _batches(register_targets: bool, register_exposure: bool = False) -> PairBatches:
    prev, trg = _films(4, 1.0, 0), _films(4, 1.0, 100)
    films = {**{f"p{i}": f for i, f in enumerate(prev)}, **{f"t{i}": f for i, f in enumerate(trg)}}
    pairs = pd.DataFrame(
        {
            "pair_id": ["a", "b", "c", "d", "a"],
            "prev_dicom_id": ["p0", "p1", "p2", "p3", "p0"],
            "trg_dicom_id": ["t0", "t1", "t2", "t3", "p0"],  # the last row: the w_null sample of pair a
        }
    )
    data = PairBatches(
        pairs, "unused.h5", None, 1, register_targets=register_targets, register_exposure=register_exposure
    )
    data._images = Store(films)
    return data


@pytest.mark.parametrize("cached", [True, False])
def test_pair_batches_serve_registered_targets(cached):
    plain, reg = _batches(False), _batches(True)
    if cached:
        assert reg.cache_images(2**30)
    idx = np.arange(5)
    raw, out = plain.get(idx, with_events=False), reg.get(idx, with_events=False)
    torch.testing.assert_close(out["prev"], raw["prev"])
    assert (
        normalised_correlation(out["trg"][:4], out["prev"][:4])
        > normalised_correlation(raw["trg"][:4], raw["prev"][:4])
    ).all()
    # the null row (prev → prev) shares its pair id with pair a, and stays the previous image
    torch.testing.assert_close(out["trg"][4], out["prev"][4], atol=1 / 127.5, rtol=0)
    assert not torch.equal(out["trg"][0], out["trg"][4])
    again = reg.get(idx, with_events=False)
    torch.testing.assert_close(again["trg"], out["trg"])
    assert len(reg._registered) == (5 if cached else 0)  # kept only beside cached images


def test_registration_and_affine_jitter_are_refused_together():
    with pytest.raises(ValueError, match="register_target and target_affine"):
        LdmConfig(register_target=True, target_affine=True)
    assert LdmConfig(register_target=True).register_target


def test_a_large_film_is_fitted_small_and_warped_at_full_size():
    rng = np.random.default_rng(3)
    anatomy = Anatomy.draw(rng, age=60.0)
    still = to_unit_range(np.stack([render_chest(STATE, anatomy, "PA", 256, np.random.default_rng(0), 0.0)]))
    known = torch.tensor([[0.05, 0.04, -0.04, 0.03]])
    moved = warp(still, known)
    fitted = fit_similarity(moved, still)
    np.testing.assert_allclose(fitted.numpy(), -known.numpy(), atol=0.015)
    out = register(moved, still)
    assert out.shape == still.shape  # full size, not the fitting size
    assert normalised_correlation(out, still) > normalised_correlation(moved, still) + 0.05


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().flatten(1).mean(1)


def test_a_known_exposure_change_is_found_and_undone():
    still = to_unit_range(_films(4, 0.0, 0))
    known = torch.tensor([0.8, 0.9, 1.12, 1.25])
    exposed = apply_gamma(still, known)
    fitted = fit_gamma(exposed, still)
    # the power law that undoes g is 1 / g; the grid's step is 1 % in log
    np.testing.assert_allclose(fitted.numpy(), 1 / known.numpy(), rtol=0.015)
    assert (_l1(apply_gamma(exposed, fitted), still) < 0.2 * _l1(exposed, still)).all()


def test_a_regional_finding_barely_moves_the_exposure_fit():
    # a bright opacity over a sixth of the film (an effusion, say) on an exposure change: the fitted power law
    # stays within 3 % of the exposure's own, so the match leaves the finding for the model to predict
    still = to_unit_range(_films(4, 0.0, 0))
    finding = still.clone()
    finding[..., 40:56, 8:40] = (finding[..., 40:56, 8:40] + 0.6).clamp(max=1.0)
    known = torch.tensor([0.85, 1.0, 1.2, 1.1])
    fitted = fit_gamma(apply_gamma(finding, known), still)
    np.testing.assert_allclose(fitted.numpy(), 1 / known.numpy(), rtol=0.03)
    matched = apply_gamma(apply_gamma(finding, known), fitted)
    region = (matched - still)[..., 40:56, 8:40].mean((1, 2, 3))
    assert (region > 0.3).all()  # the opacity is still there after the match


def test_an_exposure_fit_onto_itself_is_the_identity():
    x = to_unit_range(_films(3, 1.0, 0))
    assert (fit_gamma(x, x) == 1.0).all()
    with pytest.raises(ValueError, match="exposure matching needs"):
        fit_gamma(x, x[:2])


def test_pair_batches_match_the_exposure_of_registered_targets():
    reg, both = _batches(True), _batches(True, register_exposure=True)
    idx = np.arange(5)
    a, b = reg.get(idx, with_events=False), both.get(idx, with_events=False)
    # two films of a patient drawn with their own exposure: matching it brings the target closer to the previous
    assert _l1(b["trg"][:4], b["prev"][:4]).mean() < _l1(a["trg"][:4], a["prev"][:4]).mean()
    torch.testing.assert_close(b["trg"][4], b["prev"][4], atol=1 / 127.5, rtol=0)  # the null row is unchanged


def test_exposure_matching_needs_registration():
    with pytest.raises(ValueError, match="register_exposure .* needs register_target: true"):
        LdmConfig(register_exposure=True)
    assert LdmConfig(register_target=True, register_exposure=True).register_exposure
