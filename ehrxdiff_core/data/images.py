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


def load_resized(path: Path, size: int, resize: str = "stretch") -> np.ndarray:
    """One image file → uint8 (size, size): 8-bit grayscale, then squared by `resize`."""
    with Image.open(path) as img:
        img.load()
        gray = to_gray8(img)
    return np.asarray(square(gray, size, resize), dtype=np.uint8)


def _try_load(path: Path, size: int, resize: str):
    try:
        return load_resized(path, size, resize), None
    except (OSError, ValueError, Image.DecompressionBombError) as err:  # missing, truncated, not an image
        return None, f"{type(err).__name__}: {err}"


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
    listed = pc.unique(pq.read_table(images_parquet, columns=["path"]).column("path"))
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


def build_image_store(images_parquet: Path, cxr_root: Path, cfg: ImagesConfig, out_h5: Path) -> dict:
    """Write images/cxr_{size}.h5 (pixels uint8 (N, size, size), dicom_id, attrs size/resize/n_bad)."""
    table = pq.read_table(images_parquet, columns=["dicom_id", "path"])
    # one entry per image even if the cohort lists it twice
    seen: dict[str, str] = {}
    for d, p in zip(table.column("dicom_id").to_pylist(), table.column("path").to_pylist()):
        seen.setdefault(d, p)
    dicom_ids = sorted(seen)
    if not dicom_ids:
        raise DataError(f"no images listed in {images_parquet} (run the cohort stage)")
    size, resize = int(cfg.size), cfg.resize
    root = Path(cxr_root)
    bad: list[tuple[str, str]] = []
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    workers = max(1, min(8, cpus))  # the job's allocation, not the node's core count
    with atomic_path(out_h5) as tmp:
        with h5py.File(tmp, "w") as h5:
            pixels = h5.create_dataset(
                "pixels", shape=(0, size, size), maxshape=(None, size, size), dtype=np.uint8, chunks=(1, size, size)
            )
            kept: list[str] = []
            buf: list[np.ndarray] = []

            def flush() -> None:
                if buf:
                    n0 = pixels.shape[0]
                    pixels.resize(n0 + len(buf), axis=0)
                    pixels[n0:] = np.stack(buf)
                    buf.clear()

            paths = [root / seen[d] for d in dicom_ids]
            chunk = 64 * workers  # bounded number of decoded images in flight
            with ThreadPoolExecutor(workers) as pool, tqdm(total=len(paths), desc=f"images {size}px", unit="img") as bar:
                for start in range(0, len(paths), chunk):
                    batch = paths[start : start + chunk]
                    for d, p, (arr, err) in zip(dicom_ids[start:], batch, pool.map(lambda q: _try_load(q, size, resize), batch)):
                        bar.update(1)
                        if arr is None:
                            bad.append((str(p), err))
                            log.warning("bad image %s (%s): %s", d, p, err)
                            continue
                        kept.append(d)
                        buf.append(arr)
                    flush()
            flush()
            frac = len(bad) / len(dicom_ids)
            if frac > cfg.max_bad_fraction:
                examples = "; ".join(f"{p} ({e})" for p, e in bad[:3])
                raise DataError(
                    f"{len(bad)} of {len(dicom_ids)} images missing or corrupt ({frac:.1%}) under {root}, above "
                    f"images.max_bad_fraction={cfg.max_bad_fraction}; e.g. {examples}"
                )
            h5.create_dataset("dicom_id", data=np.array(kept, dtype=object), dtype=h5py.string_dtype("utf-8"))
            h5.attrs["size"] = size
            h5.attrs["resize"] = resize
            h5.attrs["n_bad"] = len(bad)
    counts = {"images": len(dicom_ids), "stored": len(kept), "n_bad": len(bad), "bad_fraction": round(frac, 6)}
    log.info("images: %s", counts)
    return counts


class ImageStore:
    """Reader of images/cxr_{size}.h5; reopens the file after a fork (DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"image store not found: {self.path} (run the images stage)")
        with h5py.File(self.path, "r") as h5:
            self.dicom_ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in h5["dicom_id"][:]]
            self.size = int(h5.attrs["size"])
            self.resize = str(h5.attrs.get("resize", "stretch"))  # stores without the attribute were stretched
            self.n_bad = int(h5.attrs.get("n_bad", 0))
        self._index = {d: i for i, d in enumerate(self.dicom_ids)}
        self._h5 = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.dicom_ids)

    def __contains__(self, dicom_id: object) -> bool:
        return dicom_id in self._index

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            self._h5 = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._h5

    def load(self, dicom_ids) -> np.ndarray:
        """uint8 (B, size, size) in the order asked."""
        try:
            idx = np.array([self._index[d] for d in dicom_ids], dtype=np.int64)
        except KeyError as err:
            raise KeyError(f"dicom_id {err.args[0]} not in image store {self.path}") from None
        if idx.size == 0:
            return np.zeros((0, self.size, self.size), np.uint8)
        uniq, inverse = np.unique(idx, return_inverse=True)  # h5py needs increasing indices
        return self._file()["pixels"][uniq][inverse]

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None
