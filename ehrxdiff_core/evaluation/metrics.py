"""Preservation metrics: AUROC per finding on All/Diff/Same subsets, sex AUROC, age Pearson r, and the
truth-based change metrics of the synthetic world (partial correlation of predicted and true change,
AUROC on pairs whose hidden state crossed the label threshold).

A score that cannot be computed (one class only, too few points) is `None` with a reason, never a
number, so a table can never show a made-up 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score


def auroc(scores: np.ndarray, y: np.ndarray) -> dict:
    """AUROC with its counts; undefined (value None + reason) when a class is absent."""
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    out: dict = {"value": None, "n_pos": n_pos, "n_neg": n_neg}
    if n_pos == 0 or n_neg == 0:
        out["reason"] = f"only one class present ({n_pos} positive, {n_neg} negative)"
        return out
    out["value"] = float(roc_auc_score(y, scores))
    return out


def subset_masks(trg: np.ndarray, prev: np.ndarray) -> dict[str, np.ndarray]:
    """Per-label masks (N, L): target NULL excluded; previous NULL counts as 0, as in the paper."""
    valid = ~np.isnan(trg)
    prev0 = np.nan_to_num(prev, nan=0.0)
    with np.errstate(invalid="ignore"):
        diff = valid & (trg != prev0)
        same = valid & (trg == prev0)
    return {"all": valid, "diff": diff, "same": same}


def macro_over(per_label: dict[str, dict], label_set: list[str] | None) -> dict:
    """Mean of the per-label values over `label_set`, a set fixed before scoring (None: every defined label).

    With a fixed set, the macro is undefined when any member is undefined, so two methods (or two
    bootstrap resamples) are never averaged over different labels.
    """
    if label_set is None:
        chosen = [l for l, r in per_label.items() if r["value"] is not None]
        undefined = [l for l, r in per_label.items() if r["value"] is None]
        out: dict = {
            "value": None,
            "n_labels": len(chosen),
            "label_set": chosen,
            "fixed": False,
            "undefined_labels": undefined,
        }
        if not chosen:
            out["reason"] = "no label has both classes in this subset"
            return out
    else:
        chosen = list(label_set)
        undefined = [l for l in chosen if per_label[l]["value"] is None]
        out = {
            "value": None,
            "n_labels": len(chosen),
            "label_set": chosen,
            "fixed": True,
            "undefined_labels": undefined,
        }
        if not chosen:
            out["reason"] = "the fixed label set is empty (no label met the minimum counts)"
            return out
        if undefined:
            out["reason"] = f"undefined for {undefined} of the fixed label set"
            return out
    out["value"] = float(np.mean([per_label[l]["value"] for l in chosen]))
    return out


def finding_aurocs(
    probs: np.ndarray,
    trg: np.ndarray,
    prev: np.ndarray,
    labels: tuple[str, ...],
    label_sets: dict[str, list[str]] | None = None,
) -> dict:
    """AUROC of the evaluator's probabilities against the *target's* labels, per label, micro and macro.

    `label_sets` fixes, per subset, the labels the macro averages over (see `comparisons.fixed_label_sets`).
    """
    probs, trg, prev = (np.asarray(a, dtype=np.float64) for a in (probs, trg, prev))
    if not (probs.shape == trg.shape == prev.shape == (probs.shape[0], len(labels))):
        raise ValueError(
            f"shape mismatch: probs {probs.shape}, target {trg.shape}, previous {prev.shape}, {len(labels)} labels"
        )
    result = {}
    for name, mask in subset_masks(trg, prev).items():
        keep = mask & ~np.isnan(probs)
        per_label = {l: auroc(probs[keep[:, j], j], trg[keep[:, j], j]) for j, l in enumerate(labels)}
        micro = auroc(probs[keep], trg[keep])
        macro = macro_over(per_label, None if label_sets is None else label_sets[name])
        result[name] = {"per_label": per_label, "micro": micro, "macro": macro, "n_scored": int(keep.sum())}
    return result


def sex_auroc(p_male: np.ndarray, gender) -> dict:
    """AUROC of P(male) against recorded gender ('M' = 1, 'F' = 0; anything else excluded)."""
    g = np.asarray(gender, dtype=object)
    y = np.where(g == "M", 1.0, np.where(g == "F", 0.0, np.nan))
    keep = ~np.isnan(y)
    out = auroc(np.asarray(p_male)[keep], y[keep])
    out["n_excluded"] = int((~keep).sum())
    return out


def _correlation(x: np.ndarray, y: np.ndarray, fn) -> dict:
    """A scipy correlation over finite pairs; undefined below 3 points or for a constant input."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out: dict = {"value": None, "n": int(keep.sum())}
    if len(x) < 3:
        out["reason"] = f"fewer than 3 points ({len(x)})"
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        out["reason"] = "constant input"
    else:
        res = fn(x, y)
        out.update(value=float(res.statistic), p_value=float(res.pvalue))
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson r over finite pairs (age preservation)."""
    return _correlation(x, y, stats.pearsonr)


def spearman(x: np.ndarray, y: np.ndarray) -> dict:
    """Spearman rho over finite pairs (evaluator vs hidden severities)."""
    return _correlation(x, y, stats.spearmanr)


def partial_correlation(pred_change: np.ndarray, true_change: np.ndarray, control: np.ndarray) -> dict:
    """Pearson r of predicted and true change after regressing both on the previous state (1, c, c²).

    Controlling for the previous state removes what any copy-like method gets for free: regression to
    the mean makes the true change depend on the previous severity. A prediction with no change (a
    copy) carries no information about the change: its value is 0 with a note, not undefined.
    """
    x, y, c = (np.asarray(a, dtype=np.float64) for a in (pred_change, true_change, control))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(c)
    x, y, c = x[keep], y[keep], c[keep]
    out: dict = {"value": None, "n": int(keep.sum())}
    if len(x) < 4:
        out["reason"] = f"fewer than 4 points ({len(x)})"
        return out
    rx, ry = _residual(x, c), _residual(y, c)
    sx, sy = np.sqrt(rx @ rx), np.sqrt(ry @ ry)
    if sy <= 1e-12 * max(1.0, np.abs(y).max()):
        out["reason"] = "the true change is constant given the previous state"
        return out
    if sx <= 1e-12 * max(1.0, np.abs(x).max()):
        out.update(value=0.0, note="no predicted change beyond the previous state (constant): no information, set to 0")
        return out
    out["value"] = float(np.clip(rx @ ry / (sx * sy), -1.0, 1.0))
    return out


def _residual(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    """`v` minus its least-squares fit on [1, c, c²]: the quadratic term also removes the curved link
    that a sigmoid-like evaluator leaves between a degraded copy's score and the previous state."""
    design = np.column_stack([np.ones_like(c), c - c.mean(), (c - c.mean()) ** 2])
    gram = design.T @ design
    coef = np.linalg.lstsq(gram, design.T @ v, rcond=None)[0]
    return v - design @ coef


def crossing_auroc(scores: np.ndarray, sev_prev: np.ndarray, sev_trg: np.ndarray, threshold: float) -> dict:
    """AUROC on the pairs whose hidden severity crossed the label threshold between the two images.

    Positive = the finding appeared (target above the threshold), negative = it resolved. Free of label
    noise, and a copy of the previous image scores near 0 here because it shows the opposite state.
    """
    p, t = np.asarray(sev_prev, dtype=np.float64), np.asarray(sev_trg, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    crossed = np.isfinite(p) & np.isfinite(t) & np.isfinite(s) & ((p > threshold) != (t > threshold))
    return auroc(s[crossed], (t[crossed] > threshold).astype(np.float64))


def rank_auroc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Mann-Whitney AUROC (ties count one half), equal to roc_auc_score; None with one class.

    Written with `np.unique` instead of scipy's rankdata: the bootstrap calls it ~10^5 times.
    """
    y = np.asarray(y)
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    ranks = mean_rank[inverse]
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
