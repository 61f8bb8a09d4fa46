"""Content-addressed embedding store (`embeddings/events.h5`), its persistent cache, and the training reader.

Each unique (encoder, augmentation settings, event text) is embedded once and stored once as float16; pairs
are offsets into a row list. Optional per-text numeric features (`texts/numeric`) sit beside the embeddings. This replaces the paper's 1024x1536 float16 matrix per pair (~3 MB/pair).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np
import torch

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


def write_store(out_h5: Path, *, hashes: np.ndarray, embeddings: np.ndarray, pair_ids: list[str],
                offsets: np.ndarray, rows: np.ndarray, attrs: dict, numeric: np.ndarray | None = None,
                numeric_attrs: dict | None = None) -> None:
    """Write embeddings/events.h5 per the contract (texts + pairs groups), atomically.

    `numeric` (N x K, row-aligned with the embeddings) becomes `texts/numeric` with `numeric_attrs`; without it
    the file is exactly the text-only layout.
    """
    if numeric is not None and (numeric.ndim != 2 or numeric.shape[0] != len(hashes)):
        raise ValueError(f"{out_h5}: numeric features of shape {numeric.shape} do not match {len(hashes)} texts")
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as f:
            t = f.create_group("texts")
            t.create_dataset("hash", data=hashes.astype(np.uint64))
            t.create_dataset("embedding", data=embeddings.astype(np.float16),
                             chunks=(min(max(len(hashes), 1), 4096), embeddings.shape[1]) if len(hashes) else None)
            for k, v in attrs.items():
                t.attrs[k] = v
            if numeric is not None:
                d = t.create_dataset("numeric", data=numeric.astype(np.float32))
                for k, v in (numeric_attrs or {}).items():
                    d.attrs[k] = v
            p = f.create_group("pairs")
            p.create_dataset("pair_id", data=np.array(pair_ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            p.create_dataset("offsets", data=offsets.astype(np.int64))
            # rows dominate the file at scale (one int64 per event); small ints shuffle+gzip to a few bits each
            p.create_dataset("rows", data=rows.astype(np.int64), chunks=(min(max(len(rows), 1), 1 << 20),),
                             compression="gzip", compression_opts=4, shuffle=True)


def _attrs(obj) -> dict:
    return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in obj.attrs.items()}


class EmbeddingReader:
    """Padded event-embedding batches for training; everything is loaded once, a batch is one vectorised gather.

    With numeric features (`texts/numeric`, written when `text.numeric_features` is on) each event vector is
    the text embedding followed by the K features times the file's `scale`, and `dim` is D + K. `numeric`:
    None uses them when the file has them (older files: text only), False ignores them, True requires them.
    """

    def __init__(self, path: str | Path, numeric: bool | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"embedding store not found: {path} (run the `embed` rule)")
        with h5py.File(path, "r") as f:
            self.attrs = _attrs(f["texts"])
            emb = f["texts/embedding"][:]
            self.hashes = f["texts/hash"][:]
            self.pair_ids = [s.decode() if isinstance(s, bytes) else s for s in f["pairs/pair_id"][:]]
            self.offsets = f["pairs/offsets"][:].astype(np.int64)
            self.rows = f["pairs/rows"][:].astype(np.int64)
            has_numeric = "numeric" in f["texts"]
            if numeric and not has_numeric:
                raise ValueError(f"{path}: no texts/numeric dataset; it is written when text.numeric_features "
                                 "is true (re-run the `embed` rule)")
            feats, self.numeric_attrs = None, {}
            if has_numeric and numeric is not False:
                feats, self.numeric_attrs = f["texts/numeric"][:], _attrs(f["texts/numeric"])
        self.text_dim = int(emb.shape[1])
        self.numeric_features: list[str] = []
        if feats is not None:
            names = json.loads(self.numeric_attrs.get("features", "[]"))
            if feats.ndim != 2 or feats.shape[0] != emb.shape[0] or len(names) != feats.shape[1]:
                raise ValueError(f"{path}: texts/numeric has shape {feats.shape} and features {names}; expected "
                                 f"({emb.shape[0]}, {len(names)}) row-aligned with texts/embedding")
            if "scale" not in self.numeric_attrs:
                raise ValueError(f"{path}: texts/numeric lacks its 'scale' attribute")
            self.numeric_features = names
            scaled = feats.astype(np.float32) * float(self.numeric_attrs["scale"])
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
