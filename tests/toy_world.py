"""A tiny contract-conformant world (image h5, embeddings h5, triplets parquet) for tests and benchmarks.

Each image shows an opacity whose intensity is a hidden severity; events are a few kinds of texts
with fixed random embeddings, and "treatment" events lower the target's severity while
"worsening" ones raise it, so the events predict the change between the two images.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd

EVENT_EFFECTS = {
    "furosemide iv": -0.35,
    "chest tube": -0.35,
    "fluid bolus": +0.35,
    "spo2 low": +0.35,
    "heart rate 80": 0.0,
    "temperature 37": 0.0,
}


def render(severity: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-like gray image with a lower-right opacity of brightness ∝ severity."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 0.25 + 0.25 * np.exp(-(((xx - 0.5) / 0.35) ** 2) - ((yy - 0.5) / 0.45) ** 2)
    blob = np.exp(-(((xx - 0.68) / 0.14) ** 2) - ((yy - 0.68) / 0.14) ** 2)
    img = img + 0.5 * severity * blob + rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def write_world(
    folder: str | Path,
    n_pairs: int = 64,
    size: int = 32,
    dim: int = 16,
    max_len: int = 6,
    seed: int = 0,
    splits=(0.75, 0.125, 0.125),
    drop_image: bool = False,
) -> dict:
    """Write `cxr.h5`, `events.h5`, `triplets.parquet` under `folder`; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    texts = list(EVENT_EFFECTS)
    emb = rng.normal(0, 1, (len(texts), dim)).astype(np.float16)
    pixels, dicoms, rows, offsets, triplets = [], [], [], [0], []
    n_train, n_valid = int(splits[0] * n_pairs), int(splits[1] * n_pairs)
    for i in range(n_pairs):
        s0 = rng.uniform(0, 1)
        n_ev = int(rng.integers(1, max_len + 1))
        ev = rng.integers(0, len(texts), n_ev)
        s1 = float(np.clip(s0 + sum(EVENT_EFFECTS[texts[e]] for e in ev), 0, 1))
        prev, trg = f"d{i:04d}p", f"d{i:04d}t"
        for d, s in ((prev, s0), (trg, s1)):
            dicoms.append(d)
            pixels.append(render(s, size, rng))
        rows.extend(int(e) for e in ev)
        offsets.append(len(rows))
        split = "train" if i < n_train else "valid" if i < n_train + n_valid else "test"
        triplets.append(
            {
                "pair_id": f"{trg}_{prev}",
                "prev_dicom_id": prev,
                "trg_dicom_id": trg,
                "split": split,
                "n_events": n_ev,
                "prev_severity": s0,
                "trg_severity": s1,
            }
        )
    if drop_image:  # the last pair's target image is missing from the store
        dicoms, pixels = dicoms[:-1], pixels[:-1]
    with h5py.File(folder / "cxr.h5", "w") as f:
        f["pixels"] = np.stack(pixels)
        f.create_dataset("dicom_id", data=np.array(dicoms, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.attrs["size"], f.attrs["n_bad"] = size, 0
    with h5py.File(folder / "events.h5", "w") as f:
        t = f.create_group("texts")
        t["hash"] = np.arange(len(texts), dtype=np.uint64)
        t["embedding"] = emb
        t.attrs.update(encoder="toy", dim=dim, pooling="mean", rag="{}")
        p = f.create_group("pairs")
        p.create_dataset(
            "pair_id", data=np.array([r["pair_id"] for r in triplets], dtype=object), dtype=h5py.string_dtype("utf-8")
        )
        p["offsets"] = np.array(offsets, dtype=np.int64)
        p["rows"] = np.array(rows, dtype=np.int64)
    pd.DataFrame(triplets).to_parquet(folder / "triplets.parquet", index=False)
    return {"images": folder / "cxr.h5", "embeddings": folder / "events.h5", "triplets": folder / "triplets.parquet"}
