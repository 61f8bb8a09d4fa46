"""The `images` rule's artifact, `images/cxr_{size}.h5`: the cohort's images, resized once, and the one opener.

Layout: dataset `pixels`, uint8 (N, size, size), one HDF5 chunk per image (a training batch reads
scattered rows); dataset `dicom_id`, N UTF-8 strings in ascending order, row i naming the image in
`pixels[i]`; attributes `size`, `resize` (the `images.resize` policy), `jpeg_draft`, `n_bad` (images
listed but missing or corrupt, left out), `decoded` and `from_cache` (images decoded by this run or
copied from the decoded-image cache). Stores written before `resize` existed were stretched.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from ehrxdiff_core.artifacts.parquet import ArtifactError, MissingArtifactError

PATH = "images/cxr_{size}.h5"
PIXELS, DICOM_ID = "pixels", "dicom_id"
ATTRS = ("size", "resize", "jpeg_draft", "n_bad", "decoded", "from_cache")


def create_pixels(h5: h5py.File, n: int, size: int) -> h5py.Dataset:
    """The empty `pixels` dataset of a store being written; the writer fills it block by block."""
    return h5.create_dataset(PIXELS, shape=(n, size, size), dtype=np.uint8, chunks=(1, size, size))


def write_index(h5: h5py.File, dicom_ids: list[str], **attrs) -> None:
    """The `dicom_id` dataset (row order of `pixels`) and the attributes `ATTRS`, all of them, in that order."""
    if len(dicom_ids) != h5[PIXELS].shape[0]:
        raise ArtifactError(f"{h5.filename}: {len(dicom_ids)} dicom ids for {h5[PIXELS].shape[0]} images")
    if sorted(attrs) != sorted(ATTRS):
        raise ArtifactError(f"{h5.filename}: image store attributes {sorted(attrs)}, expected {sorted(ATTRS)}")
    h5.create_dataset(DICOM_ID, data=np.array(dicom_ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
    for key in ATTRS:
        h5.attrs[key] = attrs[key]


class ImageStore:
    """Reader of images/cxr_{size}.h5; reopens the file after a fork (DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingArtifactError(f"image file not found: {self.path} (run the images stage)")
        with h5py.File(self.path, "r") as h5:
            missing = [name for name in (PIXELS, DICOM_ID) if name not in h5]
            if missing or "size" not in h5.attrs:
                what = f"dataset(s) {missing}" if missing else "attribute 'size'"
                raise ArtifactError(f"{self.path}: {what} missing from the image store ({PATH}; run the images stage)")
            self.dicom_ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in h5[DICOM_ID][:]]
            self.size = int(h5.attrs["size"])
            self.resize = str(h5.attrs.get("resize", "stretch"))  # stores without the attribute were stretched
            self.n_bad = int(h5.attrs.get("n_bad", 0))
            shape, dtype = h5[PIXELS].shape, h5[PIXELS].dtype
        if shape != (len(self.dicom_ids), self.size, self.size) or dtype != np.uint8:
            raise ArtifactError(
                f"{self.path}: {PIXELS} is {dtype} {shape}, expected uint8 ({len(self.dicom_ids)}, "
                f"{self.size}, {self.size}): one {self.size} px image per {DICOM_ID}"
            )
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
        return self._file()[PIXELS][uniq][inverse]

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None


def open_image_store(path: str | Path) -> ImageStore:
    """The image store of the images stage (`images/cxr_{size}.h5`), checked against the layout above."""
    return ImageStore(path)
