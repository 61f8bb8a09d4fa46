"""Patient-level train/valid/test split: by seeded shuffle + cumulative fractions, or from a key file.

The shuffle assigns whole subjects, so no patient's images can leak between splits; fractions are
matched on the cumulative number of pairs, as the original EHRXDiff preprocessing does (test first,
then valid, the rest train).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ehrxdiff_core.artifacts.cohort import SPLITS
from ehrxdiff_core.config import SplitConfig
from ehrxdiff_core.data.errors import DataError

SPLIT_ORDER = ("test", "valid", "train")  # the SPLITS in the order their shares of the pairs are assigned


def split_subjects(subject_ids: np.ndarray, pair_counts: np.ndarray, cfg: SplitConfig) -> np.ndarray:
    """Split name per subject (same order as `subject_ids`)."""
    order = np.argsort(subject_ids, kind="stable")
    rng = np.random.default_rng(cfg.seed)
    shuffled = order[rng.permutation(len(order))]
    weights = pair_counts[shuffled].astype(float)
    total = weights.sum() or 1.0
    start = (np.cumsum(weights) - weights) / total  # share of pairs before this subject
    bounds = np.cumsum([cfg.fractions[s] for s in SPLIT_ORDER])
    which = np.searchsorted(bounds, start, side="right").clip(max=len(SPLIT_ORDER) - 1)
    out = np.empty(len(subject_ids), dtype=object)
    out[shuffled] = np.asarray(SPLIT_ORDER, dtype=object)[which]
    return out


def read_key_file(path: str | Path) -> dict[str, str]:
    """{"train": [pair ids], "valid": [...], "test": [...]} → {pair_id: split}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"split key file not found: {path} (cohort.split.key_file)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"split key file {path} is not valid JSON: {err} (cohort.split.key_file)") from None
    if not isinstance(raw, dict) or not set(raw) <= set(SPLITS) or not raw:
        raise DataError(
            f"split key file {path} must be a JSON object with keys train/valid/test holding lists of pair ids "
            f"'{{trg_dicom_id}}_{{prev_dicom_id}}' (cohort.split.key_file); got keys {list(raw)[:5]}"
        )
    keys: dict[str, str] = {}
    for split, ids in raw.items():
        for pid in ids:
            if keys.setdefault(str(pid), split) != split:
                raise DataError(f"split key file {path}: pair {pid} is listed in two splits (cohort.split.key_file)")
    return keys
