"""FAISS index over knowledge snippets: exact inner product for small corpora, IVF/HNSW for large ones.

Vectors are L2-normalised, so inner product = cosine similarity. A JSON sidecar (`<index>.json`) records
the encoder and corpus the index was built from, so `embed` refuses an index built by another encoder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from ehrxdiff_core.artifacts.text import KNOWLEDGE
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import RagIndexConfig, TextConfig
from ehrxdiff_core.text.encoders import load_encoder
from ehrxdiff_core.text.knowledge import read_knowledge

log = logging.getLogger(__name__)


def sidecar_path(index_path: Path) -> Path:
    return Path(str(index_path) + ".json")


def knowledge_digest(knowledge: pd.DataFrame) -> str:
    """Digest of what retrieval can return (ids, texts, ranges): part of every augmented text's hash."""
    h = hashlib.blake2b(digest_size=16)
    for r in knowledge[KNOWLEDGE.columns("snippet_id", "ref", "key", "text", "low", "high", "unit")].itertuples(
        index=False
    ):
        h.update(
            json.dumps(
                [
                    int(r.snippet_id),
                    r.ref,
                    r.key,
                    r.text,
                    None if pd.isna(r.low) else float(r.low),
                    None if pd.isna(r.high) else float(r.high),
                    None if r.unit is None or pd.isna(r.unit) else str(r.unit),
                ]
            ).encode()
        )
    return h.hexdigest()


def choose_kind(n: int, cfg: RagIndexConfig) -> str:
    if cfg.kind != "auto":
        return cfg.kind
    return "flat" if n <= cfg.approximate_above else "hnsw"


def gpu_available(cfg: RagIndexConfig) -> bool:
    return cfg.use_gpu == "auto" and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def make_index(vectors: np.ndarray, cfg: RagIndexConfig) -> tuple[faiss.Index, dict]:
    """Build (and train, for IVF) an inner-product index over normalised `vectors`; returns it on the CPU."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss.normalize_L2(x)
    n, d = x.shape
    kind = choose_kind(n, cfg)
    info: dict = {"kind": kind}
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = max(40, 2 * cfg.hnsw_m)
        index.hnsw.efSearch = cfg.hnsw_ef_search
        info.update(hnsw_m=cfg.hnsw_m, ef_search=cfg.hnsw_ef_search)
    elif kind == "ivf":
        nlist = max(1, min(cfg.ivf_nlist, n // 39))  # faiss wants >= 39 training points per centroid
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = min(cfg.ivf_nprobe, nlist)
        info.update(nlist=nlist, nprobe=index.nprobe)
    else:  # pragma: no cover - guarded by the config Literal
        raise ValueError(f"text.rag.index.kind: unknown index kind {kind!r}")

    use_gpu = gpu_available(cfg) and kind in ("flat", "ivf")
    info["built_on_gpu"] = use_gpu
    if use_gpu:
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
        if kind == "ivf":
            gpu_index.train(x)
        gpu_index.add(x)
        index = faiss.index_gpu_to_cpu(gpu_index)
        if kind == "ivf":
            index.nprobe = info["nprobe"]
    else:
        if kind == "ivf":
            index.train(x)
        index.add(x)
    return index, info


def write_index(index: faiss.Index, meta: dict, out_index: Path) -> None:
    """Index and sidecar both land by rename; the sidecar goes last so a present sidecar means a whole index."""
    with atomic_path(out_index) as tmp:
        faiss.write_index(index, str(tmp))
    with atomic_path(sidecar_path(out_index)) as tmp:
        tmp.write_text(json.dumps(meta, indent=1, sort_keys=True))


def read_index(index_path: Path, cfg: RagIndexConfig) -> tuple[faiss.Index, dict]:
    index_path = Path(index_path)
    side = sidecar_path(index_path)
    if not index_path.is_file() or not side.is_file():
        raise FileNotFoundError(f"RAG index not found: {index_path} (+ {side.name}); run the `rag_index` rule")
    meta = json.loads(side.read_text())
    index = faiss.read_index(str(index_path))
    if meta.get("kind") == "ivf":
        faiss.extract_index_ivf(index).nprobe = min(cfg.ivf_nprobe, meta.get("nlist", cfg.ivf_nprobe))
    elif meta.get("kind") == "hnsw":
        index.hnsw.efSearch = cfg.hnsw_ef_search
    if gpu_available(cfg) and meta.get("kind") in ("flat", "ivf"):
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    return index, meta


def check_index_matches(meta: dict, encoder_id: str, dim: int, digest: str, index_path: Path) -> None:
    """Refuse an index built by another encoder or from another knowledge corpus."""
    if meta.get("encoder") != encoder_id or int(meta.get("dim", -1)) != dim:
        raise ValueError(
            f"{index_path} was built with encoder {meta.get('encoder')!r} (dim {meta.get('dim')}), but "
            f"text.encoder now gives {encoder_id!r} (dim {dim}); rebuild the index (rule `rag_index`)"
        )
    if meta.get("knowledge_digest") != digest:
        raise ValueError(f"{index_path} was built from another knowledge corpus; rebuild it (rule `rag_index`)")


def build_rag_index(knowledge_parquet: Path, cfg: TextConfig, out_index: Path, device: str = "auto") -> dict:
    """Embed every snippet with `text.encoder` and write rag/index.faiss + its JSON sidecar; returns the sidecar."""
    knowledge = read_knowledge(Path(knowledge_parquet))
    encoder = load_encoder(cfg.encoder, device)
    t0 = time.perf_counter()
    vectors = encoder.encode(knowledge["text"].tolist())
    index, info = make_index(vectors, cfg.rag.index)
    meta = {
        "encoder": encoder.encoder_id,
        "dim": encoder.dim,
        "n_snippets": int(len(knowledge)),
        "knowledge_digest": knowledge_digest(knowledge),
        **info,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_index(index, meta, Path(out_index))
    log.info(
        "rag_index: %s index over %d snippets (dim %d, %s) -> %s",
        info["kind"],
        len(knowledge),
        encoder.dim,
        encoder.encoder_id,
        out_index,
    )
    return meta
