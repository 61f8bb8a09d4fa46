"""Image store: bit depth to 8-bit grayscale, the resize policies, resize into HDF5, corrupt/missing
JPEGs counted and dropped, threshold enforced."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ehrxdiff_core.artifacts.images import ImageStore
from ehrxdiff_core.config import ConfigError, ImagesConfig, load_config
from ehrxdiff_core.data import DataError
from ehrxdiff_core.data.images import build_image_store, load_resized, to_gray8


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
    counts = build_image_store(
        tmp_path / "images.parquet", root, ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16), out
    )
    assert counts["stored"] == 6 and counts["n_bad"] == 0
    with h5py.File(out) as h5:
        assert h5["pixels"].dtype == np.uint8 and h5["pixels"].shape == (6, 16, 16)
        assert h5.attrs["size"] == 16 and h5.attrs["n_bad"] == 0 and h5.attrs["resize"] == "stretch"
        assert h5["dicom_id"].dtype.kind == "O" or h5py.check_string_dtype(h5["dicom_id"].dtype)
    store = ImageStore(out)
    assert store.size == 16 and store.resize == "stretch" and store.dicom_ids == [f"dcm{k:02d}" for k in range(6)]
    assert "dcm03" in store and "nope" not in store
    x = store.load(["dcm05", "dcm01", "dcm05"])
    assert x.shape == (3, 16, 16) and x.dtype == np.uint8
    assert np.array_equal(x[0], x[2])
    # aspect ratio not preserved: the dark/bright boundary stays in the middle of the square
    assert x[1, :, :6].mean() < 20 and x[1, :, 10:].mean() > 180


def test_corrupt_and_missing_counted_and_dropped(tmp_path, caplog):
    root = make_images(tmp_path, n=10, corrupt=(2,), missing=(7,))
    out = tmp_path / "cxr_8.h5"
    counts = build_image_store(
        tmp_path / "images.parquet",
        root,
        ImagesConfig(cache_dir=str(tmp_path / "cache"), size=8, max_bad_fraction=0.25),
        out,
    )
    assert counts["n_bad"] == 2 and counts["stored"] == 8
    store = ImageStore(out)
    assert "dcm02" not in store and "dcm07" not in store and len(store) == 8
    assert store.n_bad == 2
    assert "dcm02" in caplog.text and "dcm07" in caplog.text


def test_above_threshold_error_and_no_file(tmp_path):
    root = make_images(tmp_path, n=10, corrupt=(1, 4), missing=(8,))
    out = tmp_path / "cxr_8.h5"
    with pytest.raises(DataError) as err:
        build_image_store(
            tmp_path / "images.parquet",
            root,
            ImagesConfig(cache_dir=str(tmp_path / "cache"), size=8, max_bad_fraction=0.2),
            out,
        )
    msg = str(err.value)
    assert "3 of 10" in msg and "30.0%" in msg and "images.max_bad_fraction" in msg and "dcm01.jpg" in msg
    assert not out.exists() and not list(tmp_path.glob("*.h5*"))


BICUBIC = Image.Resampling.BICUBIC


def ramp_12bit(h=96, w=128) -> np.ndarray:
    """A 12-bit exposure stored in 16 bits: values 0..4095 rising left to right."""
    return np.tile(np.linspace(0, 4095, w).round().astype(np.uint16), (h, 1))


def test_16bit_png_with_12bit_range_spans_the_8bit_range(tmp_path):
    path = tmp_path / "cxr16.png"
    Image.fromarray(ramp_12bit()).save(path)
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")  # what Pillow makes of a 16-bit grayscale PNG
        clipped = np.asarray(img.convert("L"))
    assert (clipped == 255).mean() > 0.9  # the bug this guards against: "L" clips at 255
    with Image.open(path) as img:
        full = np.asarray(to_gray8(img))
    assert full.min() == 0 and full.max() == 255
    out = load_resized(path, 64)
    assert out.dtype == np.uint8 and out.shape == (64, 64)
    assert out.min() <= 2 and out.max() >= 253  # halving the width averages neighbouring columns
    assert (out == 255).mean() < 0.05 and (out >= 128).mean() < 0.55
    assert np.all(np.diff(out[32].astype(int)) >= 0)  # the ramp stays a ramp


def test_window_is_min_max_over_the_image():
    x = np.array([[0, 4095, 2048, 1024]], np.uint16)
    got = np.asarray(to_gray8(Image.fromarray(x)))
    assert got.tolist() == [[0, 255, 128, 64]]  # 2048·255/4095 = 127.5 → 128; 1024 → 63.8 → 64
    # the window is the image's own range, so an offset and a gain change nothing
    y = np.array([[1000, 1000 + 2 * 4095, 1000 + 2 * 2048, 1000 + 2 * 1024]], np.uint16)
    assert np.asarray(to_gray8(Image.fromarray(y))).tolist() == got.tolist()


@pytest.mark.parametrize("mode", ["I;16B", "I;16L"])
def test_16bit_byte_orders(mode):
    x = ramp_12bit(4, 16)
    img = Image.frombytes(mode, (16, 4), x.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    assert img.mode == mode
    got = np.asarray(to_gray8(img))
    assert got.dtype == np.uint8 and got[:, 0].tolist() == [0] * 4 and got[:, -1].tolist() == [255] * 4
    assert np.array_equal(got, np.asarray(to_gray8(Image.fromarray(x))))


def test_int32_and_float_modes():
    i32 = np.array([[-1000, 0, 3000]], np.int32)
    img = Image.fromarray(i32)
    assert img.mode == "I"
    assert np.asarray(to_gray8(img)).tolist() == [[0, 64, 255]]  # 1000·255/4000 = 63.75 → 64
    f = np.array([[0.0, 0.25, 1.0]], np.float32)
    img = Image.fromarray(f)
    assert img.mode == "F"
    assert np.asarray(to_gray8(img)).tolist() == [[0, 64, 255]]


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_constant_high_depth_image_is_black_without_dividing_by_zero(mode):
    img = Image.fromarray(np.full((5, 7), 700, {"I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]))
    assert img.mode == mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = np.asarray(to_gray8(img))
    assert got.shape == (5, 7) and got.dtype == np.uint8 and not got.any()


def test_rgb_becomes_pillow_luminance(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:, :10] = (255, 0, 0)
    rgb[:, 10:20] = (0, 255, 0)
    rgb[:, 20:] = (0, 0, 255)
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb, "RGB").save(path)
    gray = np.asarray(to_gray8(Image.open(path)))
    assert gray[0, [0, 15, 25]].tolist() == [76, 150, 29]  # ITU-R 601-2: 0.299, 0.587, 0.114 of 255
    with Image.open(path) as img:
        want = np.asarray(img.convert("L").resize((16, 16), BICUBIC))
    assert np.array_equal(load_resized(path, 16), want)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_other_8bit_modes_as_pillow_converts_them(tmp_path, mode):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8), "RGB").convert(mode)
    path = tmp_path / f"img_{mode}.png"
    img.save(path)
    with Image.open(path) as back:
        assert back.mode == mode
        want = np.asarray(back.convert("L").resize((12, 12), BICUBIC))
    assert np.array_equal(load_resized(path, 12), want)


def test_unsupported_mode_is_an_error():
    with pytest.raises(ValueError, match="unsupported image mode 'HSV'"):
        to_gray8(Image.new("HSV", (4, 4)))


@pytest.mark.parametrize("size", [16, 37])
def test_8bit_jpeg_pixels_unchanged(tmp_path, size):
    """MIMIC-CXR-JPG and the synthetic world are 8-bit L JPEGs: stretch gives exactly what it always gave."""
    rng = np.random.default_rng(0)
    arr = (rng.normal(120, 40, (90, 70)).clip(0, 255)).astype(np.uint8)
    path = tmp_path / "cxr.jpg"
    Image.fromarray(arr, "L").save(path, quality=90)
    with Image.open(path) as img:
        assert img.mode == "L"
        want = np.asarray(img.convert("L").resize((size, size), BICUBIC))
    got = load_resized(path, size)
    assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert np.array_equal(load_resized(path, size, "stretch"), want)


def white_wide(tmp_path, w=200, h=100):
    path = tmp_path / f"white_{w}x{h}.png"
    Image.new("L", (w, h), 255).save(path)
    return path


def test_resize_policies_on_a_wide_image(tmp_path):
    path = white_wide(tmp_path)
    stretch, pad, crop = (load_resized(path, 32, r) for r in ("stretch", "pad", "center_crop"))
    assert stretch.shape == pad.shape == crop.shape == (32, 32)
    assert stretch.min() == 255 and crop.min() == 255  # no bands
    # pad: the 2:1 image fits as 32 × 16, centred; 8 black rows above and below
    black_rows = np.flatnonzero(pad.max(axis=1) == 0)
    assert black_rows.tolist() == list(range(8)) + list(range(24, 32))
    assert pad[8:24].min() == 255
    assert (pad.max(axis=0) == 255).all()  # full width: no side bands


def test_pad_on_a_tall_image_pads_the_sides_symmetrically(tmp_path):
    path = white_wide(tmp_path, w=60, h=100)  # 60 × 100 → 19 or 20 px wide in 32
    pad = load_resized(path, 32, "pad")
    cols = np.flatnonzero(pad.max(axis=0) == 255)
    left, right = cols[0], 31 - cols[-1]
    assert abs(left - right) <= 1 and left >= 6 and len(cols) == 32 - left - right
    assert pad[:, :left].max() == 0 and pad[:, 32 - right :].max() == 0


def test_center_crop_keeps_the_central_square(tmp_path):
    """200 × 100, black outside the central 100 × 100: center_crop sees only white, stretch and
    pad keep the black sides."""
    arr = np.zeros((100, 200), np.uint8)
    arr[:, 50:150] = 255
    path = tmp_path / "framed.png"
    Image.fromarray(arr, "L").save(path)
    crop = load_resized(path, 32, "center_crop")
    assert crop.min() == 255
    stretch = load_resized(path, 32, "stretch")
    assert stretch[:, :6].max() == 0 and stretch[:, -6:].max() == 0 and stretch[:, 10:22].min() == 255
    pad = load_resized(path, 32, "pad")
    assert pad[:8].max() == 0 and pad[24:].max() == 0 and pad[8:24, :6].max() == 0


def test_resize_setting_reaches_the_store(tmp_path):
    root = make_images(tmp_path, n=3)  # 60 wide × 40 high, dark left half, bright right half
    out = tmp_path / "cxr_16.h5"
    build_image_store(
        tmp_path / "images.parquet", root, ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16, resize="pad"), out
    )
    with h5py.File(out) as h5:
        assert h5.attrs["resize"] == "pad" and h5.attrs["size"] == 16
    store = ImageStore(out)
    assert store.resize == "pad"
    x = store.load(["dcm01"])[0]
    # 60 × 40 fits as 16 × 11 (rounded from 10.7): 2 or 3 black rows on each side of the image rows
    bright = np.flatnonzero(x.max(axis=1) > 100)
    assert 10 <= len(bright) <= 11 and x[: bright[0]].max() == 0 and x[bright[-1] + 1 :].max() == 0


def test_resize_setting_is_validated():
    assert ImagesConfig().resize == "stretch"
    with pytest.raises(ConfigError, match=r"images\.resize"):
        load_config({"images": {"resize": "crop"}}, check_paths=False)


# --- the decoded-image cache and JPEG draft decoding ---------------------------------------------


def noisy_jpegs(root, n, start=0, shape=(120, 100)):
    rels = []
    for k in range(start, start + n):
        rel = f"files/p10/p{k:08d}/s{k:08d}/img{k:03d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(k).normal(120, 40, shape).clip(0, 255).astype(np.uint8)
        Image.fromarray(arr, "L").save(root / rel, quality=92)
        rels.append(rel)
    return rels


def listing(tmp_path, rels, name="images.parquet"):
    path = tmp_path / name
    pq.write_table(pa.table({"dicom_id": [r.rsplit("/", 1)[1][:-4] for r in rels], "path": rels}), path)
    return path


def test_a_changed_cohort_decodes_only_images_never_seen(tmp_path):
    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 8)
    cfg = ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16)
    first = build_image_store(listing(tmp_path, rels[:6]), root, cfg, tmp_path / "a.h5", workers=1)
    assert (first["decoded"], first["from_cache"]) == (6, 0)
    # a new cohort: two images dropped, two new ones listed
    second = build_image_store(listing(tmp_path, rels[2:]), root, cfg, tmp_path / "b.h5", workers=1)
    assert (second["decoded"], second["from_cache"]) == (2, 4)
    with h5py.File(tmp_path / "b.h5") as h5:
        assert (h5.attrs["decoded"], h5.attrs["from_cache"]) == (2, 4)
    # the assembled store equals one decoded from scratch
    fresh = ImagesConfig(cache_dir=str(tmp_path / "other_cache"), size=16)
    build_image_store(listing(tmp_path, rels[2:]), root, fresh, tmp_path / "c.h5", workers=1)
    with h5py.File(tmp_path / "b.h5") as b, h5py.File(tmp_path / "c.h5") as c:
        assert list(b["dicom_id"].asstr()[:]) == list(c["dicom_id"].asstr()[:])
        assert np.array_equal(b["pixels"][:], c["pixels"][:])
    # the same cohort again: nothing decoded
    third = build_image_store(listing(tmp_path, rels[2:]), root, cfg, tmp_path / "d.h5", workers=1)
    assert (third["decoded"], third["from_cache"]) == (0, 6)


def test_a_rewritten_file_is_decoded_again_and_settings_do_not_share_pixels(tmp_path):
    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 3)
    cfg = ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16)
    build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "a.h5", workers=1)
    Image.new("L", (100, 120), 255).save(root / rels[1], quality=92)  # new content, new size and mtime
    counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "b.h5", workers=1)
    assert (counts["decoded"], counts["from_cache"]) == (1, 2)
    assert ImageStore(tmp_path / "b.h5").load([rels[1].rsplit("/", 1)[1][:-4]]).min() >= 250
    # another size, resize policy or decoding mode is another cache folder
    for other in (dict(size=8), dict(size=16, resize="pad"), dict(size=16, jpeg_draft=False)):
        counts = build_image_store(
            listing(tmp_path, rels), root, cfg.model_copy(update=other), tmp_path / "x.h5", workers=1
        )
        assert counts["decoded"] == 3, other


def test_a_killed_decode_keeps_its_finished_shards(tmp_path, monkeypatch):
    import ehrxdiff_core.data.images as images

    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 6)
    cfg = ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16, cache_shard_images=2)
    real, calls = images._try_load, []

    def dies_on_the_fifth(*args):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the job killed in its third shard
        return real(*args)

    monkeypatch.setattr(images, "_try_load", dies_on_the_fifth)
    with pytest.raises(KeyboardInterrupt):
        build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "a.h5", workers=1)
    assert not (tmp_path / "a.h5").exists()
    monkeypatch.setattr(images, "_try_load", real)
    counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "a.h5", workers=1)
    assert (counts["decoded"], counts["from_cache"]) == (2, 4)


def test_an_unreadable_cache_shard_is_skipped_not_trusted(tmp_path):
    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 4)
    cfg = ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16, cache_shard_images=2)
    build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "a.h5", workers=1)
    shards = sorted((tmp_path / "cache").rglob("shard-*.h5"))
    assert len(shards) == 2
    shards[0].write_bytes(b"truncated")
    counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "b.h5", workers=1)
    assert (counts["decoded"], counts["from_cache"]) == (2, 2)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        assert np.array_equal(a["pixels"][:], b["pixels"][:])


def test_missing_files_are_bad_and_never_cached(tmp_path):
    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 4)
    (root / rels[0]).unlink()
    cfg = ImagesConfig(cache_dir=str(tmp_path / "cache"), size=16, max_bad_fraction=0.5)
    counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "a.h5", workers=1)
    assert (counts["n_bad"], counts["stored"], counts["decoded"]) == (1, 3, 3)
    noisy_jpegs(root, 1)  # the file comes back
    counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / "b.h5", workers=1)
    assert (counts["n_bad"], counts["stored"], counts["decoded"], counts["from_cache"]) == (0, 4, 1, 3)


def test_the_thread_pool_gives_the_serial_pixels(tmp_path):
    root = tmp_path / "cxr"
    rels = noisy_jpegs(root, 40, shape=(60, 50))
    (root / rels[7]).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    for workers, name in ((1, "serial"), (2, "pool")):
        cfg = ImagesConfig(cache_dir=str(tmp_path / name), size=16, max_bad_fraction=0.1, cache_shard_images=16)
        counts = build_image_store(listing(tmp_path, rels), root, cfg, tmp_path / f"{name}.h5", workers=workers)
        assert (counts["n_bad"], counts["decoded"]) == (1, 39)
    with h5py.File(tmp_path / "serial.h5") as a, h5py.File(tmp_path / "pool.h5") as b:
        assert np.array_equal(a["pixels"][:], b["pixels"][:])
        assert list(a["dicom_id"].asstr()[:]) == list(b["dicom_id"].asstr()[:])


def test_jpeg_draft_decodes_at_a_reduced_dct_scale(tmp_path):
    """A 400 x 320 JPEG headed for 64 px decodes at 1/4 scale (100 x 80 >= 64), then bicubic:
    close to the full decode, not equal to it; a PNG ignores the setting."""
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.normal(120, 50, (20, 25)), np.ones((16, 16)))  # 320 high, 400 wide
    arr = (smooth + rng.normal(0, 5, smooth.shape)).clip(0, 255).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(arr, "L").save(path, quality=95)
    with Image.open(path) as img:
        img.draft("L", (64, 64))
        assert img.size == (100, 80)
        want = np.asarray(img.convert("L").resize((64, 64), BICUBIC))
    got = load_resized(path, 64, jpeg_draft=True)
    full = load_resized(path, 64, jpeg_draft=False)
    assert np.array_equal(got, want)
    assert not np.array_equal(got, full) and np.abs(got.astype(int) - full).mean() < 3
    png = tmp_path / "big.png"
    Image.fromarray(arr, "L").save(png)
    assert np.array_equal(load_resized(png, 64, jpeg_draft=True), load_resized(png, 64))
