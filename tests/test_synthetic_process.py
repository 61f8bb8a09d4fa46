"""The hidden process is causal (treatments move the findings), labels and images follow the findings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.config import SyntheticConfig, TreatmentEffects
from ehrxdiff_core.synthetic import write_world
from ehrxdiff_core.synthetic.labels import study_labels
from ehrxdiff_core.synthetic.process import (
    AT,
    CM,
    CO,
    ED,
    EF,
    FINDINGS,
    PX,
    RANDOM_RATE,
    ROUND_HOURS,
    SD,
    initial_state,
    simulate_course,
    vital_values,
)
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
            rows.append(
                dict(
                    fur="furosemide" in kinds,
                    abx=bool(c.on_abx[t0 : t0 + gap].any()),
                    tube=bool(c.chest_tube[t0 : t0 + gap].any()),
                    intub="intubation" in kinds,
                    d_ed=d[ED],
                    d_ef=d[EF],
                    d_co=d[CO],
                    d_px=d[PX],
                    d_sd=d[SD],
                    ed0=c.state[t0, ED],
                    co0=c.state[t0, CO],
                    px0=c.state[t0, PX],
                )
            )
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
    for name in (
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Pleural Effusion",
        "Pneumonia",
        "Pneumothorax",
        "Support Devices",
        "Lung Opacity",
    ):
        assert pos[names.index(name)] == "1.0", name
    assert pos[names.index("No Finding")] == ""
    neg = study_labels(well, False, np.zeros(3, bool), 0.0, rng)
    assert set(neg) <= {"0.0", "", "1.0"} and neg[names.index("No Finding")] == "1.0"
    assert "1.0" not in [v for n, v in zip(names, neg) if n != "No Finding"]


def test_images_show_findings_at_64_and_256_px():
    an = Anatomy(0.95, 0.58, 1, 0.15, -1, 1)
    base = np.array([0.0, 0.0, 0.0, 0.2, 0.0, 0.0, 0.02])
    for px in (64, 256):

        def img(state, view="PA", seed=0, px=px):
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


# ----------------------------------------------------------------------------- fair-world knobs


def _round_decisions(randomized: float, n_adm: int = 300):
    """(edema at each 4-hourly round, furosemide given in that round, infected) over many admissions."""
    rows = []
    for i in range(n_adm):
        rng = np.random.default_rng([11, i])
        init, infected = initial_state(rng, float(rng.random()))
        c = simulate_course(rng, 48, (1.0, 47.0), init, infected, 1.0, randomized=randomized)
        fur = {int(t.hour // ROUND_HOURS) for t in c.treatments if t.kind == "furosemide"}
        abx = any(t.kind == "antibiotic_start" for t in c.treatments)
        for h in range(0, 48, ROUND_HOURS):
            rows.append(dict(ed=c.state[h, ED], fur=h // ROUND_HOURS in fur, infected=c.infected, abx=abx, adm=i))
    return pd.DataFrame(rows)


def test_randomized_treatment_decouples_decisions_from_the_state():
    for p, expect_dependent in ((0.0, True), (1.0, False)):
        d = _round_decisions(p)
        sick, well = d[d.ed > 0.45].fur.mean(), d[d.ed < 0.2].fur.mean()
        assert (d.ed > 0.45).sum() > 200 and (d.ed < 0.2).sum() > 200
        adm = d.drop_duplicates("adm")
        abx_clean = adm[~adm.infected].abx.mean()
        if expect_dependent:
            assert sick > well + 0.3, (sick, well)
            assert abx_clean == 0.0  # state rule: antibiotics only for an infection
        else:
            assert abs(sick - well) < 0.06, (sick, well)
            assert abs(d.fur.mean() - RANDOM_RATE["furosemide"]) < 0.03
            assert abx_clean > 0.5  # coin flips reach patients without an infection too
    # randomized=0 is the state-driven course, and the coin flips do not shift the caller's generator
    rng_a, rng_b = np.random.default_rng([3, 1]), np.random.default_rng([3, 1])
    init, inf = initial_state(rng_a, 0.4)
    initial_state(rng_b, 0.4)
    a = simulate_course(rng_a, 40, (1.0, 39.0), init, inf, 1.0, randomized=0.0)
    b = simulate_course(rng_b, 40, (1.0, 39.0), init, inf, 1.0)
    assert np.array_equal(a.state, b.state) and rng_a.random() == rng_b.random()


def test_effect_sizes_set_the_state_response():
    """Windows after a furosemide dose lose edema in proportion to `effects.diuretic_edema`."""

    def dose_effect(effects: TreatmentEffects) -> float:
        d_with, d_without = [], []
        for i in range(200):
            rng = np.random.default_rng([13, i])
            init, infected = initial_state(rng, float(rng.random()))
            init[ED] = 0.7  # room to fall
            c = simulate_course(rng, 24, None, init, infected, 1.0, effects, randomized=1.0)
            given = any(t.kind == "furosemide" and t.hour < 8 for t in c.treatments)
            (d_with if given else d_without).append(c.state[12, ED] - c.state[0, ED])
        return float(np.mean(d_with) - np.mean(d_without))

    base = dose_effect(TreatmentEffects())
    none = dose_effect(TreatmentEffects(diuretic_edema=0.0))
    double = dose_effect(TreatmentEffects(diuretic_edema=0.08))
    assert base < -0.1 and abs(none) < 0.05 and double < base - 0.1, (base, none, double)


def test_labels_equal_the_thresholded_state_without_noise():
    rng = np.random.default_rng(1)
    names = CHEXPERT_HEADER[2:]
    idx = {
        "Atelectasis": (AT, 0.35),
        "Cardiomegaly": (CM, 0.55),
        "Consolidation": (CO, 0.4),
        "Edema": (ED, 0.35),
        "Pleural Effusion": (EF, 0.3),
        "Pneumothorax": (PX, 0.2),
        "Support Devices": (SD, 0.5),
    }
    noisy = 0
    for _ in range(300):
        st = rng.random(len(FINDINGS))
        clean = study_labels(st, True, np.zeros(3, bool), 0.0, rng, uncertain_band=0.0, blank_negative_rate=0.0)
        for name, (k, thr) in idx.items():
            assert clean[names.index(name)] == ("1.0" if st[k] > thr else "0.0"), (name, st[k])
        default = study_labels(st, True, np.zeros(3, bool), 0.05, rng)
        noisy += sum(default[names.index(n)] != ("1.0" if st[k] > t else "0.0") for n, (k, t) in idx.items())
    assert noisy > 300  # the defaults blank, blur and flip


def test_world_labels_are_exact_with_a_science_config(tmp_path):
    write_world(
        tmp_path,
        SyntheticConfig(
            patients=15,
            seed=2,
            write_images=False,
            gzip_level=1,
            label_noise=0.0,
            uncertain_band=0.0,
            blank_negative_rate=0.0,
        ),
    )
    truth = pq.read_table(tmp_path / "truth.parquet").to_pandas().drop_duplicates("study_id")
    lab = pd.read_csv(tmp_path / "mimic-cxr-jpg/mimic-cxr-2.0.0-chexpert.csv.gz")
    df = truth.merge(lab, on=["subject_id", "study_id"])
    assert len(df) == len(lab) > 40
    for name, col, thr in (
        ("Edema", "edema", 0.35),
        ("Pleural Effusion", "pleural_effusion", 0.3),
        ("Consolidation", "consolidation", 0.4),
        ("Pneumothorax", "pneumothorax", 0.2),
        ("Atelectasis", "atelectasis", 0.35),
        ("Support Devices", "support_devices", 0.5),
    ):
        assert (df[name] == (df[col] > thr).astype(float)).all(), name


# each dynamic finding → a kept event item (table, label) and how to read its value
READOUTS = {
    "pleural_effusion": ("chartevents", "LLL Lung Sounds", lambda v: (v == "Diminished").astype(float)),
    "edema": ("chartevents", "Central Venous Pressure", None),
    "consolidation": ("labevents", "C-Reactive Protein", None),
    "pneumothorax": ("chartevents", "RUL Lung Sounds", lambda v: (v == "Absent").astype(float)),
    "atelectasis": ("chartevents", "LLL Lung Sounds", lambda v: (v == "Diminished").astype(float)),
    "support_devices": ("procedureevents", ("Invasive Ventilation", "Multi Lumen"), None),  # devices in place
}


def test_every_dynamic_finding_has_a_readout_the_paper_filters_keep(small_world):
    """Near each image, a kept item's value moves with the hidden finding (not only through a dropped lab)."""
    from ehrxdiff_core.data.event_filters import CHART_CATEGORIES, LAB_CATEGORIES, LAB_LABELS, PROCEDURE_CATEGORIES

    root, truth = small_world
    d_items = pd.read_csv(root / "mimiciv/icu/d_items.csv.gz")
    d_lab = pd.read_csv(root / "mimiciv/hosp/d_labitems.csv.gz")
    tables = {}
    for finding, (table, label, read) in READOUTS.items():
        hosp = "hosp" if table == "labevents" else "icu"
        if table not in tables:
            tables[table] = pd.read_csv(root / f"mimiciv/{hosp}/{table}.csv.gz", low_memory=False)
        ev = tables[table]
        xs, ys = [], []
        if table == "procedureevents":  # devices in place: how many procedures' spans hold the image time
            ev = ev[ev.itemid.isin(d_items[d_items.label.isin(label)].itemid)]
            assert len(ev) and ev.ordercategoryname.isin(PROCEDURE_CATEGORIES).all()
            start, end = pd.to_datetime(ev.starttime), pd.to_datetime(ev.endtime)
            for r in truth.itertuples():
                xs.append(float(((ev.hadm_id == r.hadm_id) & (start <= r.time) & (end >= r.time)).sum()))
                ys.append(getattr(r, finding))
            assert np.corrcoef(xs, ys)[0, 1] > 0.5, (finding, label)
            continue
        if table == "labevents":
            item = d_lab[d_lab.label == label].iloc[0]
            assert item.category in LAB_CATEGORIES or item.label in LAB_LABELS, label
        else:
            item = d_items[d_items.label == label].iloc[0]
            assert item.category in CHART_CATEGORIES, label
        ev = ev[ev.itemid == item.itemid]
        t = pd.to_datetime(ev.charttime)
        val = ev.valuenum if read is None else read(ev.value)
        for r in truth.itertuples():  # the item's mean value within 3 h of each image
            near = (ev.hadm_id == r.hadm_id) & ((t - r.time).abs() <= pd.Timedelta(hours=3))
            if near.any():
                xs.append(float(val[near].mean()))
                ys.append(getattr(r, finding))
        assert len(xs) > 40, (finding, len(xs))
        assert np.corrcoef(xs, ys)[0, 1] > 0.3, (finding, label)
