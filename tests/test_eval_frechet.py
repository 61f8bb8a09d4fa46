"""Fréchet distance: zero for identical sets, ‖Δμ‖² for a pure shift, equal to pytorch-fid; the cross-half floor."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance

from ehrxdiff_core.evaluation.frechet import (
    _frechet_eigh,
    cross_half_fd,
    feature_statistics,
    frechet_distance,
    patient_halves,
)


@pytest.fixture
def feats():
    rng = np.random.default_rng(0)
    return rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))  # non-isotropic covariance


def test_identical_sets_give_zero(feats):
    assert abs(frechet_distance(feats, feats)) < 1e-6


def test_mean_shift_gives_squared_norm_and_grows(feats):
    delta = np.array([1.0, -2.0, 0.5, 0.0, 0.0, 3.0])
    assert frechet_distance(feats, feats + delta) == pytest.approx(float(delta @ delta), rel=1e-5, abs=1e-5)
    values = [frechet_distance(feats, feats + s * delta) for s in (0.5, 1.0, 2.0)]
    assert values[0] < values[1] < values[2]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # scipy sqrtm(disp=) inside pytorch-fid
def test_matches_pytorch_fid_and_the_eigh_form(feats):
    rng = np.random.default_rng(1)
    other = rng.normal(size=(200, 6)) * 1.5 + 0.3
    mu1, s1 = np.mean(feats, axis=0), np.cov(feats, rowvar=False)
    mu2, s2 = np.mean(other, axis=0), np.cov(other, rowvar=False)
    expected = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(feats, other) == pytest.approx(expected, rel=1e-9)
    assert _frechet_eigh(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert np.allclose(feature_statistics(feats)[1], s1)


def test_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 4)))


def test_patient_halves_are_disjoint_and_balanced():
    subjects = np.repeat(np.arange(10), [3, 1, 2, 2, 4, 1, 1, 2, 3, 1])
    a, b = patient_halves(subjects, seed=0)
    assert set(subjects[a]).isdisjoint(subjects[b]) and len(a) + len(b) == len(subjects)
    assert abs(len(a) - len(b)) <= 2
    a2, b2 = patient_halves(subjects, seed=0)
    assert (a == a2).all() and (b == b2).all()
    one_a, one_b = patient_halves(np.zeros(7), seed=0)  # a single patient: split the pairs
    assert len(one_a) == 3 and len(one_b) == 4


def test_cross_half_floor_equals_real_vs_real_and_shift_sits_above(feats):
    subjects = np.arange(len(feats)) // 3
    halves = patient_halves(subjects, seed=1)
    real = cross_half_fd(feats, feats, halves)
    assert real["value"] == pytest.approx(real["floor"], rel=1e-9) and real["floor"] > 0  # small-N bias, not 0
    shifted = cross_half_fd(feats + 2.0, feats, halves)
    assert shifted["floor"] == pytest.approx(real["floor"]) and shifted["above_floor"] > 5
    assert shifted["n_a"] + shifted["n_b"] == len(feats)
    few = cross_half_fd(feats[:3], feats[:3], (np.array([0]), np.array([1, 2])))
    assert few["value"] is None and "too few" in few["reason"]
