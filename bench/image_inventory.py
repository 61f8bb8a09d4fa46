"""Time the images rule's inventory hash at MIMIC-CXR-JPG scale, beside a bare stat loop.

    python bench/image_inventory.py [--n 377000] [--workers 16] [--repeat 3] [--keep DIR]

Creates N small files in the MIMIC-CXR-JPG layout (files/pXX/pSUBJECT/sSTUDY/DICOM.jpg, two
images per study, three studies per subject) in a temporary folder with a matching
images.parquet, then times, on the same files in the same run:

- a bare `os.stat` loop over the full paths, serial (the least any stat-based check can cost);
- an `os.scandir` walk of the folder (names only: what listing the folder costs, no sizes);
- `image_inventory_hash` (reads the parquet, sorts, stats every listed path, hashes) as the
  pipeline calls it (serial unless the first 512 stats take ≥ 20 µs each, then `--workers`
  threads), forced serial, and forced onto the threads.

The snakemake params function runs the hash when the DAG is built and again just before the
images job runs. The page cache is warm for every timing (the files were just written): on a
network filesystem each stat is a round trip, which is what the threads are for; the forced-threads
row shows what they cost where stats are fast.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ehrxdiff_core.data.images import image_inventory_hash


def make_files(root: Path, n: int) -> list[str]:
    rels = []
    for k in range(n):
        study, img = divmod(k, 2)
        subject = 10_000_000 + study // 3
        rel = f"files/p{str(subject)[:2]}/p{subject}/s{50_000_000 + study}/{k:08x}-cxr.jpg"
        if img == 0:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"\xff\xd8 jpeg %d" % k)
        rels.append(rel)
    return rels


def stat_loop(paths: list[str]) -> int:
    total = 0
    for p in paths:
        total += os.stat(p).st_size
    return total


def scandir_walk(top: str) -> int:
    count, stack = 0, [top]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    count += 1
    return count


def timed(fn, repeat: int) -> tuple[float, list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=377_000, help="number of image files (MIMIC-CXR-JPG: ~377,000)")
    ap.add_argument(
        "--workers", type=int, default=16, help="threads of the hash when stats are slow (the pipeline's: 16)"
    )
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", help="create the files in this (empty or new) folder and keep them")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="inventory-") as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        rels = make_files(root, args.n)
        listing = root / "images.parquet"
        pq.write_table(pa.table({"dicom_id": [Path(r).stem for r in rels], "path": rels}), listing)
        print(
            f"created {args.n:,} files under {root} in {time.perf_counter() - t:.1f} s; cpus: {os.cpu_count()}, "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        full = [os.path.join(root, r) for r in rels]

        rows = [
            ("os.stat loop, serial (baseline)", lambda: stat_loop(full)),
            ("os.scandir walk, names only", lambda: scandir_walk(str(root / "files"))),
            (
                "image_inventory_hash, as the pipeline",
                lambda: image_inventory_hash(listing, root, workers=args.workers),
            ),
            ("image_inventory_hash, serial", lambda: image_inventory_hash(listing, root, workers=1)),
            (
                f"image_inventory_hash, {args.workers} threads forced",
                lambda: image_inventory_hash(listing, root, workers=args.workers, slow_stat_s=0),
            ),
        ]
        results = {}
        for name, fn in rows:
            med, times, out = timed(fn, args.repeat)
            results[name] = (med, times, out)
        base = results[rows[0][0]][0]
        hashes = {results[name][2] for name, _ in rows[2:]}
        assert len(hashes) == 1, hashes  # the thread count does not change the hash
        print(f"\n{args.n:,} files, median of {args.repeat}:")
        for name, _ in rows:
            med, times, _ = results[name]
            print(f"  {name:<40} {med:7.3f} s  ({', '.join(f'{x:.3f}' for x in times)})  {med / base:5.2f}x baseline")
        print(f"  hash: {hashes.pop()}")


if __name__ == "__main__":
    main()
