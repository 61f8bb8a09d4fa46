"""Readers for the artifacts evaluation consumes, with errors that name the file and column.

Images are read through the data package's `ImageStore` (contract: images/cxr_{size}.h5).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.images import ImageStore
from ehrxdiff_core.samples_folder import sample_path


class InputError(DataError):
    """An input artifact is missing or malformed; the message names the file and column."""


def open_images(path: str | Path) -> ImageStore:
    """The image store of the `images` stage (`images/cxr_{size}.h5`)."""
    if not Path(path).exists():
        raise InputError(f"image file not found: {path} (run the images stage)")
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
    """The manifest of a samples folder, one row per (pair, seed_index) with the image's relative `path`.

    Seed 0 of a pair is `{pair_id}.png`, seed k is `seed{k}/{pair_id}.png` (`samples_folder.py`);
    manifests written before several seeds existed have neither column and mean seed 0 only.
    """
    df = read_table(Path(folder) / "manifest.parquet", ["pair_id", "seed", "sampler", "steps", "guidance"], "sample manifest")
    if "seed_index" not in df.columns:
        df["seed_index"] = 0
    if "path" not in df.columns:
        df["path"] = [sample_path(p, k) for p, k in zip(df["pair_id"], df["seed_index"])]
    return df


def read_images(folder: str | Path, rel_paths: list[str], size: int) -> np.ndarray:
    """PNG images `{folder}/{path}` as uint8 (N, size, size); a missing file or a wrong size is an error."""
    folder = Path(folder)
    out = np.empty((len(rel_paths), size, size), np.uint8)
    for i, rel in enumerate(rel_paths):
        path = folder / rel
        if not path.exists():
            raise InputError(f"generated image missing: {path}")
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
        if arr.shape != (size, size):
            raise InputError(f"{path}: image is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} (images.size)")
        out[i] = arr
    return out


def read_pngs(folder: str | Path, pair_ids: list[str], size: int) -> np.ndarray:
    """Seed-0 images `{folder}/{pair_id}.png` as uint8 (N, size, size)."""
    return read_images(folder, [f"{pid}.png" for pid in pair_ids], size)


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

