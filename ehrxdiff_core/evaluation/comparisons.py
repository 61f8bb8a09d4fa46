"""Honest comparisons: label sets fixed before resampling, a paired patient-level bootstrap shared by
every method, and verdicts that follow the 95 % interval.

Each headline metric is a function of the pairs scored (`HeadlineData` + an index array), so the same
code gives the full-sample value and every resample's. A comparison `<model>_vs_<control>` is the
model's value minus the control's; its interval is the 2.5-97.5 % quantile of that difference over
resamples of *patients* (their pairs are correlated), drawn once and shared by all methods (paired).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ehrxdiff_core.evaluation.metrics import partial_correlation, rank_auroc, subset_masks
from ehrxdiff_core.evaluation.truth import PairTruth

SUBSETS = ("diff", "all", "same")  # the headline order; always reported together
HEADLINE_METRICS = (
    "auroc_diff_macro",
    "auroc_all_macro",
    "auroc_same_macro",
    "truth_partial_r_macro",
    "truth_crossing_auroc_macro",
)
METRIC_TEXT = {
    "auroc_diff_macro": "Diff-subset macro AUROC (target labels that changed)",
    "auroc_all_macro": "All-pairs macro AUROC",
    "auroc_same_macro": "Same-subset macro AUROC (target labels that did not change)",
    "truth_partial_r_macro": "partial correlation of predicted and true change, given the previous state (macro)",
    "truth_crossing_auroc_macro": "AUROC on pairs whose hidden state crossed the label threshold (macro)",
}


def fixed_label_sets(
    trg: np.ndarray, prev: np.ndarray, labels: tuple[str, ...], candidates: list[str], min_pos: int, min_neg: int
) -> dict[str, list[str]]:
    """Per subset, the candidate labels with at least `min_pos` positive and `min_neg` negative targets.

    Fixed from the labels alone (never from a method's scores) before any scoring or resampling.
    """
    masks = subset_masks(trg, prev)
    out = {}
    for name, mask in masks.items():
        keep = []
        for lab in candidates:
            j = labels.index(lab)
            y = trg[mask[:, j], j]
            if (y == 1).sum() >= min_pos and (y == 0).sum() >= min_neg:
                keep.append(lab)
        out[name] = keep
    return out


TRUTH_METRICS = ("partial_r", "crossing_auroc")


def truth_label_sets(truth: PairTruth, min_pos: int, min_neg: int) -> dict[str, list[str]]:
    """Per truth metric, the dynamic findings with enough data for it, from the hidden state alone.

    The partial correlation uses every pair (at least `min_pos + min_neg` of them); the crossing
    AUROC needs `min_pos` upward and `min_neg` downward threshold crossings.
    """
    c = truth.change
    return {
        "partial_r": [f for f in truth.dynamic if c[f]["n_pairs"] >= min_pos + min_neg],
        "crossing_auroc": [
            f for f in truth.dynamic if c[f]["n_cross_up"] >= min_pos and c[f]["n_cross_down"] >= min_neg
        ],
    }


@dataclass
class HeadlineData:
    """Everything the headline metrics read, for the scored pairs in a fixed order."""

    labels: tuple[str, ...]
    trg: np.ndarray  # (N, L) target labels, NaN = unknown
    prev: np.ndarray  # (N, L)
    label_sets: dict[str, list[str]]
    truth: PairTruth | None = None
    truth_sets: dict[str, list[str]] = field(default_factory=lambda: {m: [] for m in TRUTH_METRICS})

    def __post_init__(self):
        self.masks = subset_masks(self.trg, self.prev)


def headline_values(
    data: HeadlineData, probs: np.ndarray, change: np.ndarray | None, idx: np.ndarray
) -> dict[str, float | None]:
    """The headline metrics of one method on the pairs `idx` (repeats allowed); None when undefined.

    `probs` (N, L): the method's finding scores; `change` (N, L): its predicted change (scores minus the
    scores of the previous image), used by the truth metrics.
    """
    out: dict[str, float | None] = {}
    p, y = probs[idx], data.trg[idx]
    for sub in SUBSETS:
        m = data.masks[sub][idx]
        values = []
        for lab in data.label_sets[sub]:
            j = data.labels.index(lab)
            keep = m[:, j] & np.isfinite(p[:, j])
            values.append(rank_auroc(p[keep, j], y[keep, j]))
        out[f"auroc_{sub}_macro"] = None if not values or any(v is None for v in values) else float(np.mean(values))
    if data.truth is None or change is None:
        out["truth_partial_r_macro"] = out["truth_crossing_auroc_macro"] = None
        return out
    t = data.truth
    rs, aucs = [], []
    for f in data.truth_sets["partial_r"]:
        j, k = data.labels.index(f), t.column(f)
        sp, st = t.prev[idx, k], t.trg[idx, k]
        rs.append(partial_correlation(change[idx, j], st - sp, sp)["value"])
    for f in data.truth_sets["crossing_auroc"]:
        j, k = data.labels.index(f), t.column(f)
        sp, st = t.prev[idx, k], t.trg[idx, k]
        thr = t.thresholds[f]
        crossed = np.isfinite(sp) & np.isfinite(st) & np.isfinite(p[:, j]) & ((sp > thr) != (st > thr))
        aucs.append(rank_auroc(p[crossed, j], (st[crossed] > thr).astype(np.float64)))
    out["truth_partial_r_macro"] = None if not rs or any(v is None for v in rs) else float(np.mean(rs))
    out["truth_crossing_auroc_macro"] = None if not aucs or any(v is None for v in aucs) else float(np.mean(aucs))
    return out


def bootstrap(
    data: HeadlineData,
    methods: dict[str, tuple[np.ndarray, np.ndarray | None]],
    groups: np.ndarray,
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, np.ndarray]]:
    """Resampled headline values, method -> metric -> (n_boot,) with NaN where undefined.

    Patients are drawn with replacement once per resample and every method is scored on the same draw.
    """
    groups = np.asarray(groups)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    out = {name: {m: np.full(n_boot, np.nan) for m in HEADLINE_METRICS} for name in methods}
    if len(members) < 2:  # resampling one patient says nothing about other patients
        return out
    rng = np.random.default_rng(seed)
    for b in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        for name, (probs, change) in methods.items():
            for metric, value in headline_values(data, probs, change, idx).items():
                if value is not None:
                    out[name][metric][b] = value
    return out


def _percentile_interval(
    draws: np.ndarray, value: float | None, undefined: str | None, n_boot: int, n_patients: int, defined_for: str
) -> dict:
    """The 2.5-97.5 % percentile interval of the finite `draws`, or a reason why there is none.

    Returns `ci95` (None with a `reason` when not computable), `n_valid` (resamples where the quantity
    was defined) and a `note` when the full-sample `value` falls outside its own interval.
    """
    d = draws[np.isfinite(draws)]
    out: dict = {"ci95": None, "n_valid": int(len(d))}
    if undefined is not None:
        out["reason"] = undefined
    elif n_boot == 0:
        out["reason"] = "bootstrap disabled (evaluate.bootstrap: 0)"
    elif n_patients < 2:
        out["reason"] = f"fewer than 2 patients ({n_patients}): no patient-level interval"
    elif len(d) < max(10, n_boot // 2):
        out["reason"] = f"only {len(d)} of {n_boot} resamples had the metric defined{defined_for}"
    else:
        out["ci95"] = [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))]
        if not out["ci95"][0] <= value <= out["ci95"][1]:
            out["note"] = "the full-sample value lies outside the percentile interval (a skewed bootstrap)"
    return out


def intervals(
    values: dict[str, dict[str, float | None]],
    boot: dict[str, dict[str, np.ndarray]],
    n_boot: int,
    n_patients: int,
) -> dict[str, dict[str, dict]]:
    """Per method and headline metric: the full-sample value and its own 95 % patient-level interval.

    The same resamples as the comparisons (`bootstrap`), so an aim such as "the real-target ceiling
    reaches 0.9" can be read against the spread that the number of test patients allows.
    """
    out: dict[str, dict[str, dict]] = {}
    for name, draws in boot.items():
        out[name] = {}
        for metric in HEADLINE_METRICS:
            v = values[name][metric]
            undefined = None if v is not None else "undefined on the full sample"
            out[name][metric] = {
                "value": v,
                "n_boot": n_boot,
                **_percentile_interval(draws[metric], v, undefined, n_boot, n_patients, ""),
            }
    return out


def verdict(ci95: list[float] | None) -> str:
    """'better' / 'worse' only when the whole 95 % interval is on one side of 0."""
    if ci95 is None:
        return "not computable"
    if ci95[0] > 0:
        return "better"
    if ci95[1] < 0:
        return "worse"
    return "no significant difference"


def compare(
    model: str,
    controls: list[str],
    values: dict[str, dict[str, float | None]],
    boot: dict[str, dict[str, np.ndarray]],
    n_boot: int,
    n_patients: int,
) -> dict[str, list[dict]]:
    """One entry per `<model>_vs_<control>`: for each headline metric the delta, its interval and a verdict."""
    out: dict[str, list[dict]] = {}
    for control in controls:
        entries = []
        for metric in HEADLINE_METRICS:
            a, b = values[model][metric], values[control][metric]
            entry: dict = {
                "metric": metric,
                "model": model,
                "control": control,
                "model_value": a,
                "control_value": b,
                "delta": None if a is None or b is None else a - b,
                "ci95": None,
                "n_boot": n_boot,
                "n_valid": 0,
                "n_patients": n_patients,
                "fraction_delta_le_0": None,
            }
            d = boot[model][metric] - boot[control][metric]
            undefined = None
            if entry["delta"] is None:
                undefined = f"undefined for {model if a is None else control} on the full sample"
            entry.update(_percentile_interval(d, entry["delta"], undefined, n_boot, n_patients, " for both methods"))
            entry["fraction_delta_le_0"] = None if entry["ci95"] is None else float((d[np.isfinite(d)] <= 0).mean())
            entry["verdict"] = verdict(entry["ci95"])
            entries.append(entry)
        out[f"{model}_vs_{control}"] = entries
    return out
