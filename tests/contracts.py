"""Checks of the artifact contracts in the design (shared/design.md, "Contracts")."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from ehrxdiff_core.evaluation.schema import MetricsFile, read_metrics
from ehrxdiff_core.labels import LABEL_COLUMNS

TRIPLET_COLUMNS = [
    "pair_id", "subject_id", "hadm_id", "prev_dicom_id", "trg_dicom_id", "prev_study_id", "trg_study_id",
    "prev_time", "trg_time", "gap_hours", "split", "age", "gender", "race",
]
EVENT_COLUMNS = ["pair_id", "position", "minutes_from_prev", "source", "code", "text"]


def check_triplets(df: pd.DataFrame, max_gap_hours: float = 48.0, min_age: int | None = 18) -> None:
    for col in TRIPLET_COLUMNS + [f"{p}_{l}" for p in ("prev", "trg") for l in LABEL_COLUMNS]:
        assert col in df.columns, f"triplets: missing column {col}"
    assert len(df) > 0
    assert df["pair_id"].is_unique
    assert (df["pair_id"] == df["trg_dicom_id"] + "_" + df["prev_dicom_id"]).all()
    assert pd.api.types.is_datetime64_any_dtype(df["prev_time"]) and pd.api.types.is_datetime64_any_dtype(df["trg_time"])
    assert (df["trg_time"] > df["prev_time"]).all()
    assert (df["gap_hours"] < max_gap_hours).all() and (df["gap_hours"] > 0).all()
    hours = (df["trg_time"] - df["prev_time"]).dt.total_seconds() / 3600
    assert np.allclose(hours, df["gap_hours"])
    assert (df["prev_study_id"] != df["trg_study_id"]).all()
    assert set(df["split"]) <= {"train", "valid", "test"}
    assert df.groupby("subject_id")["split"].nunique().max() == 1, "a subject is in two splits"
    if min_age is not None:
        assert (df["age"] >= min_age).all()
    for col in [f"{p}_{l}" for p in ("prev", "trg") for l in LABEL_COLUMNS]:
        assert set(df[col].dropna().unique()) <= {0.0, 1.0}, f"{col} has values outside 1/0/null"


def check_events(events: pd.DataFrame, triplets: pd.DataFrame, max_events: int) -> None:
    assert list(events.columns[: len(EVENT_COLUMNS)]) == EVENT_COLUMNS or set(EVENT_COLUMNS) <= set(events.columns)
    assert set(events["pair_id"]) == set(triplets["pair_id"]), "events and events/triplets disagree on pairs"
    counts = events.groupby("pair_id").size()
    assert counts.max() <= max_events
    assert (counts.reindex(triplets["pair_id"]).to_numpy() == triplets["n_events"].to_numpy()).all()
    for _, g in events.groupby("pair_id"):
        assert list(g["position"]) == list(range(len(g))), "positions must be 0..n-1 in order"
        assert g["minutes_from_prev"].is_monotonic_increasing
    gaps = triplets.set_index("pair_id")["gap_hours"] * 60
    assert (events["minutes_from_prev"] >= -1e-9).all()
    assert (events["minutes_from_prev"].to_numpy() <= gaps.reindex(events["pair_id"]).to_numpy() + 1e-6).all()
    assert events["text"].str.len().min() > 0
    assert not events["text"].str.contains(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", regex=True).any(), "timestamps in event text"


def check_images_h5(path: Path, size: int, dicom_ids: set[str]) -> None:
    with h5py.File(path, "r") as f:
        pixels = f["pixels"]
        assert pixels.dtype == np.uint8 and pixels.shape[1:] == (size, size)
        ids = [d.decode() if isinstance(d, bytes) else d for d in f["dicom_id"][:]]
        assert len(ids) == pixels.shape[0]
        assert set(ids) <= dicom_ids
        assert len(set(ids)) == len(ids)
        assert pixels[: min(4, len(ids))].std() > 0


def check_embeddings_h5(path: Path, events: pd.DataFrame, numeric: bool | None = None) -> None:
    """`numeric`: whether `texts/numeric` must be present (True) or absent (False); None: checked when present."""
    with h5py.File(path, "r") as f:
        texts, pairs = f["texts"], f["pairs"]
        emb = texts["embedding"]
        assert emb.dtype == np.float16 and emb.ndim == 2
        assert texts["hash"].dtype == np.uint64 and texts["hash"].shape[0] == emb.shape[0]
        assert len(set(texts["hash"][:].tolist())) == emb.shape[0], "a text is stored twice"
        for key in ("encoder", "dim", "pooling", "rag"):
            assert key in texts.attrs, f"texts attr {key} missing"
        offsets, rows = pairs["offsets"][:], pairs["rows"][:]
        pair_ids = [p.decode() if isinstance(p, bytes) else p for p in pairs["pair_id"][:]]
        assert len(offsets) == len(pair_ids) + 1 and offsets[-1] == len(rows)
        counts = events.groupby("pair_id").size()
        for i, pid in enumerate(pair_ids):
            assert offsets[i + 1] - offsets[i] == counts[pid]
        assert rows.max() < emb.shape[0]
        if numeric is not None:
            assert ("numeric" in texts) == numeric, f"texts/numeric {'missing' if numeric else 'present'}"
        if "numeric" in texts:
            num = texts["numeric"]
            names = json.loads(num.attrs["features"])
            assert num.dtype == np.float32 and num.shape == (emb.shape[0], len(names))
            assert {"has_value", "value_z", "abnormal"} <= set(names)
            for key in ("standardisation", "scale", "clip"):
                assert key in num.attrs, f"texts/numeric attr {key} missing"
            x = num[:]
            assert np.isfinite(x).all() and (np.abs(x) <= float(num.attrs["clip"])).all()
            has = x[:, names.index("has_value")]
            assert set(np.unique(has)) <= {0.0, 1.0} and (x[has == 0] == 0).all()
            assert set(np.unique(x[:, names.index("abnormal")])) <= {-1.0, 0.0, 1.0}


def check_metrics(path: Path, controls: tuple[str, ...] = ("previous_image", "previous_vae", "previous_blur")) -> MetricsFile:
    """metrics.json validates against the typed schema; the model and each control are scored side by side."""
    metrics = read_metrics(path)
    assert metrics.model == "ehrxdiff" and metrics.methods["ehrxdiff"].kind == "model"
    for method in ("ehrxdiff", *controls, "real_target"):
        m = metrics.methods[method]
        assert m.n_pairs == metrics.settings["n_pairs"] > 0
        assert set(m.auroc) == {"all", "diff", "same"}, f"metrics.{method}: Diff/All/Same must be reported together"
    for control in controls:
        entries = metrics.comparisons[f"ehrxdiff_vs_{control}"]
        assert [e.metric for e in entries] == list(metrics.headline_metrics)
        for e in entries:
            assert e.verdict == "not computable" or (e.ci95 is not None and e.n_boot > 0)
    return metrics
