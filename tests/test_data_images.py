"""Image store: resize into HDF5, corrupt/missing JPEGs counted and dropped, threshold enforced."""

from __future__ import annotations

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ehrxdiff_core.config import ImagesConfig
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.images import ImageStore
from ehrxdiff_core.data.stages import build_image_store


def make_images(tmp_path, n=6, corrupt=(), missing=()):
    root = tmp_path / "mimic-cxr-jpg"
    ids, paths = [], []
    for k in range(n):
        d = f"dcm{k:02d}"
        rel = f"files/p10/p1000000{k}/s5000000{k}/{d}.jpg"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if k in corrupt:
            p.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        elif k not in missing:
            # left half dark, right half bright, non-square (40 high, 60 wide)
            arr = np.zeros((40, 60), np.uint8)
            arr[:, 30:] = 200 + k
            Image.fromarray(arr, "L").save(p, quality=95)
        ids.append(d)
        paths.append(rel)
    pq.write_table(pa.table({"dicom_id": ids, "path": paths}), tmp_path / "images.parquet")
    return root


def test_store_contract_and_reader(tmp_path):
    root = make_images(tmp_path)
    out = tmp_path / "images" / "cxr_16.h5"
    counts = build_image_store(tmp_path / "images.parquet", root, ImagesConfig(size=16), out)
    assert counts["stored"] == 6 and counts["n_bad"] == 0
    with h5py.File(out) as h5:
        assert h5["pixels"].dtype == np.uint8 and h5["pixels"].shape == (6, 16, 16)
        assert h5.attrs["size"] == 16 and h5.attrs["n_bad"] == 0
        assert h5["dicom_id"].dtype.kind == "O" or h5py.check_string_dtype(h5["dicom_id"].dtype)
    store = ImageStore(out)
    assert store.size == 16 and store.dicom_ids == [f"dcm{k:02d}" for k in range(6)]
    assert "dcm03" in store and "nope" not in store
    x = store.load(["dcm05", "dcm01", "dcm05"])
    assert x.shape == (3, 16, 16) and x.dtype == np.uint8
    assert np.array_equal(x[0], x[2])
    # aspect ratio not preserved: the dark/bright boundary stays in the middle of the square
    assert x[1, :, :6].mean() < 20 and x[1, :, 10:].mean() > 180


def test_corrupt_and_missing_counted_and_dropped(tmp_path, caplog):
    root = make_images(tmp_path, n=10, corrupt=(2,), missing=(7,))
    out = tmp_path / "cxr_8.h5"
    counts = build_image_store(tmp_path / "images.parquet", root, ImagesConfig(size=8, max_bad_fraction=0.25), out)
    assert counts["n_bad"] == 2 and counts["stored"] == 8
    store = ImageStore(out)
    assert "dcm02" not in store and "dcm07" not in store and len(store) == 8
    assert store.n_bad == 2
    assert "dcm02" in caplog.text and "dcm07" in caplog.text


def test_above_threshold_error_and_no_file(tmp_path):
    root = make_images(tmp_path, n=10, corrupt=(1, 4), missing=(8,))
    out = tmp_path / "cxr_8.h5"
    with pytest.raises(DataError) as err:
        build_image_store(tmp_path / "images.parquet", root, ImagesConfig(size=8, max_bad_fraction=0.2), out)
    msg = str(err.value)
    assert "3 of 10" in msg and "30.0%" in msg and "images.max_bad_fraction" in msg and "dcm01.jpg" in msg
    assert not out.exists() and not list(tmp_path.glob("*.h5*"))
