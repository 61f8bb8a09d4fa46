"""Pairs, images and event embeddings as training batches, with a stateless step → batch schedule.

Readers are reached through two tiny interfaces (`ImageSource`, `EventSource`), met by the image
store's opener (`ehrxdiff_core/artifacts/images.py`) and the text stage's `EmbeddingReader`. Which
rows form step `s` depends only on (seed, s), never on a loader's state, so a resumed run sees
exactly the batches of the uninterrupted one (also under DDP: each rank takes its slice of the same
global batch).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from ehrxdiff_core.artifacts.cohort import PAIR_IMAGES, TRIPLETS
from ehrxdiff_core.artifacts.images import open_image_store

log = logging.getLogger(__name__)


class ImageSource(Protocol):
    dicom_ids: list[str]
    size: int

    def __contains__(self, dicom_id: str) -> bool: ...
    def load(self, dicom_ids: list[str]) -> np.ndarray: ...


class EventSource(Protocol):
    dim: int  # width of one event vector: text embedding (+ numeric features when the store has them)

    def __contains__(self, pair_id: str) -> bool: ...
    def batch(self, pair_ids: list[str], max_events: int) -> tuple[torch.Tensor, torch.Tensor]: ...


NO_LIMIT = 2**60  # cgroup v1 writes ~2**63 for "no limit"


def physical_memory_bytes() -> int:
    """RAM of this machine (psutil when installed, else os.sysconf)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def available_memory_bytes() -> int | None:
    """Memory free for new allocations now, page cache included (psutil, else /proc/meminfo); None if unknown."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def cgroup_memory_limits(
    proc_cgroup: str | Path = "/proc/self/cgroup", fs_root: str | Path = "/sys/fs/cgroup"
) -> list[int]:
    """Memory limits of this process's cgroup and its parents (v2 `memory.max`, v1 `memory.limit_in_bytes`).

    Slurm's cgroup plugin and containers enforce `--mem` this way, so the job's share is this, not the RAM.
    Inside a cgroup namespace the path may not exist under `fs_root`; the namespace root's file is read too.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return []
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2, unified hierarchy
            base, name = Path(fs_root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = Path(fs_root) / "memory", "memory.limit_in_bytes"
        else:
            continue
        rel = Path(path.lstrip("/"))
        for folder in [base / rel, *[base / q for q in rel.parents]]:
            try:
                text = (folder / name).read_text().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < NO_LIMIT:
                limits.append(int(text))
    return limits


def memory_limit_bytes() -> int:
    """The memory this job may use: the smallest of the RAM, its cgroup limits and Slurm's `--mem`
    (SLURM_MEM_PER_NODE, MB)."""
    limits = [physical_memory_bytes(), *cgroup_memory_limits()]
    slurm = os.environ.get("SLURM_MEM_PER_NODE", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append(int(slurm) * 2**20)
    return min(limits)


def image_cache_budget(fraction: float, processes: int = 1) -> int:
    """Bytes one of `processes` training processes on this node may spend keeping images in memory:
    `fraction` of the job's memory limit, or of the memory free now when that is less."""
    if not 0 < fraction <= 1:
        raise ValueError(f"compute.image_cache_fraction: must be in (0, 1], got {fraction}")
    base = memory_limit_bytes()
    free = available_memory_bytes()
    if free is not None:
        base = min(base, free)
    return int(fraction * base) // max(1, processes)


def open_embedding_reader(path: str | Path, numeric: bool | None = None) -> EventSource:
    """The event-embedding store of the embed stage (`embeddings/events.h5`).

    Event vectors are the text embedding followed by the store's numeric features when it has them
    (`text.numeric_features`), so `dim` = D + K and the models need no switch of their own; `numeric=False`
    reads the text embedding only, `True` requires the features.
    """
    from ehrxdiff_core.text.store import EmbeddingReader

    return EmbeddingReader(path, numeric=numeric)


def load_pairs(
    triplets: str | Path | pd.DataFrame,
    split: str,
    images: ImageSource,
    events: EventSource | None = None,
) -> pd.DataFrame:
    """Pairs of one split whose images (and embeddings, when given) exist; drops are logged with counts."""
    df = pd.read_parquet(triplets) if not isinstance(triplets, pd.DataFrame) else triplets
    need = {*PAIR_IMAGES, *TRIPLETS.columns("split")}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{triplets}: columns missing from triplets: {sorted(missing)}")
    df = df[df["split"] == split].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{triplets}: no '{split}' pairs (see cohort.split.fractions / cohort.split.key_file)")
    has_img = df["prev_dicom_id"].map(lambda d: d in images) & df["trg_dicom_id"].map(lambda d: d in images)
    if (~has_img).any():
        log.warning(
            "dropped %d of %d %s pairs whose images are missing from the image store", (~has_img).sum(), len(df), split
        )
    df = df[has_img]
    if events is not None:
        has_ev = df["pair_id"].map(lambda p: p in events)
        if (~has_ev).any():
            log.warning("dropped %d %s pairs without event embeddings", (~has_ev).sum(), split)
        df = df[has_ev]
    df = df[PAIR_IMAGES].reset_index(drop=True)
    if df.empty:
        raise ValueError(f"{triplets}: no usable '{split}' pairs (after dropping missing images/embeddings)")
    return df


def add_null_samples(pairs: pd.DataFrame) -> pd.DataFrame:
    """The paper's w_null augmentation: per unique target, one (prev → prev, no events) sample."""
    pairs = pairs.assign(null=False)
    nulls = pairs.drop_duplicates("trg_dicom_id").assign(trg_dicom_id=lambda d: d["prev_dicom_id"], null=True)
    return pd.concat([pairs, nulls], ignore_index=True)


def to_unit_range(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (B, S, S) → float (B, 1, S, S) in [-1, 1] (the contract's x/127.5 − 1)."""
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0).unsqueeze(1)


def from_unit_range(x: torch.Tensor) -> np.ndarray:
    """float (B, 1, S, S) in [-1, 1] → uint8 (B, S, S): the inverse of `to_unit_range`, rounded to the nearest level."""
    return ((x[:, 0].float().cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def step_indices(n: int, global_batch: int, step: int, seed: int) -> np.ndarray:
    """Row indices of optimizer step `step`: a stream of per-epoch permutations, cut into global batches."""
    start = step * global_batch
    pos = np.arange(start, start + global_batch)
    epochs = pos // n
    out = np.empty(global_batch, dtype=np.int64)
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n)
        sel = epochs == e
        out[sel] = perm[pos[sel] % n]
    return out


def pair_seed(seed: int, pair_id: str) -> int:
    """A per-pair seed independent of batch composition (seed + stable hash of the id)."""
    h = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:4], "little")
    return (seed + h) % (2**31)


class PairBatches:
    """Builds batches (prev, trg, events, mask, null) for rows of a pair table; opens readers lazily.

    `register_targets=True` (`ldm.register_target`) gives each pair's target moved onto its previous
    image (`models.registration.register`); while the images are cached in memory the registered
    targets are kept too, so each pair is registered once per process. `register_exposure=True`
    (`ldm.register_exposure`) also matches each registered target's exposure to its previous image.
    """

    def __init__(
        self,
        pairs: pd.DataFrame,
        images_h5: str | Path,
        embeddings_h5: str | Path | None,
        max_events: int,
        register_targets: bool = False,
        register_exposure: bool = False,
    ):
        self.pairs = pairs.reset_index(drop=True)
        if "null" not in self.pairs:
            self.pairs["null"] = False
        self.images_h5, self.embeddings_h5, self.max_events = images_h5, embeddings_h5, max_events
        self.register_targets = register_targets
        self.register_exposure = register_exposure
        self._images: ImageSource | None = None
        self._events: EventSource | None = None
        self._cache: dict[str, np.ndarray] | None = None
        self._registered: dict[tuple[str, str], np.ndarray] = {}  # (prev, trg dicom_id) → registered target (uint8)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def images(self) -> ImageSource:
        if self._images is None:
            self._images = open_image_store(self.images_h5)
        return self._images

    @property
    def events(self) -> EventSource:
        if self._events is None:
            self._events = open_embedding_reader(self.embeddings_h5)
        return self._events

    def prepare(self, cache_bytes: int) -> bool:
        """Open the readers here, before DataLoader workers fork (so they share the event table instead of
        each loading its own), and cache the images when they fit in `cache_bytes`; True when cached."""
        if self.embeddings_h5 is not None:
            _ = self.events  # opens the reader in this process
        return self.cache_images(cache_bytes)

    def cache_images(self, max_bytes: int) -> bool:
        """Keep the pixels of every needed image in memory when they fit in `max_bytes`; True when cached.

        Otherwise each batch reads its images from the image store (HDF5), which DataLoader workers
        (`train.num_workers`) can do ahead of the step.
        """
        ids = sorted(set(self.pairs["prev_dicom_id"]) | set(self.pairs["trg_dicom_id"]))
        n_kept = len(ids) + (
            len(self.pairs[["prev_dicom_id", "trg_dicom_id"]].drop_duplicates()) if self.register_targets else 0
        )
        need = n_kept * self.images.size**2
        if need > max_bytes:
            log.info(
                "images not cached: %d images need %.2f GiB, over this process's budget of %.2f GiB "
                "(compute.image_cache_fraction); batches read them from %s",
                n_kept,
                need / 2**30,
                max_bytes / 2**30,
                self.images_h5,
            )
            return False
        self._cache = dict(zip(ids, self.images.load(ids)))
        log.info(
            "images cached in memory: %d images, %.2f GiB (budget %.2f GiB)", len(ids), need / 2**30, max_bytes / 2**30
        )
        return True

    def _pixels(self, ids: list[str]) -> np.ndarray:
        if self._cache is not None:
            return np.stack([self._cache[i] for i in ids])
        return self.images.load(ids)

    def _targets(self, rows: pd.DataFrame, prev: np.ndarray) -> np.ndarray:
        """The target pixels of `rows`: as stored, or moved onto `prev` (the rows' previous pixels)."""
        trg = self._pixels(rows["trg_dicom_id"].tolist())
        if not self.register_targets:
            return trg
        from ehrxdiff_core.models.registration import register

        keys = list(zip(rows["prev_dicom_id"], rows["trg_dicom_id"]))
        todo = [i for i, k in enumerate(keys) if k not in self._registered]
        if todo:
            moved = from_unit_range(
                register(to_unit_range(trg[todo]), to_unit_range(prev[todo]), self.register_exposure)
            )
            if self._cache is None:  # not cached: registered afresh for every batch
                trg = trg.copy()
                trg[todo] = moved
                return trg
            self._registered.update(zip((keys[i] for i in todo), moved))
        return np.stack([self._registered[k] for k in keys])

    def get(self, idx: np.ndarray, with_events: bool = True) -> dict:
        rows = self.pairs.iloc[np.asarray(idx)]
        prev = self._pixels(rows["prev_dicom_id"].tolist())
        out = {
            "pair_id": rows["pair_id"].tolist(),
            "prev": to_unit_range(prev),
            "trg": to_unit_range(self._targets(rows, prev)),
            "null": torch.tensor(rows["null"].to_numpy(dtype=bool)),
        }
        if with_events and self.embeddings_h5 is not None:
            ev, mask = self.events.batch(rows["pair_id"].tolist(), self.max_events)
            ev, mask = ev.float(), mask.bool()
            null = out["null"]
            ev[null] = 0.0
            mask[null] = False
            out["events"], out["mask"] = ev, mask
        return out
