"""The `embed` stage: each event of each pair serialized, optionally rewritten and augmented with retrieved
knowledge, embedded with the text encoder and written to the embedding store."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrxdiff_core.artifacts.events import EVENT_TRIPLETS, EVENTS
from ehrxdiff_core.artifacts.text import write_embedding_store
from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.text.augment import Augmenter, KnowledgeLookup
from ehrxdiff_core.text.encoders import load_encoder
from ehrxdiff_core.text.index import check_index_matches, knowledge_digest, read_index
from ehrxdiff_core.text.knowledge import read_knowledge
from ehrxdiff_core.text.numeric import input_scale, numeric_features
from ehrxdiff_core.text.rewrite import Rewriter, rewrite_id
from ehrxdiff_core.text.store import EmbeddingCache, settings_key, text_hashes

log = logging.getLogger(__name__)

EVENT_COLUMNS = EVENTS.columns("pair_id", "position", "source", "code", "text")


def _read_pairs(triplets_parquet: Path) -> list[str]:
    path = Path(triplets_parquet)
    EVENT_TRIPLETS.require(path, ["pair_id"])
    pairs = pq.read_table(path, columns=["pair_id"]).column("pair_id").to_pylist()
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"{path}: duplicate pair_id values")
    return pairs


def _train_pairs(triplets_parquet: Path, pairs: list[str]) -> tuple[np.ndarray, str]:
    """Which pairs statistics may be learned from: the train split when the triplets have one, else all pairs."""
    path = Path(triplets_parquet)
    if "split" not in pq.read_schema(path).names:
        return np.ones(len(pairs), dtype=bool), "all pairs (triplets have no split column)"
    t = pq.read_table(path, columns=["pair_id", "split"]).to_pandas()
    split = dict(zip(t["pair_id"], t["split"]))
    train = np.array([split.get(p) == "train" for p in pairs], dtype=bool)
    if not train.any():
        return np.ones(len(pairs), dtype=bool), "all pairs (no train pairs)"
    return train, "train pairs"


@dataclass
class EventTexts:
    """The events of the listed pairs, reduced to unique texts + one text index per event in pair/event order."""

    texts: list[str]  # unique texts, in order of first appearance
    sources: list[str]  # source and code of each unique text's first event (for retrieval)
    codes: list[str | None]
    rows: np.ndarray  # int64 (n_events,): index into `texts`, ordered by (pair order, position)
    counts: np.ndarray  # int64 (n_pairs,): events per pair


def _read_events(events_parquet: Path, pairs: list[str]) -> EventTexts:
    """Deduplicate in DuckDB so that only unique texts and integer rows reach Python (MIMIC: ~10^8 events)."""
    path = Path(events_parquet)
    EVENTS.require(path, EVENT_COLUMNS)
    con = duckdb.connect()
    try:
        con.execute("SET preserve_insertion_order = false")
        con.register("pair_list", pa.table({"pair_id": pairs, "pidx": np.arange(len(pairs), dtype=np.int64)}))
        con.execute(
            "CREATE TEMP TABLE ev AS SELECT p.pidx * 4294967296 + e.position AS k, p.pidx, e.source, "
            "CAST(e.code AS VARCHAR) AS code, e.text FROM read_parquet(?) e JOIN pair_list p USING (pair_id)",
            [str(path)],
        )
        if con.execute("SELECT count(*) FROM ev WHERE text IS NULL").fetchone()[0]:
            raise ValueError(f"{path}: column 'text' has nulls")
        if con.execute("SELECT count(*) FROM (SELECT k FROM ev GROUP BY k HAVING count(*) > 1)").fetchone()[0]:
            raise ValueError(f"{path}: duplicate (pair_id, position) rows")
        con.execute(
            "CREATE TEMP TABLE ut AS SELECT text, arg_min(source, k) AS source, arg_min(code, k) AS code, "
            "row_number() OVER (ORDER BY min(k)) - 1 AS tid FROM ev GROUP BY text"
        )
        uniq = con.sql("SELECT text, source, code FROM ut ORDER BY tid").to_arrow_table()
        rows = con.execute("SELECT ut.tid FROM ev JOIN ut USING (text) ORDER BY ev.k").fetchnumpy()["tid"]
        per_pair = con.execute("SELECT pidx, count(*) AS n FROM ev GROUP BY pidx").fetchnumpy()
    finally:
        con.close()
    counts = np.zeros(len(pairs), dtype=np.int64)
    counts[np.asarray(per_pair["pidx"], dtype=np.int64)] = np.asarray(per_pair["n"], dtype=np.int64)
    return EventTexts(
        texts=uniq.column("text").to_pylist(),
        sources=uniq.column("source").to_pylist(),
        codes=uniq.column("code").to_pylist(),
        rows=np.asarray(rows, dtype=np.int64),
        counts=counts,
    )


def augmentation_settings(cfg: TextConfig, digest: str | None) -> dict:
    """Exactly what changes the text fed to the encoder besides the raw event text."""
    if cfg.rag.enabled:
        rag = cfg.rag.model_dump(mode="json")
        rag["index"].pop("use_gpu")  # GPU and CPU search return the same snippets; the index kind may not
    else:
        rag = {"enabled": False}
    return {"rag": rag, "knowledge": digest, "rewrite": rewrite_id(cfg.rewrite)}


def embed_events(
    events_parquet: Path,
    triplets_parquet: Path,
    knowledge_parquet: Path,
    index_path: Path,
    cfg: TextConfig,
    out_h5: Path,
    device: str = "auto",
) -> dict:
    """Write embeddings/events.h5 for the pairs of events/triplets.parquet, encoding only texts not yet cached.

    With `text.numeric_features` the file also holds per-text numeric features (`ehrxdiff_core.text.numeric`).
    """
    t0 = time.perf_counter()
    pairs = _read_pairs(Path(triplets_parquet))
    ev = _read_events(Path(events_parquet), pairs)
    uniques = ev.texts

    encoder = load_encoder(cfg.encoder, device)
    use_rag = cfg.rag.enabled and cfg.rag.top_k > 0
    needs_knowledge = cfg.rag.enabled and (use_rag or cfg.rag.abnormal_flag)
    corpus = read_knowledge(Path(knowledge_parquet)) if needs_knowledge or cfg.numeric_features else None
    knowledge = corpus if needs_knowledge else None  # what augments texts (and keys the cache); numeric: `corpus`
    digest = knowledge_digest(knowledge) if knowledge is not None else None
    index = None
    if use_rag:
        index, meta = read_index(Path(index_path), cfg.rag.index)
        check_index_matches(meta, encoder.encoder_id, encoder.dim, digest, Path(index_path))
    aug_settings = augmentation_settings(cfg, digest)
    key = settings_key(encoder.encoder_id, aug_settings)
    hashes = text_hashes(uniques, key)

    cache = EmbeddingCache(cfg.cache_dir, encoder.encoder_id, encoder.dim)
    found, _ = cache.lookup(hashes)
    todo = np.flatnonzero(~found)
    t_enc = time.perf_counter()
    if len(todo):
        augmenter = Augmenter(knowledge, cfg.rag, encoder, index) if knowledge is not None else None
        rewriter = Rewriter(cfg.rewrite, device=device) if cfg.rewrite.enabled else None
        # one cache shard per chunk: a job killed half-way keeps the chunks it finished
        for start in range(0, len(todo), cfg.cache_shard_texts):
            chunk = todo[start : start + cfg.cache_shard_texts]
            texts = [uniques[i] for i in chunk]
            if augmenter is not None:
                aug = augmenter.augment(texts, [ev.sources[i] for i in chunk], [ev.codes[i] for i in chunk])
                texts = [a.text for a in aug]
            if rewriter is not None:
                texts = rewriter.rewrite(texts)
            cache.add(hashes[chunk], encoder.encode(texts))
            log.info("embed: encoded %d / %d new texts", start + len(chunk), len(todo))
    encode_s = time.perf_counter() - t_enc
    found, pos = cache.lookup(hashes)
    if not found.all():
        raise RuntimeError(f"embedding cache {cache.folder} lost {int((~found).sum())} texts during this run")
    embeddings = cache.embeddings[pos]

    counts = ev.counts
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    attrs = {
        "encoder": encoder.encoder_id,
        "dim": encoder.dim,
        "pooling": cfg.encoder.pooling,
        "rag": json.dumps(aug_settings, sort_keys=True),
    }
    numeric = numeric_attrs = None
    if cfg.numeric_features:  # fresh from this run's events each time; the cache stays text-only
        train, stats_from = _train_pairs(Path(triplets_parquet), pairs)
        weights = np.bincount(ev.rows[np.repeat(train, counts)], minlength=len(uniques))
        numeric, numeric_attrs = numeric_features(
            uniques, ev.sources, ev.codes, weights, KnowledgeLookup(corpus), stats_from
        )
        numeric_attrs["scale"] = input_scale(embeddings, numeric.shape[1])
    write_embedding_store(
        Path(out_h5),
        hashes=hashes,
        embeddings=embeddings,
        pair_ids=pairs,
        offsets=offsets,
        rows=ev.rows,
        attrs=attrs,
        numeric=numeric,
        numeric_attrs=numeric_attrs,
    )
    n_empty = int((counts == 0).sum())
    if n_empty:
        log.warning("embed: %d of %d pairs have no events in %s", n_empty, len(pairs), events_parquet)
    stats = {
        "n_pairs": len(pairs),
        "n_events": int(len(ev.rows)),
        "n_unique_texts": len(uniques),
        "n_encoded": int(len(todo)),
        "n_reused": int(len(uniques) - len(todo)),
        "dim": encoder.dim,
        "numeric_features": 0 if numeric is None else int(numeric.shape[1]),
        "encoder": encoder.encoder_id,
        "encode_seconds": round(encode_s, 3),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info(
        "embed: %d pairs, %d events, %d unique texts: %d encoded, %d reused from cache (%s)",
        stats["n_pairs"],
        stats["n_events"],
        stats["n_unique_texts"],
        stats["n_encoded"],
        stats["n_reused"],
        cfg.cache_dir,
    )
    return stats
