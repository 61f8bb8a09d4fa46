"""AUROC/Pearson on hand-made inputs with known answers, and the All/Diff/Same subset logic."""

from __future__ import annotations

import numpy as np
import pytest

from ehrxdiff_core.evaluation.metrics import auroc, finding_aurocs, pearson, sex_auroc, spearman, subset_masks

nan = np.nan


def test_auroc_perfect_reversed_and_by_hand():
    y = np.array([0, 0, 0, 1, 1, 1])
    assert auroc(np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), y)["value"] == 1.0
    assert auroc(np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1]), y)["value"] == 0.0
    # positives 0.9, 0.4, 0.6 vs negatives 0.5, 0.3, 0.7: 0.9 beats 3, 0.4 beats 1, 0.6 beats 2 -> 6 / 9
    r = auroc(np.array([0.5, 0.3, 0.7, 0.9, 0.4, 0.6]), y)
    assert r["value"] == pytest.approx(6 / 9) and (r["n_pos"], r["n_neg"]) == (3, 3)
    assert auroc(np.array([0.5, 0.5]), np.array([0, 1]))["value"] == 0.5  # a tie counts one half


def test_auroc_one_class_is_undefined_not_a_number():
    r = auroc(np.array([0.2, 0.9, 0.4]), np.array([1, 1, 1]))
    assert r["value"] is None and "one class" in r["reason"] and (r["n_pos"], r["n_neg"]) == (3, 0)
    assert auroc(np.array([]), np.array([]))["value"] is None


def test_subsets_follow_the_paper():
    trg = np.array([[1], [0], [1], [nan], [0]], dtype=float)
    prev = np.array([[1], [1], [nan], [0], [nan]], dtype=float)  # previous NULL counts as 0
    m = subset_masks(trg, prev)
    assert m["all"][:, 0].tolist() == [True, True, True, False, True]  # target NULL excluded
    assert m["diff"][:, 0].tolist() == [False, True, True, False, False]
    assert m["same"][:, 0].tolist() == [True, False, False, False, True]
    assert not (m["diff"] & m["same"]).any() and ((m["diff"] | m["same"]) == m["all"]).all()


def test_finding_aurocs_per_label_micro_macro_and_undefined():
    labels = ("a", "b")
    trg = np.array([[1, 1], [0, 1], [1, 1], [0, 1]], dtype=float)  # label b: positives only
    prev = np.array([[1, 1], [1, 1], [0, 1], [0, 1]], dtype=float)
    probs = np.array([[0.9, 0.2], [0.1, 0.3], [0.8, 0.9], [0.3, 0.4]])
    res = finding_aurocs(probs, trg, prev, labels)
    a_all, b_all = res["all"]["per_label"]["a"], res["all"]["per_label"]["b"]
    assert a_all["value"] == 1.0 and (a_all["n_pos"], a_all["n_neg"]) == (2, 2)
    assert b_all["value"] is None and "reason" in b_all
    macro = res["all"]["macro"]
    assert macro["value"] == 1.0 and macro["n_labels"] == 1 and macro["undefined_labels"] == ["b"]  # b excluded
    # micro pools both labels: positives 0.9 0.8 0.2 0.3 0.9 0.4 vs negatives 0.1 0.3
    pos, neg = [0.9, 0.8, 0.2, 0.3, 0.9, 0.4], [0.1, 0.3]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert res["all"]["micro"]["value"] == pytest.approx(wins / 12)
    # Diff for a: rows 1 (0 vs 1) and 2 (1 vs 0); Same: rows 0 and 3
    assert (res["diff"]["per_label"]["a"]["n_pos"], res["diff"]["per_label"]["a"]["n_neg"]) == (1, 1)
    assert res["diff"]["per_label"]["a"]["value"] == 1.0
    assert res["diff"]["per_label"]["b"]["value"] is None  # nothing changed for b
    assert res["same"]["per_label"]["a"]["value"] == 1.0
    # no label defined at all -> macro undefined with a reason
    none = finding_aurocs(probs[:, 1:], trg[:, 1:], prev[:, 1:], ("b",))
    assert none["all"]["macro"]["value"] is None and "reason" in none["all"]["macro"]


def test_finding_aurocs_shape_mismatch():
    with pytest.raises(ValueError, match="shape mismatch"):
        finding_aurocs(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)), ("a",))


def test_sex_auroc_excludes_unknown_gender():
    r = sex_auroc(np.array([0.9, 0.1, 0.8, 0.5]), ["M", "F", "M", None])
    assert r["value"] == 1.0 and r["n_excluded"] == 1 and (r["n_pos"], r["n_neg"]) == (2, 1)
    assert sex_auroc(np.array([0.9, 0.8]), ["M", "M"])["value"] is None


def test_pearson_and_spearman_known_values():
    assert pearson([1, 2, 3, 4], [2, 4, 6, 8])["value"] == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [8, 6, 4, 2])["value"] == pytest.approx(-1.0)
    # x = 1,2,3 and y = 1,3,2: deviations (-1,0,1)·(-1,1,0) = 1; norms sqrt(2)·sqrt(2) -> r = 0.5
    assert pearson([1, 2, 3], [1, 3, 2])["value"] == pytest.approx(0.5)
    assert pearson([1, 2, nan, 3], [1, 3, 5, 2])["n"] == 3  # NaN pairs dropped
    assert pearson([1, 1, 1], [1, 2, 3])["value"] is None
    assert pearson([1, 2], [1, 2])["value"] is None
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16])["value"] == pytest.approx(1.0)


def test_rank_auroc_matches_sklearn_with_ties():
    from ehrxdiff_core.evaluation.metrics import rank_auroc

    rng = np.random.default_rng(0)
    scores, y = rng.integers(0, 5, 40).astype(float), rng.integers(0, 2, 40).astype(float)
    assert rank_auroc(scores, y) == pytest.approx(auroc(scores, y)["value"])


def test_macro_over_a_fixed_label_set_is_undefined_when_a_member_is():
    from ehrxdiff_core.evaluation.metrics import macro_over

    per = {"a": {"value": 0.8}, "b": {"value": None}, "c": {"value": 0.6}}
    assert macro_over(per, None)["value"] == pytest.approx(0.7) and macro_over(per, None)["label_set"] == ["a", "c"]
    assert macro_over(per, ["a", "c"])["value"] == pytest.approx(0.7)
    fixed = macro_over(per, ["a", "b"])
    assert fixed["value"] is None and "['b']" in fixed["reason"] and fixed["fixed"]
    assert macro_over(per, [])["value"] is None and "empty" in macro_over(per, [])["reason"]
