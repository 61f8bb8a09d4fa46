"""The synthetic world's hidden severities joined to the scored pairs: what truth-based metrics need.

On the synthetic world every image has a hidden severity per finding (`synthetic/truth.parquet`), so a
prediction can be scored against the true change instead of noisy report labels. A finding is
*dynamic* when its hidden severity changes between the two images of a pair (mean absolute change over
the scored pairs of at least `DYNAMIC_MIN_CHANGE`); only dynamic findings say anything about whether
a prediction follows the events. Thresholds are the synthetic labeller's, so "crossed the threshold"
means the label would have flipped without noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ehrxdiff_core.evaluation.inputs import InputError, read_table, truth_severity_columns
from ehrxdiff_core.labels import label_column
from ehrxdiff_core.synthetic.labels import RULES

DYNAMIC_MIN_CHANGE = 0.02  # mean |target − previous| hidden severity over the scored pairs


def label_thresholds() -> dict[str, float]:
    """Label column -> the synthetic labeller's severity threshold, for labels read off one finding."""
    return {label_column(name): thr for name, idx, thr in RULES if idx is not None and idx >= 0}


@dataclass
class PairTruth:
    """Hidden severities of the previous and target image of each scored pair, per finding."""

    findings: list[str]  # truth columns that are also evaluator labels with a threshold
    thresholds: dict[str, float]
    prev: np.ndarray  # (N, F) previous-image severity, NaN where the image has no truth row
    trg: np.ndarray  # (N, F)
    change: dict[str, dict]  # finding -> {"mean_abs_change", "dynamic", "n_pairs", "n_cross_up", "n_cross_down"}
    n_pairs_with_truth: int

    @property
    def dynamic(self) -> list[str]:
        return [f for f in self.findings if self.change[f]["dynamic"]]

    def column(self, finding: str) -> int:
        return self.findings.index(finding)


def pair_truth(truth_path: str | Path, pairs: pd.DataFrame, labels: tuple[str, ...]) -> PairTruth:
    """Join `truth.parquet` to the pairs (`prev_dicom_id`, `trg_dicom_id`) in their row order."""
    truth = read_table(truth_path, ["dicom_id"], "synthetic truth table")
    thresholds = label_thresholds()
    cols = [c for c in truth_severity_columns(truth) if c in labels and c in thresholds]
    if not cols:
        raise InputError(
            f"{truth_path}: no hidden-severity column matches an evaluator label with a threshold ({labels})"
        )
    sev = truth.drop_duplicates("dicom_id").set_index("dicom_id")[cols]
    prev = sev.reindex(pairs["prev_dicom_id"].to_numpy()).to_numpy(np.float64)
    trg = sev.reindex(pairs["trg_dicom_id"].to_numpy()).to_numpy(np.float64)
    both = ~np.isnan(prev).any(1) & ~np.isnan(trg).any(1)
    change = {}
    for j, f in enumerate(cols):
        ok = ~np.isnan(prev[:, j]) & ~np.isnan(trg[:, j])
        d = np.abs(trg[ok, j] - prev[ok, j])
        mean = float(d.mean()) if ok.any() else 0.0
        up = int(((prev[ok, j] <= thresholds[f]) & (trg[ok, j] > thresholds[f])).sum())
        down = int(((prev[ok, j] > thresholds[f]) & (trg[ok, j] <= thresholds[f])).sum())
        change[f] = {
            "mean_abs_change": mean,
            "dynamic": mean >= DYNAMIC_MIN_CHANGE,
            "n_pairs": int(ok.sum()),
            "n_cross_up": up,
            "n_cross_down": down,
            "threshold": thresholds[f],
        }
    return PairTruth(cols, {c: thresholds[c] for c in cols}, prev, trg, change, int(both.sum()))
