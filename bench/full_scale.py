"""Ingest + cohort + events at full MIMIC-IV size, measured: wall time and peak RSS per stage.

    python bench/full_scale.py --world DIR [--generate [--lab-rate 5.9]] [--memory-limit 4GB] [--threads 2]

`--generate` first writes a synthetic world without images at DIR (gzip 1, 40,000 patients,
vitals and labs dense enough for ~476 M chartevents and, at the default `--lab-rate 5.9`, ~160 M
labevents rows, above the MIMIC-IV 2.2 counts of 432,997,491 and 158,374,764; ~8 GB on disk, not
committed); without it DIR must hold one. Then every
stage runs in its own child process, as the pipeline's jobs do, with `data.duckdb.memory_limit`
and `threads` as given: the 14 ingests one after another, cohort, events. Each row reports the
child's wall time and its own peak RSS (`VmHWM`, which DuckDB's buffer pool and the Python
heap both count in), and the table ends with the totals and the exact row counts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from data_stage import FULL_MIMIC, peak_rss_mb  # bench/ is on sys.path when this file is run


def child(args) -> dict:
    """One stage in this (child) process; prints its JSON result."""
    from ehrxdiff_core.config import CohortConfig, DataConfig, DuckDBSettings, EventsConfig
    from ehrxdiff_core.data.cohort import build_cohort
    from ehrxdiff_core.data.events import build_events
    from ehrxdiff_core.data.ingest import ingest_table
    from ehrxdiff_core.data.sources import source_path

    duck = DuckDBSettings(memory_limit=args.memory_limit, threads=args.threads, temp_dir=str(args.out / "duckdb_tmp"))
    ehr, stage = args.out / "ehr", args._stage
    if stage.startswith("ingest:"):
        table = stage.split(":", 1)[1]
        rows = ingest_table(table, source_path(table, DataConfig(), args.world), ehr / f"{table}.parquet", duck)
        return {"rows": rows}
    if stage == "cohort":
        c = build_cohort(
            ehr, CohortConfig(), duck, args.out / "cohort/images.parquet", args.out / "cohort/triplets.parquet"
        )
        return {"rows": c["triplets"]}
    e = build_events(
        ehr,
        args.out / "cohort/triplets.parquet",
        EventsConfig(),
        duck,
        args.out / "events/events.parquet",
        args.out / "events/triplets.parquet",
    )
    return {"rows": e["events"], "pairs_with_events": e["pairs_with_events"]}


def run_stage(stage: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--world",
        str(args.world),
        "--out",
        str(args.out),
        "--_stage",
        stage,
        "--memory-limit",
        args.memory_limit,
        "--threads",
        str(args.threads),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{stage} failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(stage=stage, wall_s=wall)
    print(f"  {stage}: {wall:.1f} s, {res['peak_rss_mb']:.0f} MB, {res['rows']:,} rows", flush=True)
    return res


def generate(world: Path, lab_rate: float) -> float:
    from ehrxdiff_core.config import SyntheticConfig
    from ehrxdiff_core.synthetic import write_world

    cfg = SyntheticConfig(
        patients=40_000,
        chartevent_rate_per_hour=26.5,
        lab_rate_per_hour=lab_rate,
        write_images=False,
        gzip_level=1,
        seed=0,
    )
    t = time.perf_counter()
    write_world(world, cfg)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: WORLD/../full_scale_results)")
    ap.add_argument("--generate", action="store_true")
    ap.add_argument("--lab-rate", type=float, default=5.9, help="synthetic.lab_rate_per_hour with --generate")
    ap.add_argument("--memory-limit", default="4GB")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--_stage", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.out = args.out or args.world.parent / "full_scale_results"
    if args._stage:
        res = child(args)
        print(json.dumps({**res, "peak_rss_mb": peak_rss_mb()}))
        return

    from ehrxdiff_core.data.tables import TABLE_NAMES

    if args.generate:
        print(f"synthesize: {generate(args.world, args.lab_rate):.0f} s", flush=True)
    rows = [run_stage(f"ingest:{t}", args) for t in TABLE_NAMES]
    rows += [run_stage("cohort", args), run_stage("events", args)]
    by = {r["stage"]: r for r in rows}
    chart, lab = by["ingest:chartevents"]["rows"], by["ingest:labevents"]["rows"]
    print(
        f"\nchartevents {chart:,} rows (MIMIC-IV 2.2: {FULL_MIMIC['chartevents']:,}), "
        f"labevents {lab:,} (MIMIC-IV 2.2: {FULL_MIMIC['labevents']:,}); "
        f"data.duckdb.memory_limit={args.memory_limit}, threads={args.threads}\n"
    )
    print("| stage | rows out | wall s | peak RSS MB |\n|---|---:|---:|---:|")
    ingest = [r for r in rows if r["stage"].startswith("ingest:")]
    for r in rows:
        print(f"| {r['stage']} | {r['rows']:,} | {r['wall_s']:.1f} | {r['peak_rss_mb']:,.0f} |")
    print(
        f"| **ingest (14 tables)** | | **{sum(r['wall_s'] for r in ingest):.1f}** | "
        f"**{max(r['peak_rss_mb'] for r in ingest):,.0f}** (max) |"
    )
    total = sum(r["wall_s"] for r in rows)
    print(
        f"| **ingest + cohort + events** | {by['events']['pairs_with_events']:,} pairs with events | "
        f"**{total:.1f} ({total / 60:.1f} min)** | **{max(r['peak_rss_mb'] for r in rows):,.0f}** (max) |"
    )


if __name__ == "__main__":
    main()
