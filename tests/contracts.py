"""Checks of the artifacts against what `ehrxdiff_core/artifacts` says they hold, plus the rules between their
rows that a schema cannot say (pair ids, time windows, event order, one split per subject)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, PREV, SPLITS, TRG, TRIPLETS, label_columns
from ehrxdiff_core.artifacts.events import EVENT_TRIPLETS, EVENTS
from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.artifacts.metrics import MetricsFile, read_metrics
from ehrxdiff_core.artifacts.parquet import ParquetArtifact
from ehrxdiff_core.artifacts.text import NUMERIC_ATTRS, TEXT_ATTRS, read_embedding_store

DATA_TABLES = (TRIPLETS, COHORT_IMAGES, EVENTS, EVENT_TRIPLETS)


def check_parquet_schemas(results: Path, artifacts: tuple[ParquetArtifact, ...] = DATA_TABLES) -> None:
    """Each artifact's file under `results` has exactly its schema: columns, order, types, no null where non-null."""
    for artifact in artifacts:
        artifact.check_file(results / artifact.path)


def check_triplets(df: pd.DataFrame, max_gap_hours: float = 48.0, min_age: int | None = 18) -> None:
    """`cohort/triplets.parquet` or `events/triplets.parquet`, read with pandas."""
    for col in TRIPLETS.names:
        assert col in df.columns, f"triplets: missing column {col}"
    assert len(df) > 0
    assert df["pair_id"].is_unique
    assert (df["pair_id"] == df["trg_dicom_id"] + "_" + df["prev_dicom_id"]).all()
    assert pd.api.types.is_datetime64_any_dtype(df["prev_time"])
    assert pd.api.types.is_datetime64_any_dtype(df["trg_time"])
    assert (df["trg_time"] > df["prev_time"]).all()
    assert (df["gap_hours"] < max_gap_hours).all() and (df["gap_hours"] > 0).all()
    hours = (df["trg_time"] - df["prev_time"]).dt.total_seconds() / 3600
    assert np.allclose(hours, df["gap_hours"])
    assert (df["prev_study_id"] != df["trg_study_id"]).all()
    assert set(df["split"]) <= set(SPLITS)
    assert df.groupby("subject_id")["split"].nunique().max() == 1, "a subject is in two splits"
    if min_age is not None:
        assert (df["age"] >= min_age).all()
    for col in label_columns(PREV) + label_columns(TRG):
        assert set(df[col].dropna().unique()) <= {0.0, 1.0}, f"{col} has values outside 1/0/null"


def check_events(events: pd.DataFrame, triplets: pd.DataFrame, max_events: int) -> None:
    assert list(events.columns) == EVENTS.names, f"events: columns {list(events.columns)}, expected {EVENTS.names}"
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
    timestamps = events["text"].str.contains(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", regex=True)
    assert not timestamps.any(), "timestamps in event text"


def check_images_h5(path: Path, size: int, dicom_ids: set[str]) -> None:
    store = open_image_store(path)  # the layout: datasets, dtype, one size x size image per id
    assert store.size == size
    assert set(store.dicom_ids) <= dicom_ids
    assert len(set(store.dicom_ids)) == len(store) and store.dicom_ids == sorted(store.dicom_ids)
    assert store.load(store.dicom_ids[:4]).std() > 0


def check_embeddings_h5(path: Path, events: pd.DataFrame, numeric: bool | None = None) -> None:
    """`numeric`: whether `texts/numeric` must be present (True) or absent (False); None: checked when present."""
    store = read_embedding_store(path, numeric=numeric)  # the layout: datasets present and fitting together
    emb = store.embedding
    assert emb.dtype == np.float16 and store.hashes.dtype == np.uint64
    assert len(set(store.hashes.tolist())) == emb.shape[0], "a text is stored twice"
    for key in TEXT_ATTRS:
        assert key in store.attrs, f"texts attr {key} missing"
    offsets, rows = store.offsets, store.rows
    assert offsets[-1] == len(rows)
    counts = events.groupby("pair_id").size()
    for i, pid in enumerate(store.pair_ids):
        assert offsets[i + 1] - offsets[i] == counts[pid]
    assert rows.max() < emb.shape[0]
    if numeric is False:
        assert read_embedding_store(path).numeric is None, "texts/numeric present"
    if store.numeric is not None:
        x, names = store.numeric, store.numeric_features
        assert x.dtype == np.float32 and x.shape == (emb.shape[0], len(names))
        assert {"has_value", "value_z", "abnormal"} <= set(names)
        for key in NUMERIC_ATTRS:
            assert key in store.numeric_attrs, f"texts/numeric attr {key} missing"
        assert np.isfinite(x).all() and (np.abs(x) <= float(store.numeric_attrs["clip"])).all()
        has = x[:, names.index("has_value")]
        assert set(np.unique(has)) <= {0.0, 1.0} and (x[has == 0] == 0).all()
        assert set(np.unique(x[:, names.index("abnormal")])) <= {-1.0, 0.0, 1.0}


def check_metrics(
    path: Path, controls: tuple[str, ...] = ("previous_image", "previous_vae", "previous_blur")
) -> MetricsFile:
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
