"""The rendered films: sex and age leave visible traces (demographic preservation is measurable), and the
nuisance setting scales each film's pose and exposure change."""

from __future__ import annotations

import numpy as np
import pytest

from ehrxdiff_core.synthetic.process import AT, CM, EF, SD
from ehrxdiff_core.synthetic.render import Anatomy, acquisition, render_chest


def _img(female: bool, age: float, seed: int = 0) -> np.ndarray:
    an = Anatomy.draw(np.random.default_rng(seed), female=female, age=age)
    return render_chest(np.zeros(7), an, "PA", 64, np.random.default_rng(seed + 100)).astype(float)


def test_breast_shadows_brighten_lower_zones_of_female_images():
    diffs = [(_img(True, 50, s)[40:56].mean() - _img(False, 50, s)[40:56].mean()) for s in range(5)]
    assert min(diffs) > 0


def test_aortic_knob_brighter_with_age():
    diffs = [(_img(False, 85, s)[12:22, 24:34].mean() - _img(False, 30, s)[12:22, 24:34].mean()) for s in range(5)]
    assert np.mean(diffs) > 0


def test_nuisance_one_is_the_raw_draws_and_zero_the_neutral_film():
    for view in ("PA", "AP", "LATERAL"):
        raw = np.random.default_rng(7)
        ang, scale, (dx, dy), gamma, sd = (
            raw.uniform(-5, 5),
            raw.uniform(0.92, 1.05) * (1.08 if view == "AP" else 1.0),
            raw.uniform(-0.05, 0.05, 2),
            raw.uniform(0.8, 1.25),
            raw.uniform(0.01, 0.035),
        )
        assert acquisition(np.random.default_rng(7), view, 1.0) == (ang, scale, dx, dy, gamma, sd)  # bit-exact
        neutral = acquisition(np.random.default_rng(7), view, 0.0)
        assert neutral == (0.0, 1.08 if view == "AP" else 1.0, 0.0, 0.0, 1.0, sd)  # noise is not scaled
        half = acquisition(np.random.default_rng(7), view, 0.5)
        assert half[0] == ang / 2 and half[4] - 1.0 == pytest.approx((gamma - 1.0) / 2, rel=1e-9)


def test_without_nuisance_two_films_of_one_state_differ_by_pixel_noise_only():
    an = Anatomy.draw(np.random.default_rng(1), age=60)
    state = np.array([0.3, 0.2, 0.4, 0.0, 0.2, 0.1, 0.0])

    def gap(nuisance):
        a, b = (render_chest(state, an, "PA", 64, np.random.default_rng(s), nuisance).astype(float) for s in (10, 11))
        return np.abs(a - b).mean()

    # 2 x the largest noise sd (0.035) in grey levels, times E|N(0, 1)| ~ 0.8, bounds the noise-only gap
    assert gap(0.0) < 0.8 * 2 * 0.035 * 255
    assert gap(1.0) > 2 * gap(0.0)


def test_world_nuisance_setting_reaches_the_renderer(tmp_path):
    from ehrxdiff_core.config import SyntheticConfig
    from ehrxdiff_core.synthetic import write_world

    def films(name, **kw):
        write_world(tmp_path / name, SyntheticConfig(patients=2, seed=5, image_px=32, **kw))
        return {p.relative_to(tmp_path / name): p.read_bytes() for p in (tmp_path / name).rglob("*.jpg")}

    full, still = films("full"), films("still", nuisance=0.0)
    assert full.keys() == still.keys() and full  # the same studies: nothing but the films changes
    assert films("default", nuisance=1.0) == full
    assert sum(full[k] != still[k] for k in full) == len(full)


def _atel_film(an: Anatomy, atel: float, effusion: float = 0.0) -> np.ndarray:
    state = np.zeros(7)
    state[[EF, CM, AT, SD]] = effusion, 0.5, atel, 0.02
    return render_chest(state, an, "PA", 64, np.random.default_rng(3), nuisance=0.0).astype(float)


@pytest.mark.parametrize("effusion", [0.0, 0.4])
def test_atelectasis_makes_its_own_lung_base_airless_and_pulls_the_heart_towards_it(effusion):
    for seed in range(6):
        an = Anatomy.draw(np.random.default_rng(seed), age=60)
        diff = _atel_film(an, 0.5, effusion) - _atel_film(an, 0.0, effusion)  # same pose and noise: state only
        left = an.atel_side < 0  # image-left
        base = slice(38, 52)  # lower lung zone, y 0.2 to 0.6
        own, other = (slice(4, 18), slice(48, 60)) if left else (slice(48, 60), slice(4, 18))  # lateral to the heart
        assert diff[base, own].mean() > 8  # grey levels: the collapsed base is visibly denser ...
        assert abs(diff[base, other].mean()) < 1  # ... on its own side only
        # the heart moves towards the collapse: its edge on that side denser, on the other more lucent
        near, far = (slice(18, 28), slice(38, 48)) if left else (slice(38, 48), slice(18, 28))
        heart = slice(42, 50)
        assert diff[heart, near].mean() > 0 > diff[heart, far].mean()


def test_a_small_atelectasis_change_is_larger_than_the_pixel_noise_of_its_region():
    # what a crossing of the 0.35 label threshold looks like: 0.32 -> 0.38 on the same film
    an = Anatomy.draw(np.random.default_rng(2), age=60)
    diff = _atel_film(an, 0.38) - _atel_film(an, 0.32)
    assert np.abs(diff).sum() > 0.035 * 255 * 64  # summed change > the largest noise sd over a 64-pixel row
