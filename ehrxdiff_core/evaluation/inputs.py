"""Readers for the artifacts evaluation consumes, with errors that name the file and column.

What each artifact holds, and the image store's opener, are in `ehrxdiff_core/artifacts`; the column
lists below come from there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, PAIR_IMAGES, PREV, TRG, TRIPLETS, label_columns
from ehrxdiff_core.artifacts.images import ImageStore, open_image_store
from ehrxdiff_core.artifacts.parquet import ArtifactError
from ehrxdiff_core.artifacts.samples import MANIFEST_REQUIRED, sample_path
from ehrxdiff_core.data.errors import DataError


class InputError(DataError):
    """An input artifact is missing or malformed; the message names the file and column."""


def open_images(path: str | Path) -> ImageStore:
    """The image store of the `images` stage (`images/cxr_{size}.h5`); a missing or malformed one is an InputError."""
    try:
        return open_image_store(path)
    except ArtifactError as err:
        raise InputError(str(err)) from None


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
    cols = COHORT_IMAGES.columns("dicom_id", "subject_id", "split", "age", "gender", *labels)
    return read_table(path, cols, "cohort images table")


def read_triplets(path: str | Path, labels: tuple[str, ...]) -> pd.DataFrame:
    cols = [*PAIR_IMAGES, *TRIPLETS.columns("subject_id", "split", "age", "gender")]
    cols += TRIPLETS.columns(*label_columns(PREV, labels), *label_columns(TRG, labels))
    return read_table(path, cols, "triplets table")


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest of a samples folder, one row per (pair, seed_index) with the image's relative `path`.

    Seed 0 of a pair is `{pair_id}.png`, seed k is `seed{k}/{pair_id}.png` (`artifacts/samples.py`);
    manifests written before several seeds existed have neither column and mean seed 0 only.
    """
    df = read_table(Path(folder) / "manifest.parquet", MANIFEST_REQUIRED, "sample manifest")
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
    m = df[label_columns(prefix, labels)].astype("float64").to_numpy()
    bad = ~np.isnan(m) & (m != 0) & (m != 1)
    if bad.any():
        col = labels[int(np.argwhere(bad)[0][1])]
        raise InputError(f"column {prefix}{col}: values must be 1.0/0.0/NULL (uncertain -1 mapped to NULL upstream)")
    return m
