"""Known answers for the truth-based metrics, the fixed label sets and the paired comparisons.

A hand-built test set with hidden severities and noise-free labels, scored by "models" whose values
are known in advance: the target itself, a copy of the previous state, and noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from ehrxdiff_core.evaluation import comparisons
from ehrxdiff_core.evaluation.metrics import crossing_auroc, partial_correlation
from ehrxdiff_core.evaluation.truth import PairTruth

LABELS = ("edema", "pleural_effusion", "cardiomegaly")
THR = {"edema": 0.35, "pleural_effusion": 0.3, "cardiomegaly": 0.55}


def world(n_patients: int = 120, pairs_per_patient: int = 5, seed: int = 0):
    """Hidden severities of previous/target images; edema and effusion change, cardiomegaly does not."""
    rng = np.random.default_rng(seed)
    n = n_patients * pairs_per_patient
    prev = rng.uniform(0, 1, (n, 3))
    trg = np.clip(prev + np.column_stack([rng.normal(0, 0.3, n), rng.normal(0, 0.3, n), np.zeros(n)]), 0, 1)
    labels = lambda s: (s > np.array([THR[l] for l in LABELS])).astype(float)  # noqa: E731
    groups = np.repeat(np.arange(n_patients), pairs_per_patient)
    change = {}
    for j, f in enumerate(LABELS):
        d = np.abs(trg[:, j] - prev[:, j])
        change[f] = {
            "mean_abs_change": float(d.mean()),
            "dynamic": bool(d.mean() >= 0.02),
            "n_pairs": n,
            "n_cross_up": int(((prev[:, j] <= THR[f]) & (trg[:, j] > THR[f])).sum()),
            "n_cross_down": int(((prev[:, j] > THR[f]) & (trg[:, j] <= THR[f])).sum()),
            "threshold": THR[f],
        }
    truth = PairTruth(list(LABELS), dict(THR), prev, trg, change, n)
    return prev, trg, labels(prev), labels(trg), groups, truth, rng


def test_partial_correlation_known_values():
    rng = np.random.default_rng(1)
    prev = rng.uniform(0, 1, 300)
    true = 0.5 - prev + rng.normal(0, 0.2, 300)  # regression to the mean: change depends on the previous state
    assert partial_correlation(true, true, prev)["value"] == pytest.approx(1.0)
    assert partial_correlation(-true, true, prev)["value"] == pytest.approx(-1.0)
    # a prediction that only knows the previous state (a degraded copy) explains nothing beyond it
    r = partial_correlation(0.5 - prev, true, prev)
    assert r["value"] == 0.0 and "no predicted change" in r["note"]
    copy = partial_correlation(np.zeros(300), true, prev)
    assert copy["value"] == 0.0
    noise = partial_correlation(rng.normal(size=300), true, prev)["value"]
    assert abs(noise) < 0.15
    assert partial_correlation([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0])["value"] is None  # too few points


def test_crossing_auroc_known_values():
    prev, trg, *_ = world()
    j, thr = 0, THR["edema"]
    assert crossing_auroc(trg[:, j], prev[:, j], trg[:, j], thr)["value"] == 1.0  # the target itself
    assert crossing_auroc(prev[:, j], prev[:, j], trg[:, j], thr)["value"] == 0.0  # a copy shows the opposite state
    r = crossing_auroc(np.random.default_rng(5).random(len(prev)), prev[:, j], trg[:, j], thr)
    assert 0.35 < r["value"] < 0.65 and r["n_pos"] >= 20 and r["n_neg"] >= 20


def test_fixed_label_sets_follow_counts_and_dynamics():
    prev, trg, yp, yt, groups, truth, _ = world()
    sets = comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 20, 20)
    assert truth.dynamic == ["edema", "pleural_effusion"]  # cardiomegaly never changes
    assert set(sets["diff"]) == {"edema", "pleural_effusion"} and "cardiomegaly" not in sets["all"]
    assert comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 10_000, 20) == {
        "all": [],
        "diff": [],
        "same": [],
    }
    assert comparisons.truth_label_sets(truth, 20, 20) == {
        "partial_r": ["edema", "pleural_effusion"],
        "crossing_auroc": ["edema", "pleural_effusion"],
    }
    few = comparisons.truth_label_sets(truth, 150, 150)  # crossings are rarer than pairs
    assert few["crossing_auroc"] == [] and few["partial_r"] == ["edema", "pleural_effusion"]


def test_headline_values_and_comparisons_of_known_models():
    prev, trg, yp, yt, groups, truth, rng = world()
    sets = comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 20, 20)
    data = comparisons.HeadlineData(LABELS, yt, yp, sets, truth, comparisons.truth_label_sets(truth, 20, 20))
    noise = rng.random(prev.shape)
    methods = {"target": (trg, trg - prev), "copy": (prev, np.zeros_like(prev)), "noise": (noise, noise - prev)}
    idx = np.arange(len(prev))
    v = {name: comparisons.headline_values(data, p, c, idx) for name, (p, c) in methods.items()}
    assert v["target"]["auroc_diff_macro"] == 1.0 and v["copy"]["auroc_diff_macro"] == 0.0
    assert v["target"]["auroc_same_macro"] == 1.0 and v["copy"]["auroc_same_macro"] == 1.0
    assert v["target"]["truth_partial_r_macro"] == pytest.approx(1.0) and v["copy"]["truth_partial_r_macro"] == 0.0
    assert v["target"]["truth_crossing_auroc_macro"] == 1.0 and v["copy"]["truth_crossing_auroc_macro"] == 0.0
    assert abs(v["noise"]["truth_partial_r_macro"]) < 0.15 and 0.35 < v["noise"]["auroc_diff_macro"] < 0.65

    boot = comparisons.bootstrap(data, methods, groups, 300, seed=0)
    comps = comparisons.compare("target", ["copy", "noise"], v, boot, 300, 120)
    by = {(k, e["metric"]): e for k, entries in comps.items() for e in entries}
    e = by[("target_vs_copy", "auroc_diff_macro")]
    assert e["delta"] == 1.0 and e["ci95"] == [1.0, 1.0] and e["verdict"] == "better" and e["n_valid"] == 300
    assert by[("target_vs_copy", "truth_partial_r_macro")]["verdict"] == "better"
    # the same-subset: both perfect, so no significant difference (an interval at exactly 0)
    same = by[("target_vs_copy", "auroc_same_macro")]
    assert same["delta"] == 0.0 and same["verdict"] == "no significant difference"
    assert by[("target_vs_noise", "truth_crossing_auroc_macro")]["ci95"][0] > 0.3
    # swapping the roles flips the verdict
    rev = comparisons.compare("copy", ["target"], v, boot, 300, 120)["copy_vs_target"]
    assert {x["metric"]: x["verdict"] for x in rev}["auroc_diff_macro"] == "worse"
    # noise vs noise on a different draw: an interval straddling 0
    noise2 = rng.random(prev.shape)
    methods2 = {"noise": (noise, noise - prev), "noise2": (noise2, noise2 - prev)}
    v2 = {name: comparisons.headline_values(data, p, c, idx) for name, (p, c) in methods2.items()}
    b2 = comparisons.bootstrap(data, methods2, groups, 300, seed=1)
    entries = comparisons.compare("noise", ["noise2"], v2, b2, 300, 120)["noise_vs_noise2"]
    assert {x["metric"]: x["verdict"] for x in entries}["truth_crossing_auroc_macro"] == "no significant difference"


def test_verdicts_follow_the_interval():
    assert comparisons.verdict([0.01, 0.2]) == "better"
    assert comparisons.verdict([-0.2, -0.01]) == "worse"
    assert comparisons.verdict([-0.01, 0.2]) == "no significant difference"
    assert comparisons.verdict([0.0, 0.2]) == "no significant difference"
    assert comparisons.verdict(None) == "not computable"


def test_one_patient_gives_no_interval():
    prev, trg, yp, yt, groups, truth, _ = world(n_patients=1, pairs_per_patient=600)
    sets = comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 20, 20)
    data = comparisons.HeadlineData(LABELS, yt, yp, sets, truth, comparisons.truth_label_sets(truth, 20, 20))
    methods = {"target": (trg, trg - prev), "copy": (prev, np.zeros_like(prev))}
    v = {n: comparisons.headline_values(data, p, c, np.arange(len(prev))) for n, (p, c) in methods.items()}
    boot = comparisons.bootstrap(data, methods, groups, 50, seed=0)
    e = comparisons.compare("target", ["copy"], v, boot, 50, 1)["target_vs_copy"][0]
    assert e["ci95"] is None and e["verdict"] == "not computable" and "fewer than 2 patients" in e["reason"]


def test_each_method_gets_its_own_interval():
    """The target (an oracle) has partial r 1 on every resample, the copy 0; every interval holds its value."""
    prev, trg, yp, yt, groups, truth, rng = world()
    sets = comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 20, 20)
    data = comparisons.HeadlineData(LABELS, yt, yp, sets, truth, comparisons.truth_label_sets(truth, 20, 20))
    noisy = np.clip(trg + rng.normal(0, 0.15, trg.shape), 0, 1)
    methods = {"target": (trg, trg - prev), "copy": (prev, np.zeros_like(prev)), "noisy": (noisy, noisy - prev)}
    v = {n: comparisons.headline_values(data, p, c, np.arange(len(prev))) for n, (p, c) in methods.items()}
    boot = comparisons.bootstrap(data, methods, groups, 300, seed=0)
    iv = comparisons.intervals(v, boot, 300, 120)
    assert set(iv) == set(methods) and all(set(x) == set(comparisons.HEADLINE_METRICS) for x in iv.values())
    pr = iv["target"]["truth_partial_r_macro"]
    assert pr["ci95"] == [pytest.approx(1.0), pytest.approx(1.0)] and pr["n_valid"] == 300 and pr["n_boot"] == 300
    assert iv["copy"]["truth_partial_r_macro"]["ci95"] == [0.0, 0.0]
    assert iv["copy"]["truth_crossing_auroc_macro"]["ci95"] == [0.0, 0.0]
    for name, per_metric in iv.items():
        for metric, e in per_metric.items():
            assert e["value"] == v[name][metric]
            assert e["ci95"][0] <= e["value"] <= e["ci95"][1], (name, metric, e)
    # a noisy predictor: a real spread, narrower with more patients (the interval is patient-level)
    lo, hi = iv["noisy"]["truth_crossing_auroc_macro"]["ci95"]
    assert 0 < hi - lo < 0.2 and lo > 0.5
    # the comparisons are unchanged by scoring more methods on the same resamples (paired draws)
    pair_only = comparisons.bootstrap(data, {k: methods[k] for k in ("target", "copy")}, groups, 300, seed=0)
    assert np.array_equal(pair_only["copy"]["auroc_all_macro"], boot["copy"]["auroc_all_macro"])


def test_intervals_say_why_when_missing():
    prev, trg, yp, yt, groups, truth, _ = world()
    sets = comparisons.fixed_label_sets(yt, yp, LABELS, truth.dynamic, 20, 20)
    data = comparisons.HeadlineData(LABELS, yt, yp, sets, truth, comparisons.truth_label_sets(truth, 20, 20))
    methods = {"target": (trg, trg - prev)}
    v = {"target": comparisons.headline_values(data, trg, trg - prev, np.arange(len(prev)))}
    off = comparisons.intervals(v, comparisons.bootstrap(data, methods, groups, 0, seed=0), 0, 120)
    e = off["target"]["auroc_diff_macro"]
    assert e["value"] == 1.0 and e["ci95"] is None and "evaluate.bootstrap: 0" in e["reason"]
    one = comparisons.intervals(v, comparisons.bootstrap(data, methods, np.zeros(len(prev)), 50, seed=0), 50, 1)
    assert "fewer than 2 patients" in one["target"]["auroc_all_macro"]["reason"]
    # a metric undefined on the full sample (no truth) has no value and says so
    no_truth = comparisons.HeadlineData(LABELS, yt, yp, sets)
    v2 = {"target": comparisons.headline_values(no_truth, trg, None, np.arange(len(prev)))}
    b2 = comparisons.bootstrap(no_truth, {"target": (trg, None)}, groups, 50, seed=0)
    e2 = comparisons.intervals(v2, b2, 50, 120)["target"]["truth_partial_r_macro"]
    assert e2["value"] is None and e2["ci95"] is None and e2["reason"] == "undefined on the full sample"
