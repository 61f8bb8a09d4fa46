"""FAISS index: exact below the threshold, IVF/HNSW above it or on request; sidecar ties it to the encoder."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from ehrxdiff_core.config import RagIndexConfig, TextConfig
from ehrxdiff_core.text.embed import embed_events
from ehrxdiff_core.text.index import build_rag_index, gpu_available, make_index, read_index, sidecar_path
from ehrxdiff_core.text.knowledge import build_knowledge
from toy_text import make_events, write_demo_dictionaries

torch.set_num_threads(1)


def vectors(n, d=16, seed=0):
    x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_below_threshold_is_exact_inner_product():
    x = vectors(200)
    index, info = make_index(x, RagIndexConfig(approximate_above=500))
    assert info["kind"] == "flat" and isinstance(index, faiss.IndexFlatIP)
    scores, ids = index.search(x[:5], 1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


def test_auto_past_threshold_picks_hnsw():
    x = vectors(300)
    index, info = make_index(x, RagIndexConfig(approximate_above=100, hnsw_m=8))
    assert info["kind"] == "hnsw" and isinstance(index, faiss.IndexHNSWFlat)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    _, ids = index.search(x[:10], 1)
    assert (ids[:, 0] == np.arange(10)).mean() >= 0.9


def test_ivf_on_request(tmp_path):
    x = vectors(1000)
    cfg = RagIndexConfig(kind="ivf", ivf_nlist=16, ivf_nprobe=4)
    index, info = make_index(x, cfg)
    assert info["kind"] == "ivf" and isinstance(index, faiss.IndexIVFFlat)
    assert (info["nlist"], info["nprobe"]) == (16, 4) and index.is_trained and index.ntotal == 1000
    _, ids = index.search(x[:20], 1)
    assert (ids[:, 0] == np.arange(20)).mean() >= 0.9
    faiss.write_index(index, str(tmp_path / "i.faiss"))
    sidecar_path(tmp_path / "i.faiss").write_text(json.dumps({**info}))
    back, _ = read_index(tmp_path / "i.faiss", cfg)
    assert faiss.extract_index_ivf(back).nprobe == 4


def test_ivf_small_corpus_shrinks_nlist():
    _, info = make_index(vectors(100), RagIndexConfig(kind="ivf", ivf_nlist=256))
    assert info["nlist"] == 2  # 100 // 39: faiss needs ~39 points per centroid


def test_no_gpu_faiss_here():
    assert gpu_available(RagIndexConfig(use_gpu="never")) is False


def test_index_encoder_mismatch_is_a_clear_error(tmp_path):
    di, dl = write_demo_dictionaries(tmp_path / "ehr")
    build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "knowledge.parquet")
    built = TextConfig.model_validate(
        {"encoder": {"name": "tiny-random", "tiny_dim": 16}, "cache_dir": str(tmp_path / "cache")}
    )
    meta = build_rag_index(tmp_path / "knowledge.parquet", built, tmp_path / "index.faiss")
    assert meta["dim"] == 16 and meta["kind"] == "flat" and meta["n_snippets"] > 150
    assert json.loads(sidecar_path(tmp_path / "index.faiss").read_text()) == meta
    assert faiss.read_index(str(tmp_path / "index.faiss")).ntotal == meta["n_snippets"]
    ev, tr = make_events(3)
    ev.to_parquet(tmp_path / "events.parquet")
    tr.to_parquet(tmp_path / "triplets.parquet")
    other = built.model_copy(update={"encoder": built.encoder.model_copy(update={"tiny_dim": 32})})
    with pytest.raises(ValueError, match=r"text\.encoder"):
        embed_events(
            tmp_path / "events.parquet",
            tmp_path / "triplets.parquet",
            tmp_path / "knowledge.parquet",
            tmp_path / "index.faiss",
            other,
            tmp_path / "events.h5",
        )
    assert not (tmp_path / "events.h5").exists()
