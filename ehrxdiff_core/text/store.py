"""Content hashes of event texts, the persistent embedding cache, and the training reader of `embeddings/events.h5`.

Each unique (encoder, augmentation settings, event text) is embedded once and stored once as float16; pairs
are offsets into a row list. Optional per-text numeric features (`texts/numeric`) sit beside the embeddings.
This replaces the paper's 1024x1536 float16 matrix per pair (~3 MB/pair). The file's layout, its writer and
its opener are in `ehrxdiff_core/artifacts/text.py`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from ehrxdiff_core.artifacts.text import read_embedding_store
from ehrxdiff_core.atomic import atomic_path

log = logging.getLogger(__name__)


def text_hashes(texts, settings_key: str) -> np.ndarray:
    """64-bit content hash of (encoder id + augmentation settings, text): first 8 bytes of blake2b."""
    prefix = hashlib.blake2b(settings_key.encode(), digest_size=16).digest()
    out = np.empty(len(texts), dtype=np.uint64)
    for i, t in enumerate(texts):
        out[i] = int.from_bytes(hashlib.blake2b(prefix + t.encode("utf-8"), digest_size=8).digest(), "little")
    return out


def settings_key(encoder_id: str, augmentation: dict) -> str:
    return json.dumps({"encoder": encoder_id, "augmentation": augmentation}, sort_keys=True)


class EmbeddingCache:
    """Append-only folder of npz shards (hash uint64, embedding float16), one subfolder per encoder.

    A shard is written to a temp name and renamed, so a killed job leaves either a whole shard or none.
    """

    def __init__(self, root: str | Path, encoder_id: str, dim: int):
        slug = hashlib.blake2b(encoder_id.encode(), digest_size=8).hexdigest()
        self.folder = Path(root) / f"{encoder_id.split('|')[0]}-{slug}"
        self.dim = dim
        self.hashes = np.zeros(0, dtype=np.uint64)
        self.embeddings = np.zeros((0, dim), dtype=np.float16)
        self._load()

    def _load(self) -> None:
        if not self.folder.is_dir():
            return
        hs, es = [], []
        for shard in sorted(self.folder.glob("shard-*.npz")):
            with np.load(shard) as z:
                if z["embedding"].shape[1] != self.dim:
                    raise ValueError(f"{shard}: embedding width {z['embedding'].shape[1]} != encoder dim {self.dim}")
                hs.append(z["hash"].astype(np.uint64))
                es.append(z["embedding"].astype(np.float16))
        if hs:
            h, e = np.concatenate(hs), np.concatenate(es)
            h, first = np.unique(h, return_index=True)  # sorted, first shard wins
            self.hashes, self.embeddings = h, e[first]

    def __len__(self) -> int:
        return len(self.hashes)

    def lookup(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, row index into self.embeddings for found hashes)."""
        if len(self.hashes) == 0:
            return np.zeros(len(hashes), dtype=bool), np.zeros(len(hashes), dtype=np.int64)
        pos = np.searchsorted(self.hashes, hashes).clip(max=len(self.hashes) - 1)
        return self.hashes[pos] == hashes, pos

    def add(self, hashes: np.ndarray, embeddings: np.ndarray) -> None:
        """Write one new shard and merge it into memory."""
        if len(hashes) == 0:
            return
        emb16 = np.ascontiguousarray(embeddings, dtype=np.float16)
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"shard-{time.time_ns():020d}-{os.getpid()}.npz"
        with atomic_path(name) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, hash=hashes.astype(np.uint64), embedding=emb16)
        h = np.concatenate([self.hashes, hashes.astype(np.uint64)])
        e = np.concatenate([self.embeddings, emb16])
        h, first = np.unique(h, return_index=True)
        self.hashes, self.embeddings = h, e[first]


class EmbeddingReader:
    """Padded event-embedding batches for training; everything is loaded once, a batch is one vectorised gather.

    With numeric features (`texts/numeric`, written when `text.numeric_features` is on) each event vector is
    the text embedding followed by the K features times the file's `scale`, and `dim` is D + K. `numeric`:
    None uses them when the file has them (older files: text only), False ignores them, True requires them.
    """

    def __init__(self, path: str | Path, numeric: bool | None = None):
        store = read_embedding_store(path, numeric=numeric)
        self.attrs, self.hashes, self.pair_ids = store.attrs, store.hashes, store.pair_ids
        self.offsets, self.rows, self.numeric_attrs = store.offsets, store.rows, store.numeric_attrs
        emb = store.embedding
        self.text_dim = int(emb.shape[1])
        self.numeric_features: list[str] = store.numeric_features
        if store.numeric is not None:
            scaled = store.numeric.astype(np.float32) * float(self.numeric_attrs["scale"])
            emb = np.concatenate([emb, scaled.astype(np.float16)], axis=1)
        self.dim = int(emb.shape[1])
        # one extra zero row: padding slots gather it, so no masking copy is needed afterwards
        self._table = torch.from_numpy(np.concatenate([emb, np.zeros((1, self.dim), dtype=np.float16)]))
        self._pad_row = len(emb)
        self._index = {p: i for i, p in enumerate(self.pair_ids)}

    def __len__(self) -> int:
        return len(self.pair_ids)

    def __contains__(self, pair_id: str) -> bool:
        return pair_id in self._index

    def n_events(self, pair_id: str) -> int:
        i = self._index[pair_id]
        return int(self.offsets[i + 1] - self.offsets[i])

    def batch(self, pair_ids, max_events: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, max_events, dim) float32 and a (B, max_events) bool mask (True = real event), oldest kept first."""
        try:
            idx = np.fromiter((self._index[p] for p in pair_ids), dtype=np.int64)
        except KeyError as e:
            raise KeyError(f"pair {e.args[0]!r} is not in the embedding store") from None
        start, end = self.offsets[idx], self.offsets[idx + 1]
        length = np.minimum(end - start, max_events)
        first = end - length  # keep the most recent max_events
        slot = np.arange(max_events)[None, :]
        mask = slot < length[:, None]
        pos = np.where(mask, first[:, None] + slot, 0)
        gather = np.where(mask, self.rows[pos] if len(self.rows) else 0, self._pad_row)
        x = self._table[torch.from_numpy(gather)].float()
        return x, torch.from_numpy(mask)
