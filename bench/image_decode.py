"""Decode throughput of the images rule on MIMIC-size JPEGs, beside the full-decode baseline.

    python bench/image_decode.py [--n 200] [--size 256] [--workers 2] [--keep DIR]

Writes N grayscale JPEGs of MIMIC-CXR-JPG size (2,544 × 3,056, quality 95: a smooth random field
plus pixel noise, ~1.5 MB each as MIMIC-CXR-JPG's 570 GB / 377,110 files) in the MIMIC layout
with a matching images.parquet, then times,
on the same files in the same run (the page cache is warm for all rows: the files were just
written, so disk reads are not measured):

- `full, 1 process`: Pillow decodes every pixel, then bicubic to size × size (the images rule
  before the JPEG draft mode, and `images.jpeg_draft: false`);
- `draft, 1 process`: `load_resized(..., jpeg_draft=True)`: libjpeg's scaled IDCT picks the
  smallest scale (1/8 at 256 px: 318 × 382) that covers the square, then bicubic;
- `draft, N threads` and `draft, N processes`: the same function on a thread / process pool;
- `images rule, cold cache`: `build_image_store` end to end (stat + key every file, decode on
  its thread pool, write cache shards, assemble the store);
- `images rule, warm cache`: the same listing again (nothing decoded: a cohort change).

Images/s are printed with the ratio to the full-decode row and the time the rate would take for
MIMIC-CXR-JPG's ~377,000 images (an extrapolation: said so in the table).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from ehrxdiff_core.config import ImagesConfig
from ehrxdiff_core.data.images import build_image_store, load_resized

MIMIC_W, MIMIC_H = 2544, 3056
MIMIC_IMAGES = 377_110


def write_jpegs(root: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    rels = []
    for k in range(n):
        coarse = Image.fromarray(rng.normal(128, 45, (24, 20)).clip(0, 255).astype(np.uint8), "L")
        field = np.asarray(coarse.resize((MIMIC_W, MIMIC_H), Image.Resampling.BICUBIC), dtype=np.float32)
        arr = (field + rng.normal(0, 1.8, field.shape)).clip(0, 255).astype(np.uint8)
        rel = f"files/p10/p{10_000_000 + k}/s{50_000_000 + k}/{k:08x}-bench.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr, "L").save(root / rel, quality=95)
        rels.append(rel)
    return rels


def rate(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="write the JPEGs here (reused if present) instead of a temp folder")
    args = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="image_decode_")
    work = args.keep or Path(tmp.name)
    root = work / "mimic-cxr-jpg"
    listing = work / "images.parquet"
    t = time.perf_counter()
    if listing.exists():
        rels = pq.read_table(listing).column("path").to_pylist()[: args.n]
    else:
        rels = write_jpegs(root, args.n)
        pq.write_table(pa.table({"dicom_id": [r.rsplit("/", 1)[1][:-4] for r in rels], "path": rels}), listing)
    paths = [str(root / r) for r in rels]
    n, size = len(paths), args.size
    mb = sum(os.path.getsize(p) for p in paths) / n / 1e6
    print(
        f"{n} JPEGs of {MIMIC_W} x {MIMIC_H}, {mb:.2f} MB each on average (ready in {time.perf_counter() - t:.0f} s); "
        f"{size} px, {args.workers} workers, {os.cpu_count()} CPUs"
    )
    for p in paths:  # warm the page cache for every row alike
        Path(p).read_bytes()

    def serial(draft: bool):
        return lambda: [load_resized(Path(p), size, "stretch", draft) for p in paths]

    def pooled(pool_cls, **kw):
        def run():
            with pool_cls(args.workers, **kw) as pool:
                list(
                    pool.map(
                        load_resized,
                        map(Path, paths),
                        [size] * n,
                        ["stretch"] * n,
                        [True] * n,
                        **({"chunksize": 8} if pool_cls is ProcessPoolExecutor else {}),
                    )
                )

        return run

    cache = work / "cache"
    cfg = ImagesConfig(size=size, cache_dir=str(cache))

    def rule(out: str):
        def run():
            counts = build_image_store(listing, root, cfg, work / out, workers=args.workers)
            assert counts["stored"] == n, counts

        return run

    rows = [
        ("full, 1 process", rate(serial(False), n)),
        ("draft, 1 process", rate(serial(True), n)),
        (f"draft, {args.workers} threads", rate(pooled(ThreadPoolExecutor), n)),
        (f"draft, {args.workers} processes", rate(pooled(ProcessPoolExecutor, mp_context=get_context("spawn")), n)),
    ]
    shutil.rmtree(cache, ignore_errors=True)
    rows.append(("images rule, cold cache", rate(rule("cold.h5"), n)))
    rows.append(("images rule, warm cache (cohort change)", rate(rule("warm.h5"), n)))
    base = rows[0][1]
    print(f"\n| decode at {size} px, 2,544 × 3,056 JPEGs | images/s | × full | 377k images (extrapolated) |")
    print("|---|---:|---:|---:|")
    for name, r in rows:
        mins = MIMIC_IMAGES / r / 60
        print(
            f"| {name} | {r:,.0f} | {r / base:.1f} | {mins:,.0f} min |"
            if mins >= 1
            else f"| {name} | {r:,.0f} | {r / base:.1f} | {mins * 60:,.0f} s |"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
