"""The hidden process is causal (treatments move the findings), labels and images follow the findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.config import SyntheticConfig
from ehrxdiff_core.synthetic import write_world
from ehrxdiff_core.synthetic.labels import study_labels
from ehrxdiff_core.synthetic.process import (
    CM, CO, ED, EF, FINDINGS, PX, SD, initial_state, simulate_course, vital_values)
from ehrxdiff_core.synthetic.render import Anatomy, render_chest
from ehrxdiff_core.synthetic.vocab import CHEXPERT_HEADER


def _windows(effect: float, n_adm: int = 250, gap: int = 24):
    """(Δ finding over a 24 h window, treatments given inside it) over many simulated admissions."""
    rows = []
    for i in range(n_adm):
        rng = np.random.default_rng([7, i])
        init, infected = initial_state(rng, float(rng.random()))
        c = simulate_course(rng, 96, (1.0, 95.0), init, infected, effect)
        for t0 in range(0, 96 - gap, 12):
            kinds = {t.kind for t in c.treatments if t0 <= t.hour < t0 + gap}
            d = c.state[t0 + gap] - c.state[t0]
            rows.append(dict(fur="furosemide" in kinds, abx=bool(c.on_abx[t0:t0 + gap].any()),
                             tube=bool(c.chest_tube[t0:t0 + gap].any()), intub="intubation" in kinds,
                             d_ed=d[ED], d_ef=d[EF], d_co=d[CO], d_px=d[PX], d_sd=d[SD],
                             ed0=c.state[t0, ED], co0=c.state[t0, CO], px0=c.state[t0, PX]))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def windows():
    return _windows(1.0), _windows(0.0)


def test_diuretic_shrinks_edema_and_effusion(windows):
    w, w0 = windows
    assert w.fur.sum() > 50 and (~w.fur).sum() > 50
    effect = w[w.fur].d_ed.mean() - w[~w.fur].d_ed.mean()
    effect0 = w0[w0.fur].d_ed.mean() - w0[~w0.fur].d_ed.mean()
    assert effect < -0.15, effect
    assert effect < effect0 - 0.15  # the difference comes from the treatment, not from who gets it
    assert w[w.fur].d_ef.mean() < w[~w.fur].d_ef.mean() - 0.05


def test_antibiotics_clear_consolidation_and_tubes_resolve_pneumothorax(windows):
    w, w0 = windows
    sick = w[w.co0 > 0.3]
    assert sick[sick.abx].d_co.mean() < -0.2
    sick0 = w0[w0.co0 > 0.3]
    assert sick0[sick0.abx].d_co.mean() > sick[sick.abx].d_co.mean() + 0.2
    ptx = w[w.px0 > 0.3]
    assert ptx.tube.any() and ptx[ptx.tube].d_px.mean() < -0.25
    assert (w[w.intub].d_sd > 0.5).mean() > 0.8  # intubation puts a device on the film


def test_vitals_reflect_state():
    rng = np.random.default_rng(0)
    well = np.tile([0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0], (500, 1))
    sick = well.copy()
    sick[:, ED], sick[:, CO] = 0.9, 0.9
    no = np.zeros(500, bool)
    assert vital_values("spo2", sick, no, no, rng).mean() < vital_values("spo2", well, no, no, rng).mean() - 5
    assert vital_values("rr", sick, no, no, rng).mean() > vital_values("rr", well, no, no, rng).mean() + 5


def test_labels_follow_thresholds():
    rng = np.random.default_rng(0)
    sick = np.array([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.95])
    well = np.array([0.0, 0.0, 0.0, 0.1, 0.0, 0.0, 0.02])
    names = CHEXPERT_HEADER[2:]
    pos = study_labels(sick, True, np.zeros(3, bool), 0.0, rng)
    for name in ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumonia",
                 "Pneumothorax", "Support Devices", "Lung Opacity"):
        assert pos[names.index(name)] == "1.0", name
    assert pos[names.index("No Finding")] == ""
    neg = study_labels(well, False, np.zeros(3, bool), 0.0, rng)
    assert set(neg) <= {"0.0", "", "1.0"} and neg[names.index("No Finding")] == "1.0"
    assert "1.0" not in [v for n, v in zip(names, neg) if n != "No Finding"]


def test_images_show_findings_at_64_and_256_px():
    an = Anatomy(0.95, 0.58, 1, 0.15, -1, 1)
    base = np.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.02])
    for px in (64, 256):
        def img(state, view="PA", seed=0):
            return render_chest(state, an, view, px, np.random.default_rng(seed)).astype(float)

        clean = img(base)
        assert clean.shape == (px, px)
        # same findings, different nuisance draws: smaller change than any finding makes
        nuisance = np.abs(img(base, seed=1) - img(base, seed=2)).mean()
        for k in (EF, ED, CO, CM, PX, SD):
            s = base.copy()
            s[k] = 0.95
            diff = np.abs(img(s) - clean).mean()
            assert diff > 1.0, (px, FINDINGS[k], diff)
        lower = slice(px // 2, px)
        eff = base.copy()
        eff[EF] = 0.9
        assert img(eff)[lower].mean() > clean[lower].mean() + 5  # fluid is bright at the bases
        ptx = base.copy()
        ptx[PX] = 0.9
        assert img(ptx).mean() < clean.mean()  # lucent rim
        assert nuisance > 1.0  # nuisance exists


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_process")
    write_world(root, SyntheticConfig(patients=60, seed=5, write_images=False))
    truth = pq.read_table(root / "truth.parquet").to_pandas()
    truth = truth[truth.view.isin(["AP", "PA"]) & truth.hadm_id.notna()].drop_duplicates("study_id")
    return root, truth.sort_values(["hadm_id", "time"]).reset_index(drop=True)


def test_furosemide_between_images_predicts_less_edema(small_world):
    """The events written to the CSVs (not the simulator's log) explain the change between two images."""
    root, truth = small_world
    rx = pd.read_csv(root / "mimiciv/hosp/prescriptions.csv.gz", parse_dates=["starttime"])
    fur = rx[rx.drug == "Furosemide"]
    prev = truth.groupby("hadm_id").shift(1)
    pairs = truth.assign(t0=prev.time, e0=prev.edema)[truth.hadm_id.eq(truth.hadm_id.shift(1))]
    given = [((fur.hadm_id == p.hadm_id) & fur.starttime.between(p.t0, p.time)).any() for p in pairs.itertuples()]
    d = (pairs.edema - pairs.e0).to_numpy()
    given = np.array(given)
    assert given.sum() > 15 and (~given).sum() > 15
    assert d[given].mean() < d[~given].mean() - 0.1


def test_label_changes_between_images_are_frequent(small_world):
    """Consecutive frontal images of one admission often differ in a label (the Diff subset is not empty)."""
    root, truth = small_world
    lab = pd.read_csv(root / "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz")
    df = truth.merge(lab, on=["subject_id", "study_id"]).sort_values(["hadm_id", "time"])
    cols = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion", "Pneumothorax"]
    vals = df[cols].fillna(0.0).replace(-1.0, np.nan)
    prev = vals.groupby(df.hadm_id).shift(1)
    has_prev = df.hadm_id.eq(df.hadm_id.shift(1))
    changed = ((vals != prev) & vals.notna() & prev.notna()).any(axis=1)[has_prev]
    assert len(changed) > 40
    assert 0.25 < changed.mean() < 0.95
