"""Sex and age leave visible traces in the rendered images (so demographic preservation is measurable)."""

from __future__ import annotations

import numpy as np

from ehrxdiff_core.synthetic.render import Anatomy, render_chest


def _img(female: bool, age: float, seed: int = 0) -> np.ndarray:
    an = Anatomy.draw(np.random.default_rng(seed), female=female, age=age)
    return render_chest(np.zeros(7), an, "PA", 64, np.random.default_rng(seed + 100)).astype(float)


def test_breast_shadows_brighten_lower_zones_of_female_images():
    diffs = [(_img(True, 50, s)[40:56].mean() - _img(False, 50, s)[40:56].mean()) for s in range(5)]
    assert min(diffs) > 0


def test_aortic_knob_brighter_with_age():
    diffs = [(_img(False, 85, s)[12:22, 24:34].mean() - _img(False, 30, s)[12:22, 24:34].mean()) for s in range(5)]
    assert np.mean(diffs) > 0
