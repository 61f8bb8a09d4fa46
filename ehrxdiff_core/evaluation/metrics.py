"""Preservation metrics: AUROC per finding on All/Diff/Same subsets, sex AUROC, age Pearson r.

A score that cannot be computed (one class only, too few points) is `None` with a reason, never a
number, so a table can never show a made-up 0.5.
"""

from __future__ import annotations

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

SUBSETS = ("all", "diff", "same")


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


def finding_aurocs(probs: np.ndarray, trg: np.ndarray, prev: np.ndarray, labels: tuple[str, ...]) -> dict:
    """AUROC of the evaluator's probabilities against the *target's* labels, per label and micro/macro."""
    probs, trg, prev = (np.asarray(a, dtype=np.float64) for a in (probs, trg, prev))
    if not (probs.shape == trg.shape == prev.shape == (probs.shape[0], len(labels))):
        raise ValueError(f"shape mismatch: probs {probs.shape}, target {trg.shape}, previous {prev.shape}, {len(labels)} labels")
    result = {}
    for name, mask in subset_masks(trg, prev).items():
        per_label = {l: auroc(probs[mask[:, j], j], trg[mask[:, j], j]) for j, l in enumerate(labels)}
        micro = auroc(probs[mask], trg[mask])
        defined = {l: r["value"] for l, r in per_label.items() if r["value"] is not None}
        macro: dict = {"value": float(np.mean(list(defined.values()))) if defined else None, "n_labels": len(defined),
                       "undefined_labels": [l for l in labels if l not in defined]}
        if not defined:
            macro["reason"] = "no label has both classes in this subset"
        result[name] = {"per_label": per_label, "micro": micro, "macro": macro, "n_scored": int(mask.sum())}
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


def _rank_auroc(scores: np.ndarray, y: np.ndarray) -> float | None:
    """Mann-Whitney AUROC (ties count one half), equal to roc_auc_score; None with one class."""
    n_pos = int((y == 1).sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(scores)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _subset_macro(probs: np.ndarray, trg: np.ndarray, mask: np.ndarray) -> float | None:
    values = [_rank_auroc(probs[mask[:, j], j], trg[mask[:, j], j]) for j in range(trg.shape[1])]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def bootstrap_macro_delta(probs_model: np.ndarray, probs_base: np.ndarray, trg: np.ndarray, prev: np.ndarray,
                          groups, subset: str = "diff", n_boot: int = 200, seed: int = 0) -> dict:
    """Paired patient-level bootstrap of macro AUROC(model) - macro AUROC(baseline) on one subset.

    Patients are resampled (pairs of one patient are correlated); each resample scores both methods on
    the same pairs. A resample where either macro is undefined is skipped and counted.
    """
    trg, prev = np.asarray(trg, dtype=np.float64), np.asarray(prev, dtype=np.float64)
    mask = subset_masks(trg, prev)[subset]
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    out: dict = {"subset": subset, "n_boot": n_boot, "resampling": "patients, paired", "n_patients": len(members), "seed": seed}
    if n_boot == 0 or len(members) < 2:
        out.update(ci95=None, reason="bootstrap disabled" if n_boot == 0 else "fewer than 2 patients")
        return out
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        a = _subset_macro(probs_model[idx], trg[idx], mask[idx])
        b = _subset_macro(probs_base[idx], trg[idx], mask[idx])
        if a is not None and b is not None:
            deltas.append(a - b)
    out["n_valid"] = len(deltas)
    if len(deltas) < max(10, n_boot // 4):
        out.update(ci95=None, reason=f"only {len(deltas)} of {n_boot} resamples had both macros defined")
        return out
    d = np.asarray(deltas)
    out.update(ci95=[float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))], fraction_delta_le_0=float((d <= 0).mean()))
    return out
