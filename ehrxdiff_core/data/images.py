"""The cohort's chest X-rays, resized once into one HDF5 file that training reads fast.

Pixels become 8-bit grayscale first:

- 8-bit modes (`L`, `LA`, `P`, `RGB`, `RGBA`, …) go through Pillow's `convert("L")`: `L` is kept
  as it is (a MIMIC-CXR-JPG or synthetic JPEG gives exactly the pixels it holds), colour becomes
  ITU-R 601-2 luma (L = 0.299 R + 0.587 G + 0.114 B) and alpha is dropped.
- High-bit-depth and numeric modes (`I;16`, `I;16B`, `I;16L`, `I`, `F`: 12- or 16-bit PNGs and
  TIFFs) are windowed over the image's own pixel range: min → 0, max → 255, linear in between,
  rounded. A 12-bit image stored in 16 bits (values 0..4095) spans 0..255 instead of being
  clipped at 255. Min–max keeps every pixel's relative intensity and needs no setting; a few
  extreme pixels (burned-in markers) narrow the contrast of the rest. A constant image becomes 0.

Then `images.resize` makes it square (bicubic throughout): `stretch` (the paper: the whole image
to size × size, aspect ratio not kept), `pad` (aspect ratio kept, the long side fits, the short
side padded symmetrically with black) or `center_crop` (the central square of the short side).
Missing or corrupt images are counted, logged and left out; too many of them fail the stage.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import get_args

import h5py
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, ImageOps
from tqdm import tqdm

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES
from ehrxdiff_core.artifacts.images import create_pixels, write_index
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import ImagesConfig
from ehrxdiff_core.data.errors import DataError

log = logging.getLogger(__name__)

EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"})
WINDOWED_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
RESIZE_POLICIES = get_args(ImagesConfig.model_fields["resize"].annotation)  # stretch, pad, center_crop


def to_gray8(img: Image.Image) -> Image.Image:
    """Any supported mode → mode `L` by the rule in the module docstring."""
    if img.mode in EIGHT_BIT_MODES:
        return img.convert("L")
    if img.mode not in WINDOWED_MODES:
        raise ValueError(f"unsupported image mode {img.mode!r}")
    x = np.asarray(img, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"non-finite pixel values in a mode {img.mode!r} image")
    if hi == lo:
        return Image.new("L", img.size, 0)
    gray = np.rint((x - lo) * (255.0 / (hi - lo)))
    return Image.fromarray(gray.astype(np.uint8), "L")


def square(gray: Image.Image, size: int, resize: str = "stretch") -> Image.Image:
    """A grayscale image → size × size by the `images.resize` policy, bicubic."""
    if resize == "stretch":
        return gray.resize((size, size), Image.Resampling.BICUBIC)
    if resize == "pad":
        return ImageOps.pad(gray, (size, size), Image.Resampling.BICUBIC, color=0)
    if resize == "center_crop":  # crop first, so no pixel outside the square reaches the edges
        w, h = gray.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return gray.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
    raise ValueError(f"images.resize must be one of {RESIZE_POLICIES}, not {resize!r}")


def load_resized(path: Path, size: int, resize: str = "stretch", jpeg_draft: bool = False) -> np.ndarray:
    """One image file → uint8 (size, size): 8-bit grayscale, then squared by `resize`.

    `jpeg_draft` lets a JPEG decode at the smallest DCT scale (1/2, 1/4 or 1/8, libjpeg's scaled
    IDCT) whose width and height both stay at or above `size`, so a 2,544 × 3,056 MIMIC image
    headed for 256 px decodes 318 × 382 pixels instead of 7.8 million; the bicubic step then works
    from that. Other formats ignore it.
    """
    with Image.open(path) as img:
        if jpeg_draft and img.format == "JPEG":
            img.draft(img.mode, (size, size))
        img.load()
        gray = to_gray8(img)
    return np.asarray(square(gray, size, resize), dtype=np.uint8)


def _try_load(path: str, size: int, resize: str, jpeg_draft: bool = False):
    try:
        return load_resized(Path(path), size, resize, jpeg_draft), None
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, truncated, not an image
        return None, f"{type(err).__name__}: {err}"


def _decoder_id() -> str:
    """Hash of the source of every function that turns a file into stored pixels: editing one of
    them starts a new cache folder instead of mixing old and new pixels."""
    src = "".join(inspect.getsource(f) for f in (to_gray8, square, load_resized))
    return hashlib.blake2b(src.encode(), digest_size=4).hexdigest()


def file_keys(paths: list[str]) -> tuple[np.ndarray, list[str | None]]:
    """A uint64 identity per file — blake2b of (absolute path, size in bytes, mtime_ns) — and, for
    files that cannot be stat'ed, the error (their key is 0 and never cached)."""
    keys = np.zeros(len(paths), dtype=np.uint64)
    errors: list[str | None] = [None] * len(paths)
    for i, p in enumerate(paths):
        try:
            st = os.stat(p)
        except OSError as err:
            errors[i] = f"{type(err).__name__}: {err}"
            continue
        ident = f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}".encode()
        keys[i] = int.from_bytes(hashlib.blake2b(ident, digest_size=8).digest(), "little") or 1
    return keys, errors


class DecodedImageCache:
    """Persistent cache of decoded images: append-only HDF5 shards (`key` uint64, `pixels` uint8
    (n, size, size)) in one subfolder per (size, resize, draft, decoder source).

    An image is keyed by its file (absolute path, size, mtime), not by the cohort that lists it, so
    the store of any cohort is assembled from here and only files never seen (or rewritten) are
    decoded. A shard is written to a temporary name and renamed, so a killed job keeps every
    finished shard and loses at most one shard's work. Only the keys are held in memory.
    """

    def __init__(self, root: str | Path, size: int, resize: str, jpeg_draft: bool):
        mode = "draft" if jpeg_draft else "full"
        self.folder = Path(root) / f"{size}px-{resize}-{mode}-{_decoder_id()}"
        self.size = size
        self.shards: list[Path] = []
        keys, shard, row = [], [], []
        for path in sorted(self.folder.glob("shard-*.h5")) if self.folder.is_dir() else []:
            try:
                with h5py.File(path, "r") as h5:
                    ks = h5["key"][:].astype(np.uint64)
                    if h5["pixels"].shape[1:] != (size, size):
                        raise ValueError(f"pixels of shape {h5['pixels'].shape[1:]}, not ({size}, {size})")
            except (OSError, KeyError, ValueError) as err:  # a shard we cannot read is skipped, not trusted
                log.warning("image cache: skipping unreadable shard %s (%s)", path, err)
                continue
            self.shards.append(path)
            keys.append(ks)
            shard.append(np.full(len(ks), len(self.shards) - 1, dtype=np.int32))
            row.append(np.arange(len(ks), dtype=np.int64))
        self._set(
            np.concatenate(keys) if keys else np.zeros(0, np.uint64),
            np.concatenate(shard) if shard else np.zeros(0, np.int32),
            np.concatenate(row) if row else np.zeros(0, np.int64),
        )

    def _set(self, keys: np.ndarray, shard: np.ndarray, row: np.ndarray) -> None:
        self.keys, first = np.unique(keys, return_index=True)  # sorted; the first shard wins
        self.shard, self.row = shard[first], row[first]

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Index into the cache for each key, -1 where absent."""
        if len(self.keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        pos = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return np.where(self.keys[pos] == keys, pos, -1)

    def add(self, keys: np.ndarray, pixels: np.ndarray) -> None:
        """Write one new shard and index it."""
        if len(keys) == 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        name = self.folder / f"shard-{time.time_ns():020d}-{os.getpid()}.h5"
        with atomic_path(name) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.create_dataset("key", data=keys.astype(np.uint64))
                h5.create_dataset("pixels", data=pixels.astype(np.uint8))  # contiguous: fast row reads
        self.shards.append(name)
        self._set(
            np.concatenate([self.keys, keys.astype(np.uint64)]),
            np.concatenate([self.shard, np.full(len(keys), len(self.shards) - 1, np.int32)]),
            np.concatenate([self.row, np.arange(len(keys), dtype=np.int64)]),
        )

    def read(self, idx: np.ndarray) -> np.ndarray:
        """uint8 (len(idx), size, size) for cache indices from `lookup`, in that order."""
        out = np.empty((len(idx), self.size, self.size), dtype=np.uint8)
        shard, row = self.shard[idx], self.row[idx]
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            rows, inverse = np.unique(row[where], return_inverse=True)  # h5py reads increasing rows
            with h5py.File(self.shards[s], "r") as h5:
                out[where] = h5["pixels"][rows][inverse]
        return out


def image_inventory_hash(
    images_parquet: Path, root: Path, workers: int = 16, probe: int = 512, slow_stat_s: float = 20e-6
) -> str:
    """What the cohort's image files are now: every path listed in `images_parquet` (relative to
    `root`) with its size and mtime_ns, or `missing`, sorted and hashed.

    The images rule reruns when this changes: an image added to or removed from the listing, or a
    listed file rewritten, deleted or restored; files the listing does not name are never read.
    The first `probe` paths are stat'ed one by one. If they took `slow_stat_s` or more each (a
    network filesystem's round trip, a cold disk), the rest run on `workers` threads, which wait
    for their round trips together (`stat` releases the GIL); otherwise (a local disk with a warm
    cache: a few µs per stat, where threads only contend for the GIL) the loop stays serial.
    """
    listed = pc.unique(pq.read_table(images_parquet, columns=COHORT_IMAGES.columns("path")).column("path"))
    paths = listed.take(pc.array_sort_indices(listed)).to_pylist()  # Arrow sorts 10× faster than sorted()
    base = str(root)

    def stat_lines(chunk: list[str]) -> list[str]:
        lines = []
        for rel in chunk:
            try:
                st = os.stat(os.path.join(base, rel))
            except (FileNotFoundError, NotADirectoryError):
                lines.append(f"{rel}\tmissing")
            except OSError as err:  # unreadable: a change of permissions is a change too
                lines.append(f"{rel}\terror {err.errno}")
            else:
                lines.append(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}")
        return lines

    t = time.perf_counter()
    lines = stat_lines(paths[:probe])
    per_stat = (time.perf_counter() - t) / max(1, min(probe, len(paths)))
    rest = paths[probe:]
    if workers > 1 and rest and per_stat >= slow_stat_s:
        step = -(-len(rest) // (4 * workers))  # a few chunks per thread evens out slow ones
        with ThreadPoolExecutor(workers) as pool:
            for part in pool.map(stat_lines, [rest[i : i + step] for i in range(0, len(rest), step)]):
                lines.extend(part)
    else:
        lines.extend(stat_lines(rest))
    n_missing = sum(line.endswith("\tmissing") for line in lines)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]
    return f"{len(paths)} listed, {n_missing} missing, sha256 {digest}"


def build_image_store(
    images_parquet: Path, cxr_root: Path, cfg: ImagesConfig, out_h5: Path, workers: int | None = None
) -> dict:
    """Write images/cxr_{size}.h5 (layout: artifacts/images.py) for the images `images_parquet` lists, decoding
    only those the cache (`images.cache_dir`) does not hold yet; `workers` decode threads (default: the job's
    CPUs, ≤ 8)."""
    table = pq.read_table(images_parquet, columns=COHORT_IMAGES.columns("dicom_id", "path"))
    # one entry per image even if the cohort lists it twice
    seen: dict[str, str] = {}
    for d, p in zip(table.column("dicom_id").to_pylist(), table.column("path").to_pylist()):
        seen.setdefault(d, p)
    dicom_ids = sorted(seen)
    if not dicom_ids:
        raise DataError(f"no images listed in {images_parquet} (run the cohort stage)")
    size, resize = int(cfg.size), cfg.resize
    root = Path(cxr_root)
    if workers is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
        workers = max(1, min(8, cpus))  # the job's allocation, not the node's core count
    paths = [str(root / seen[d]) for d in dicom_ids]
    keys, stat_errors = file_keys(paths)
    cache = DecodedImageCache(cfg.cache_dir, size, resize, cfg.jpeg_draft)
    where = cache.lookup(keys)
    bad: dict[int, str] = {i: e for i, e in enumerate(stat_errors) if e is not None}
    todo = [i for i in range(len(paths)) if where[i] < 0 and i not in bad]
    log.info(
        "images: %d listed, %d in the cache (%s), %d to decode on %d thread(s)",
        len(paths),
        int((where >= 0).sum()),
        cache.folder,
        len(todo),
        workers,
    )

    # decode what the cache lacks, one cache shard at a time (a killed job keeps finished shards).
    # Threads, not processes: Pillow releases the GIL while it decodes and resizes, so 2 threads
    # decode 1.7x as fast as one on 2 cores, where a process pool reached 1.35x (start-up and
    # pickling; bench/image_decode.py); threads also need no importable __main__, which a
    # Snakemake script is not.
    pool = ThreadPoolExecutor(workers) if workers > 1 and len(todo) > 32 else None
    n_decoded = 0
    try:
        with tqdm(total=len(todo), desc=f"decode {size}px", unit="img") as bar:
            for start in range(0, len(todo), cfg.cache_shard_images):
                part = todo[start : start + cfg.cache_shard_images]
                args = (
                    [paths[i] for i in part],
                    [size] * len(part),
                    [resize] * len(part),
                    [cfg.jpeg_draft] * len(part),
                )
                results = pool.map(_try_load, *args) if pool else map(_try_load, *args)
                ok_i, ok_px = [], []
                for i, (arr, err) in zip(part, results):
                    bar.update(1)
                    if arr is None:
                        bad[i] = err
                    else:
                        ok_i.append(i)
                        ok_px.append(arr)
                if ok_i:
                    cache.add(keys[ok_i], np.stack(ok_px))
                    n_decoded += len(ok_i)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    for i in sorted(bad):
        log.warning("bad image %s (%s): %s", dicom_ids[i], paths[i], bad[i])
    frac = len(bad) / len(dicom_ids)
    if frac > cfg.max_bad_fraction:
        examples = "; ".join(f"{paths[i]} ({bad[i]})" for i in sorted(bad)[:3])
        raise DataError(
            f"{len(bad)} of {len(dicom_ids)} images missing or corrupt ({frac:.1%}) under {root}, above "
            f"images.max_bad_fraction={cfg.max_bad_fraction}; e.g. {examples}"
        )

    # assemble the store for this cohort from the cache, in dicom_id order
    keep = np.array([i for i in range(len(paths)) if i not in bad], dtype=np.int64)
    idx = cache.lookup(keys[keep])
    n_from_cache = len(keep) - n_decoded
    block = max(1, (256 << 20) // (size * size))  # ~256 MB of pixels in memory at a time
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as h5:
            pixels = create_pixels(h5, len(keep), size)
            for b in range(0, len(keep), block):
                pixels[b : b + block] = cache.read(idx[b : b + block])
            write_index(
                h5,
                [dicom_ids[i] for i in keep],
                size=size,
                resize=resize,
                jpeg_draft=bool(cfg.jpeg_draft),
                n_bad=len(bad),
                decoded=n_decoded,
                from_cache=n_from_cache,
            )
    counts = {
        "images": len(dicom_ids),
        "stored": len(keep),
        "n_bad": len(bad),
        "bad_fraction": round(frac, 6),
        "decoded": n_decoded,
        "from_cache": n_from_cache,
    }
    log.info("images: %s", counts)
    return counts
