"""A MEDS input shaped like a real public longitudinal CXR dataset rather than MIMIC.

Built from a synthetic world's MEDS export (`ehrxdiff to-meds`), then made awkward the way real data is:
hexadecimal string subject / study ids, no ages (no `age` column, no `MEDS_BIRTH` rows), no findings
label columns, no encounters (no `hadm_id`, no encounters file), times rounded down to whole days,
and 16-bit PNGs with a 12-bit range in mixed, non-square sizes instead of 8-bit square JPEGs.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ehrxdiff_core.labels import CHEXPERT_LABELS, label_column


def hex_id(prefix: str, value) -> str:
    return prefix + hashlib.sha1(f"{prefix}{value}".encode()).hexdigest()[:8]


def to_png16(src: Path, dst: Path, rng: np.random.Generator) -> tuple[int, int]:
    """An 8-bit JPEG as a 12-bit-range 16-bit PNG (mode I;16) of a random non-square size."""
    with Image.open(src) as img:
        gray = np.asarray(img.convert("L"), dtype=np.float64)
    w, h = int(rng.integers(80, 121)), int(rng.integers(60, 101))
    while w == h:
        h += 7
    resized = np.asarray(Image.fromarray(gray.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR), np.float64)
    twelve_bit = np.round(resized / 255.0 * 4095.0).astype(np.uint16)
    dst.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(twelve_bit).save(dst)  # uint16 -> mode I;16
    return w, h


def make_real_shaped(meds_dir: Path, jpg_root: Path, out: Path, seed: int = 0) -> dict:
    """`meds_dir`: a `synthetic_to_meds` folder; `jpg_root`: its image root. Writes `out/data/0.parquet`,
    `out/images.csv` and `out/png/...`; returns what it changed."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    data = pd.read_parquet(meds_dir / "data" / "0.parquet")
    data = data[data["code"] != "MEDS_BIRTH"].copy()
    data["time"] = pd.to_datetime(data["time"]).dt.floor("D")
    data["subject_id"] = data["subject_id"].map(lambda s: hex_id("", s))
    data = data.drop(columns=["hadm_id"])  # no encounters: each subject's timeline is one encounter
    (out / "data").mkdir(parents=True, exist_ok=True)
    data.to_parquet(out / "data" / "0.parquet", index=False)

    man = pd.read_csv(meds_dir / "images.csv", dtype=str)
    label_cols = [c for c in man.columns if c in CHEXPERT_LABELS or c in {label_column(x) for x in CHEXPERT_LABELS}]
    man = man.drop(columns=label_cols + [c for c in ("age",) if c in man.columns])
    sizes = set()
    paths = []
    for sid, image, rel in zip(man["subject_id"], man["image_id"], man["path"]):
        dst_rel = Path("png") / hex_id("", sid) / f"{image}.png"
        sizes.add(to_png16(jpg_root / rel, out / dst_rel, rng))
        paths.append(str(dst_rel))
    man["path"] = paths
    man["subject_id"] = man["subject_id"].map(lambda s: hex_id("", s))
    man["study_id"] = man["study_id"].map(lambda s: hex_id("s", s))
    man["study_time"] = pd.to_datetime(man["study_time"]).dt.strftime("%Y-%m-%d")
    man.to_csv(out / "images.csv", index=False)
    return {"rows": len(data), "images": len(man), "dropped_label_columns": label_cols, "sizes": len(sizes)}
