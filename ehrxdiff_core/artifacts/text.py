"""The text stage's artifacts: the retrieval corpus and the event-embedding store, with the store's opener.

`rag/knowledge.parquet` (rule `knowledge`): one snippet per glossary entry, then per d_items and
d_labitems item in itemid order; `snippet_id` is 0..N-1 in row order (the FAISS index's row ids),
`source` is `glossary`, `d_items` or `d_labitems`, `ref` a stable reference (`glossary:{key}`,
`d_items:{itemid}`), `text` the snippet retrieval returns; `low`/`high`/`unit` a reference range
where one is known.

`embeddings/events.h5` (rule `embed`): group `texts` holds each unique event text once: `hash`
uint64 (N), content hash of encoder + augmentation settings + text; `embedding` float16 (N, D);
optional `numeric` float32 (N, K), per-text numeric features with attributes `features` (JSON list
of K names), `standardisation`, `scale` and `clip`; attributes `encoder`, `dim`, `pooling`, `rag`.
Group `pairs` holds `pair_id` (P UTF-8 strings), `offsets` int64 (P + 1) and `rows` int64: pair i's
events, oldest first, are `texts` rows `rows[offsets[i]:offsets[i + 1]]`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa

from ehrxdiff_core.artifacts.parquet import ArtifactError, MissingArtifactError, ParquetArtifact
from ehrxdiff_core.atomic import atomic_path

KNOWLEDGE = ParquetArtifact(
    "rag/knowledge.parquet",
    "knowledge",
    pa.schema(
        [
            ("snippet_id", pa.int64()),
            ("source", pa.string()),
            ("ref", pa.string()),
            ("itemid", pa.int64()),
            ("key", pa.string()),
            ("kind", pa.string()),
            ("aliases", pa.list_(pa.string())),
            ("text", pa.string()),
            ("low", pa.float64()),
            ("high", pa.float64()),
            ("unit", pa.string()),
        ]
    ),
)

EMBEDDINGS_PATH = "embeddings/events.h5"
TEXTS, PAIRS = "texts", "pairs"
DATASETS = ("texts/hash", "texts/embedding", "pairs/pair_id", "pairs/offsets", "pairs/rows")
NUMERIC = "texts/numeric"
TEXT_ATTRS = ("encoder", "dim", "pooling", "rag")
NUMERIC_ATTRS = ("features", "standardisation", "scale", "clip")


def write_embedding_store(
    out_h5: Path,
    *,
    hashes: np.ndarray,
    embeddings: np.ndarray,
    pair_ids: list[str],
    offsets: np.ndarray,
    rows: np.ndarray,
    attrs: dict,
    numeric: np.ndarray | None = None,
    numeric_attrs: dict | None = None,
) -> None:
    """Write embeddings/events.h5 in the layout above, atomically.

    `numeric` (N x K, row-aligned with the embeddings) becomes `texts/numeric` with `numeric_attrs`; without it
    the file is exactly the text-only layout.
    """
    if numeric is not None and (numeric.ndim != 2 or numeric.shape[0] != len(hashes)):
        raise ValueError(f"{out_h5}: numeric features of shape {numeric.shape} do not match {len(hashes)} texts")
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            t = f.create_group(TEXTS)
            t.create_dataset("hash", data=hashes.astype(np.uint64))
            t.create_dataset(
                "embedding",
                data=embeddings.astype(np.float16),
                chunks=(min(max(len(hashes), 1), 4096), embeddings.shape[1]) if len(hashes) else None,
            )
            for k, v in attrs.items():
                t.attrs[k] = v
            if numeric is not None:
                d = t.create_dataset("numeric", data=numeric.astype(np.float32))
                for k, v in (numeric_attrs or {}).items():
                    d.attrs[k] = v
            p = f.create_group(PAIRS)
            p.create_dataset("pair_id", data=np.array(pair_ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            p.create_dataset("offsets", data=offsets.astype(np.int64))
            # rows dominate the file at scale (one int64 per event); small ints shuffle+gzip to a few bits each
            p.create_dataset(
                "rows",
                data=rows.astype(np.int64),
                chunks=(min(max(len(rows), 1), 1 << 20),),
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )


def _attrs(obj) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in obj.attrs.items()}


@dataclass
class EmbeddingStore:
    """The whole of an embedding store in memory, as read by `read_embedding_store`."""

    path: Path
    attrs: dict  # of group `texts`
    embedding: np.ndarray  # float16 (N, D)
    hashes: np.ndarray  # uint64 (N,)
    pair_ids: list[str]
    offsets: np.ndarray  # int64 (P + 1,)
    rows: np.ndarray  # int64, indices into `embedding`
    numeric: np.ndarray | None = None  # float32 (N, K) when read
    numeric_attrs: dict = field(default_factory=dict)
    numeric_features: list[str] = field(default_factory=list)


def read_embedding_store(path: str | Path, numeric: bool | None = None) -> EmbeddingStore:
    """Read and check embeddings/events.h5. `numeric`: None reads `texts/numeric` when the file has it (older
    files: text only), False ignores it, True requires it."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"embedding store not found: {path} (run the `embed` rule)")
    with h5py.File(path, "r") as f:
        missing = [name for name in DATASETS if name not in f]
        if missing:
            raise ArtifactError(
                f"{path}: dataset(s) {missing} missing from the embedding store ({EMBEDDINGS_PATH}; "
                "re-run the `embed` rule)"
            )
        store = EmbeddingStore(
            path=path,
            attrs=_attrs(f[TEXTS]),
            embedding=f["texts/embedding"][:],
            hashes=f["texts/hash"][:],
            pair_ids=[s.decode() if isinstance(s, bytes) else s for s in f["pairs/pair_id"][:]],
            offsets=f["pairs/offsets"][:].astype(np.int64),
            rows=f["pairs/rows"][:].astype(np.int64),
        )
        has_numeric = NUMERIC in f
        if numeric and not has_numeric:
            raise ArtifactError(
                f"{path}: no texts/numeric dataset; it is written when text.numeric_features "
                "is true (re-run the `embed` rule)"
            )
        if has_numeric and numeric is not False:
            store.numeric, store.numeric_attrs = f[NUMERIC][:], _attrs(f[NUMERIC])
    n = store.embedding.shape[0]
    if store.embedding.ndim != 2 or store.hashes.shape != (n,) or len(store.offsets) != len(store.pair_ids) + 1:
        raise ArtifactError(
            f"{path}: texts/embedding {store.embedding.shape}, texts/hash {store.hashes.shape}, "
            f"pairs/offsets {store.offsets.shape} for {len(store.pair_ids)} pairs do not fit together"
        )
    if store.numeric is not None:
        feats = store.numeric
        names = json.loads(store.numeric_attrs.get("features", "[]"))
        if feats.ndim != 2 or feats.shape[0] != n or len(names) != feats.shape[1]:
            raise ArtifactError(
                f"{path}: texts/numeric has shape {feats.shape} and features {names}; expected "
                f"({n}, {len(names)}) row-aligned with texts/embedding"
            )
        if "scale" not in store.numeric_attrs:
            raise ArtifactError(f"{path}: texts/numeric lacks its 'scale' attribute")
        store.numeric_features = names
    return store
