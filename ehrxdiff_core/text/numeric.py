"""Numeric event features: a few scalars per unique event text, stored beside its text embedding.

A sentence encoder barely separates numbers (MiniLM: two serialized CRP lab events, 5 vs 300 mg/L, have
cosine ~0.99), so an event's value and how abnormal it is reach the models as explicit features. Values come from the
augmentation's own parser (`augment.event_item`) and the flag from the same reference ranges
(`KnowledgeLookup.flag`), so the text flag and the numeric one never disagree.

Features, in order (`FEATURES`):
- `has_value`: 1 when the event carries a number (measurement, dose, amount, duration), else 0 and the
  other three are 0 too.
- `value_z`: robust z within the event's item, (v - median) / (IQR / 1.349), clipped to +-`CLIP`; the
  item is (source, code, unit) and its median/IQR are weighted quantiles over the events of the train
  pairs (all pairs when the triplets have no split), so no test value shapes the scale.
- `range_pos`: the value's place in its two-sided reference range, -1 at the low edge, +1 at the high
  edge, clipped to +-`CLIP`; 0 without a two-sided range.
- `abnormal`: -1 low, 0 normal or unknown, +1 high: the augmentation's abnormality flag.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np

from ehrxdiff_core.text.augment import KnowledgeLookup, _unit, abnormality_flag

log = logging.getLogger(__name__)

FEATURES = ("has_value", "value_z", "range_pos", "abnormal")
CLIP = 5.0
IQR_TO_SIGMA = 1.349  # IQR of a normal distribution in standard deviations
FLAG_VALUE = {"low": -1.0, "high": 1.0, "normal": 0.0, None: 0.0}
STANDARDISATION = (
    "has_value: 1 if the event carries a number, else 0 (and all features 0); "
    f"value_z: (v - median) / (IQR / {IQR_TO_SIGMA}) per item (source, code, unit), weighted lower quantiles "
    f"over the events of the train pairs, clipped to +-{CLIP:g} (IQR 0: mean absolute deviation x 1.2533, "
    "then max(|median|, 1); item without train values: 0); "
    f"range_pos: 2 (v - low) / (high - low) - 1 within the event's two-sided reference range, clipped to +-{CLIP:g}, "
    "else 0; abnormal: -1 low / 0 normal or unknown / +1 high, the retrieval augmentation's flag"
)


@dataclass
class ParsedNumbers:
    """Per unique text: its item's index, its number (NaN when none), and its measurement's range and flag."""

    item: np.ndarray  # int64 (N,) index into `item_keys`
    item_keys: list[tuple[str, str, str]]
    quantity: np.ndarray  # float64 (N,), NaN = no number
    low: np.ndarray  # float64 (N,), NaN = no two-sided range
    high: np.ndarray
    flag: np.ndarray  # float32 (N,) in {-1, 0, 1}


def parse_numbers(
    texts: list[str], sources: list[str | None], codes: list[str | None], lookup: KnowledgeLookup
) -> ParsedNumbers:
    """Parse each unique text once with the augmentation's parser; reference ranges are memoised per item."""
    n = len(texts)
    item = np.zeros(n, dtype=np.int64)
    quantity = np.full(n, np.nan)
    low, high = np.full(n, np.nan), np.full(n, np.nan)
    flag = np.zeros(n, dtype=np.float32)
    keys: dict[tuple[str, str, str], int] = {}
    ranges: dict[tuple, tuple] = {}
    for i, (text, source, code) in enumerate(zip(texts, sources, codes)):
        it, gloss, dict_row = lookup.resolve(text, source, code)
        key = (it.table or "", str(code) if code is not None else (it.label or ""), _unit(it.unit))
        item[i] = keys.setdefault(key, len(keys))
        if it.quantity is None:
            continue
        quantity[i] = it.quantity
        if it.value is None:
            continue
        rkey = (key, it.label, it.ref_low, it.ref_high)
        if rkey not in ranges:
            lo, hi, _ = lookup.reference_range(it, dict_row, gloss)
            ranges[rkey] = (lo, hi)
        lo, hi = ranges[rkey]
        flag[i] = FLAG_VALUE[abnormality_flag(it.value, lo, hi)]  # what KnowledgeLookup.flag returns, memoised
        if lo is not None and hi is not None and hi > lo:
            low[i], high[i] = lo, hi
    return ParsedNumbers(item=item, item_keys=list(keys), quantity=quantity, low=low, high=high, flag=flag)


def item_statistics(item: np.ndarray, quantity: np.ndarray, weights: np.ndarray, n_items: int):
    """(median, scale, n) per item: weighted lower quantiles of the numbers, scale = IQR / 1.349 with fallbacks.

    `weights` counts how often each unique text occurs among the events the statistics come from, so the
    quantiles are those of the events, computed without expanding them.
    """
    median = np.zeros(n_items)
    scale = np.ones(n_items)
    count = np.zeros(n_items, dtype=np.int64)
    ok = np.isfinite(quantity) & (weights > 0)
    if not ok.any():
        return median, scale, count
    g, v, w = item[ok], quantity[ok], weights[ok].astype(np.int64)
    order = np.lexsort((v, g))
    g, v, w = g[order], v[order], w[order]
    cw = np.cumsum(w)
    present = np.unique(g)
    start = np.searchsorted(g, present, "left")
    end = np.searchsorted(g, present, "right")
    before = np.where(start > 0, cw[start - 1], 0)
    total = cw[end - 1] - before
    count[present] = total

    def quantile(q: float) -> np.ndarray:
        idx = np.searchsorted(cw, before + q * total, "left")
        return v[np.clip(idx, start, end - 1)]

    q25, q50, q75 = quantile(0.25), quantile(0.5), quantile(0.75)
    s = (q75 - q25) / IQR_TO_SIGMA
    med_of = np.zeros(n_items)
    med_of[present] = q50
    mad = np.bincount(g, weights=w * np.abs(v - med_of[g]), minlength=n_items)[present] / total
    s = np.where(s > 0, s, mad * math.sqrt(math.pi / 2))  # mean absolute deviation -> sigma (normal)
    s = np.where(s > 0, s, np.maximum(np.abs(q50), 1.0))  # every value equal
    median[present], scale[present] = q50, s
    return median, scale, count


def numeric_features(
    texts: list[str],
    sources: list[str | None],
    codes: list[str | None],
    weights: np.ndarray,
    lookup: KnowledgeLookup,
    stats_from: str = "train pairs",
) -> tuple[np.ndarray, dict]:
    """(N x K float32 features in `FEATURES` order, attrs describing them) for the unique texts of one run."""
    p = parse_numbers(texts, sources, codes, lookup)
    weights = np.asarray(weights)
    if len(weights) != len(texts):
        raise ValueError(f"numeric features: {len(weights)} weights for {len(texts)} texts")
    median, scale, count = item_statistics(p.item, p.quantity, weights, len(p.item_keys))
    has = np.isfinite(p.quantity)
    out = np.zeros((len(texts), len(FEATURES)), dtype=np.float32)
    out[:, 0] = has
    seen = has & (count[p.item] > 0)
    z = (p.quantity[seen] - median[p.item[seen]]) / scale[p.item[seen]]
    out[seen, 1] = np.clip(z, -CLIP, CLIP)
    ranged = has & np.isfinite(p.low)
    pos = 2.0 * (p.quantity[ranged] - p.low[ranged]) / (p.high[ranged] - p.low[ranged]) - 1.0
    out[ranged, 2] = np.clip(pos, -CLIP, CLIP)
    out[:, 3] = np.where(has, p.flag, 0.0)
    n_items_with_values = int(len(np.unique(p.item[has]))) if has.any() else 0
    attrs = {
        "features": json.dumps(list(FEATURES)),
        "standardisation": STANDARDISATION,
        "clip": CLIP,
        "stats_from": stats_from,
        "n_items": n_items_with_values,
        "n_items_without_stats": int(n_items_with_values - (count[np.unique(p.item[has])] > 0).sum())
        if has.any()
        else 0,
    }
    log.info(
        "numeric features: %d of %d texts carry a number, %d items (%d without %s values), %d flagged",
        int(has.sum()),
        len(texts),
        attrs["n_items"],
        attrs["n_items_without_stats"],
        stats_from,
        int((out[:, 3] != 0).sum()),
    )
    return out, attrs


def input_scale(embeddings: np.ndarray, k: int, max_rows: int = 100_000) -> float:
    """Factor applied to the features when they join the embedding: a unit feature vector then has the norm of
    a typical text embedding, so neither block dominates the first layer at initialisation."""
    if len(embeddings) == 0:
        return 1.0 / math.sqrt(k)
    sample = embeddings[:: max(1, len(embeddings) // max_rows)].astype(np.float32)
    return float(np.linalg.norm(sample, axis=1).mean() / math.sqrt(k))
