"""Readers for the artifacts evaluation consumes, with errors that name the file and column.

Images go through `open_images` so the h5 reader can follow `ehrxdiff_core.data.images.ImageStore`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from PIL import Image


class InputError(ValueError):
    """An input artifact is missing or malformed; the message names the file and column."""


class _H5Images:
    """Minimal reader of `images/cxr_{size}.h5` (same interface as `data.images.ImageStore`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"image file not found: {self.path}")
        with h5py.File(self.path, "r") as f:
            for key in ("pixels", "dicom_id"):
                if key not in f:
                    raise InputError(f"{self.path}: dataset '{key}' missing")
            self.dicom_ids = [s.decode() if isinstance(s, bytes) else str(s) for s in f["dicom_id"][()]]
            self.size = int(f["pixels"].shape[1])
        self._index = {d: i for i, d in enumerate(self.dicom_ids)}

    def __contains__(self, dicom_id: str) -> bool:
        return dicom_id in self._index

    def load(self, dicom_ids) -> np.ndarray:
        missing = [d for d in dicom_ids if d not in self._index]
        if missing:
            raise InputError(f"{self.path}: {len(missing)} dicom_id(s) not in the image file, e.g. {missing[:3]}")
        idx = np.array([self._index[d] for d in dicom_ids], dtype=np.int64)
        if len(idx) == 0:
            return np.zeros((0, self.size, self.size), np.uint8)
        order = np.argsort(idx)
        uniq, inverse = np.unique(idx[order], return_inverse=True)
        with h5py.File(self.path, "r") as f:
            block = f["pixels"][uniq]  # h5py fancy indexing needs increasing unique indices
        out = np.empty((len(idx), self.size, self.size), np.uint8)
        out[order] = block[inverse]
        return out


def open_images(path: str | Path):
    """Image store for the h5 of the `images` stage (the data package's ImageStore when present)."""
    try:
        from ehrxdiff_core.data.images import ImageStore
    except ImportError:
        return _H5Images(path)
    if not Path(path).exists():
        raise InputError(f"image file not found: {path}")
    return ImageStore(path)


def read_table(path: str | Path, required: list[str], what: str) -> pd.DataFrame:
    """Read a Parquet table and check that the columns this stage needs are present."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    df = pd.read_parquet(path)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path}: column(s) {missing} missing from {what}")
    return df


def read_cohort_images(path: str | Path, labels: tuple[str, ...]) -> pd.DataFrame:
    return read_table(path, ["dicom_id", "subject_id", "split", "age", "gender", *labels], "cohort images table")


def read_triplets(path: str | Path, labels: tuple[str, ...]) -> pd.DataFrame:
    cols = ["pair_id", "subject_id", "prev_dicom_id", "trg_dicom_id", "split", "age", "gender"]
    cols += [f"prev_{l}" for l in labels] + [f"trg_{l}" for l in labels]
    return read_table(path, cols, "triplets table")


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest of a samples folder (`samples/{split}/manifest.parquet`)."""
    return read_table(Path(folder) / "manifest.parquet", ["pair_id", "seed", "sampler", "steps", "guidance"], "sample manifest")


def read_pngs(folder: str | Path, pair_ids: list[str], size: int) -> np.ndarray:
    """Generated images `{folder}/{pair_id}.png` as uint8 (N, size, size); wrong size is an error."""
    folder = Path(folder)
    out = np.empty((len(pair_ids), size, size), np.uint8)
    for i, pid in enumerate(pair_ids):
        path = folder / f"{pid}.png"
        if not path.exists():
            raise InputError(f"generated image missing: {path}")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        if arr.shape != (size, size):
            raise InputError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} (images.size)")
        out[i] = arr
    return out


def truth_severity_columns(truth: pd.DataFrame) -> list[str]:
    """Every float column of truth.parquet other than ids and time is a latent severity."""
    skip = {"dicom_id", "subject_id", "hadm_id", "study_id", "time"}
    return [c for c in truth.columns if c not in skip and pd.api.types.is_float_dtype(truth[c])]


def label_matrix(df: pd.DataFrame, prefix: str, labels: tuple[str, ...]) -> np.ndarray:
    """Labels as float (N, L) with NaN for NULL; values other than 1/0/NULL are an error."""
    m = df[[f"{prefix}{l}" for l in labels]].astype("float64").to_numpy()
    bad = ~np.isnan(m) & (m != 0) & (m != 1)
    if bad.any():
        col = labels[int(np.argwhere(bad)[0][1])]
        raise InputError(f"column {prefix}{col}: values must be 1.0/0.0/NULL (uncertain -1 mapped to NULL upstream)")
    return m

