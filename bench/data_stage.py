"""Benchmark the data stages: DuckDB pipeline (cohort + events) vs a straightforward pandas version.

Generates synthetic MIMIC data (no images) at each scale, ingests it, then runs each engine in its own
subprocess (peak RSS measured inside the child: VmHWM) and checks both give the same pairs, events and texts.
`--memory-only` runs just the DuckDB path at one (large) scale and extrapolates to full MIMIC-IV.

    python bench/data_stage.py --patients 2000 6000 --repeat 3
    python bench/data_stage.py --patients 50000 --chartevents-rate 40 --memory-only --memory-limit 4GB
    python bench/data_stage.py --from-csv --patients 3000 --repeat 3

`--from-csv` times what a user runs: Snakemake from the raw CSVs (the 14 ingest jobs, cohort, events;
job start-up included) from scratch, and again after a cohort-rule change (`cohort.max_gap_hours`
48 → 24 and back: ingest cached), beside the pandas script reading the same CSVs (wall time of its
process, interpreter start included).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FULL_MIMIC = {"chartevents": 432_997_491, "labevents": 158_374_764}
EVENT_TABLES = ("labevents", "prescriptions", "inputevents", "chartevents", "outputevents",
                "microbiologyevents", "procedureevents")  # fmt: skip


# ------------------------------------------------------------------------------------------ set-up


def generate(out: Path, patients: int, rate: float | None, seed: int) -> Path:
    """Synthetic world without images at `out` (reused if already complete)."""
    from ehrxdiff_core.config import SyntheticConfig

    try:
        from ehrxdiff_core.synthetic import write_world
    except ImportError as err:
        sys.exit(f"ehrxdiff_core.synthetic.write_world is not available yet ({err}); cannot generate data")
    done = out / ".complete"
    if done.exists():
        return out
    fields = SyntheticConfig.model_fields
    kw: dict = {"patients": patients, "seed": seed}
    if rate is not None:
        kw["chartevent_rate_per_hour"] = rate
    for name in ("images", "write_images", "with_images"):  # skip JPG rendering when the generator allows it
        if name in fields:
            kw[name] = False
    if "image_px" in fields and not any(n in kw for n in ("images", "write_images", "with_images")):
        kw["image_px"] = 32
    if "gzip_level" in fields:
        kw["gzip_level"] = 1  # fast to write; ingest reads it the same way
    t0 = time.perf_counter()
    write_world(out, SyntheticConfig(**kw))
    print(f"  synthesize {patients} patients: {time.perf_counter() - t0:.1f} s", flush=True)
    done.touch()
    return out


def ingest_all(syn: Path, ehr: Path, duck) -> tuple[dict[str, int], float]:
    """Ingest the 14 tables once per scale (timed; the timing is kept beside the Parquet files for reruns)."""
    from ehrxdiff_core.config import DataConfig
    from ehrxdiff_core.data.ingest import ingest_table
    from ehrxdiff_core.data.sources import source_path
    from ehrxdiff_core.data.tables import TABLE_NAMES

    record = ehr / "_ingest.json"
    if record.exists():
        saved = json.loads(record.read_text())
        print(f"  ingest (DuckDB, 14 tables): cached ({saved['seconds']:.1f} s when run)", flush=True)
        return saved["rows"], saved["seconds"]
    t0 = time.perf_counter()
    rows = {t: ingest_table(t, source_path(t, DataConfig(), syn), ehr / f"{t}.parquet", duck) for t in TABLE_NAMES}
    seconds = time.perf_counter() - t0
    record.write_text(json.dumps({"rows": rows, "seconds": seconds}))
    print(f"  ingest (DuckDB, 14 tables): {seconds:.1f} s", flush=True)
    return rows, seconds


def run_engine(engine: str, ehr: Path, work: Path, args) -> dict:
    """Run one engine in a child process; return its JSON result, with the child's own peak RSS (MB).

    Not os.wait4's ru_maxrss: Linux carries the parent's RSS at fork over into the child's maximum,
    so after the parent has loaded a result for its digests every later child would report that.
    """
    cmd = [sys.executable, __file__, "--_engine", engine, "--_ehr", str(ehr), "--out", str(work),
           "--memory-limit", args.memory_limit, "--threads", str(args.threads),
           "--max-events", str(args.max_events)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"engine": engine, "error": f"exit {proc.returncode}", "wall_s": wall, "peak_rss_mb": float("nan")}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(engine=engine, wall_s=wall)
    return res


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM of /proc/self/status (reset by exec, unlike ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------- engines


def engine_duckdb(ehr: Path, work: Path, duck, max_events: int) -> dict:
    from ehrxdiff_core.config import CohortConfig, EventsConfig
    from ehrxdiff_core.data.cohort import build_cohort
    from ehrxdiff_core.data.events import build_events

    t0 = time.perf_counter()
    c = build_cohort(ehr, CohortConfig(), duck, work / "cohort/images.parquet", work / "cohort/triplets.parquet")
    t1 = time.perf_counter()
    e = build_events(ehr, work / "cohort/triplets.parquet", EventsConfig(max_events=max_events), duck,
                     work / "events/events.parquet", work / "events/triplets.parquet")  # fmt: skip
    t2 = time.perf_counter()
    return {
        "pairs": c["triplets"],
        "pairs_with_events": e["pairs_with_events"],
        "events": e["events"],
        "cohort_s": t1 - t0,
        "events_s": t2 - t1,
        "seconds": t2 - t0,
    }  # digests: by the parent, not in RSS


def _digests(ev) -> dict:
    """Order-sensitive digests of the kept events: keys (pair, position, source, code) and texts."""
    import hashlib

    ev = ev.sort_values(["pair_id", "position"])
    out = {}
    for name, cols in (("key_digest", ("pair_id", "position", "source", "code")), ("text_digest", ("text",))):
        h = hashlib.sha256()
        for col in cols:
            h.update("\x1f".join(map(str, ev[col].tolist())).encode())
        out[name] = h.hexdigest()[:16]
    return out


def csv_reader(world: Path):
    """`rd(table)` for the pandas engine from the raw CSVs (the PhysioNet layout of a synthetic world): the
    columns ingest keeps, lower-cased, typed the same way (ids and ints as nullable integers, times parsed,
    cxr_metadata's StudyDate + StudyTime as `study_time`)."""
    import pandas as pd

    from ehrxdiff_core.config import DataConfig
    from ehrxdiff_core.data.sources import source_path
    from ehrxdiff_core.data.tables import TABLES

    def rd(name: str) -> pd.DataFrame:
        t = TABLES[name]
        src = source_path(name, DataConfig(), world)
        header = pd.read_csv(src, nrows=0).columns
        by_lower = {c.lower(): c for c in header}
        cols = [c for c in t.columns if c.name in by_lower]
        df = pd.read_csv(
            src, usecols=[by_lower[c.name] for c in cols], dtype=str, keep_default_na=False, na_values=[""]
        )
        df.columns = [c.lower() for c in df.columns]
        for c in cols:
            if c.kind in ("id", "int"):
                df[c.name] = pd.to_numeric(df[c.name]).astype("Int64")
            elif c.kind == "num":
                df[c.name] = pd.to_numeric(df[c.name], errors="coerce")
            elif c.kind == "ts":
                df[c.name] = pd.to_datetime(df[c.name])
        for c in t.columns:
            if c.name not in df:
                df[c.name] = None
        if name == "cxr_metadata":
            tm = pd.to_numeric(df.studytime)
            hh, mm = (tm // 10000), (tm // 100) % 100
            df["study_time"] = (
                pd.to_datetime(df.studydate, format="%Y%m%d")
                + pd.to_timedelta(hh * 3600 + mm * 60, "s")
                + pd.to_timedelta((tm % 100).mul(1e6).round(), "us")
            )
        return df

    return rd


def engine_pandas(ehr: Path, max_events: int, world: Path | None = None) -> dict:
    """The same cohort and events logic written the straightforward pandas way (load, merge, filter); from the
    ingested Parquet files, or with `world` from the raw CSVs (what a plain script would start from)."""
    import pandas as pd

    from ehrxdiff_core.config import CohortConfig, EventsConfig
    from ehrxdiff_core.data import event_filters as F
    from ehrxdiff_core.data.split import split_subjects
    from ehrxdiff_core.data.tables import EVENT_TABLES, dictionaries
    from ehrxdiff_core.labels import LABEL_COLUMNS

    cfg, ecfg = CohortConfig(), EventsConfig(max_events=max_events)
    rd = csv_reader(world) if world is not None else (lambda name: pd.read_parquet(ehr / f"{name}.parquet"))
    t0 = time.perf_counter()
    # ---- cohort
    meta = rd("cxr_metadata")
    meta = meta[meta.study_time.notna()].copy()
    meta["view"] = meta.viewposition.str.strip().str.upper()
    img = meta[meta.view.isin([v.upper() for v in cfg.views])]
    adm = rd("admissions").merge(rd("patients"), on="subject_id")
    adm["age"] = adm.admittime.dt.year - adm.anchor_year + adm.anchor_age
    adult = adm[adm.age >= cfg.min_age]
    inside = img.merge(adult, on="subject_id")
    inside = inside[(inside.study_time > inside.admittime) & (inside.study_time <= inside.dischtime)]
    inside = inside.sort_values(["dicom_id", "admittime", "hadm_id"], ascending=[True, False, True])
    inside = inside.drop_duplicates("dicom_id").copy()
    inside["study_order"] = inside.groupby("hadm_id").study_time.rank(method="dense")
    cols = ["hadm_id", "subject_id", "dicom_id", "study_id", "study_time", "study_order", "age", "gender", "race"]
    p = inside[cols].merge(inside[["hadm_id", "dicom_id", "study_id", "study_time", "study_order"]],
                           on="hadm_id", suffixes=("_p", "_t"))  # fmt: skip
    p = p[(p.study_time_p < p.study_time_t) & (p.study_id_p != p.study_id_t)]
    p = p[(p.study_time_t - p.study_time_p) < pd.Timedelta(hours=cfg.max_gap_hours)].copy()
    if cfg.pairing == "consecutive":
        p = p[p.study_order_t - p.study_order_p == 1]
    p["pair_id"] = p.dicom_id_t + "_" + p.dicom_id_p
    n_per_subject = p.groupby("subject_id").size()
    splits = split_subjects(n_per_subject.index.to_numpy(), n_per_subject.to_numpy(), cfg.split)
    p["split"] = p.subject_id.map(dict(zip(n_per_subject.index, splits)))
    chex = rd("cxr_chexpert").drop_duplicates("study_id")
    lab = chex[["study_id", *LABEL_COLUMNS]].copy()
    lab[list(LABEL_COLUMNS)] = lab[list(LABEL_COLUMNS)].where(lab[list(LABEL_COLUMNS)].isin([0.0, 1.0]))
    p = p.merge(lab.add_prefix("prev_").rename(columns={"prev_study_id": "study_id_p"}), on="study_id_p", how="left")
    p = p.merge(lab.add_prefix("trg_").rename(columns={"trg_study_id": "study_id_t"}), on="study_id_t", how="left")
    trip = p.rename(columns={"study_time_p": "prev_time", "study_time_t": "trg_time"}).sort_values("pair_id")
    t1 = time.perf_counter()
    # ---- events
    drugs = F.load_prescription_whitelist(None)
    frames = {name: rd(name).drop_duplicates("itemid") for name in dictionaries()}
    dicts = {t.name: frames[t.dictionary.table] for t in EVENT_TABLES.values() if t.dictionary is not None}
    from ehrxdiff_core.data.tables import TABLES

    kinds = {t: {c.name: c.kind for c in TABLES[t].columns} for t in ecfg.tables}
    parts = []
    for table in ecfg.tables:
        df = rd(table)
        tcol = EVENT_TABLES[table].time
        if table in dicts:
            d = dicts[table].rename(columns={"label": "_label", "category": "_category"})
            keep = ["itemid", "_label", "_category"] + (["linksto"] if "linksto" in d else [])
            df = df.merge(d[keep], on="itemid", how="left")
        if ecfg.paper_filters:
            if table == "labevents":
                df = df[df._category.isin(F.LAB_CATEGORIES) | df._label.isin(F.LAB_LABELS)]
            elif table == "chartevents":
                df = df[(df.linksto == "chartevents") & df._category.isin(F.CHART_CATEGORIES)]
            elif table == "prescriptions":
                low = df.drug.str.lower()
                df = df[df.drug.isin(drugs) & ~low.str.contains("tobramycin") & ~low.str.contains("coq10")]
            elif table == "microbiologyevents":
                df = df[df.spec_type_desc.isin(F.MICRO_SPEC_TYPES)]
            elif table == "procedureevents":
                df = df[df.ordercategoryname.isin(F.PROCEDURE_CATEGORIES)]
        m = df.merge(trip[["pair_id", "hadm_id", "prev_time", "trg_time"]], on="hadm_id")
        m = m[(m[tcol] >= m.prev_time) & (m[tcol] <= m.trg_time)]
        text = pd.Series(table, index=m.index, dtype=object)
        for c in EVENT_TABLES[table].serialized:
            v = m[c.name]
            if c.name == "itemid" and "_label" in m:
                s = m._label.where(m._label.notna(), v.astype("Int64").astype(str))
            elif kinds[table][c.name] == "num":
                s = v.round(ecfg.round_decimals).astype(str)  # numpy rounds x*10^d half-even: may differ at ties
            elif kinds[table][c.name] in ("int", "id"):
                s = v.astype("Int64").astype(str)
            else:
                s = v.astype(str)
            text = text.where(v.isna(), text + " " + c.name + " " + s)
        if table == "prescriptions":
            code = m.drug
        elif table == "microbiologyevents":
            code = m.org_name.fillna(m.test_name).fillna(m.spec_type_desc)
        else:
            code = m.itemid.astype("Int64").astype(str)
        parts.append(pd.DataFrame({"pair_id": m.pair_id, "t": m[tcol], "prev_time": m.prev_time, "source": table,
                                   "code": code.fillna(""), "text": text}))  # fmt: skip
    ev = pd.concat(parts, ignore_index=True).sort_values(["pair_id", "t", "source", "code", "text"])
    ev = ev.groupby("pair_id", sort=False).tail(ecfg.max_events).copy()
    ev["position"] = ev.groupby("pair_id", sort=False).cumcount()
    ev["minutes_from_prev"] = (ev.t - ev.prev_time).dt.total_seconds() / 60
    n_ev = ev.groupby("pair_id").size()
    t2 = time.perf_counter()
    return {"pairs": len(trip), "pairs_with_events": int((n_ev > 0).sum()), "events": len(ev),
            "cohort_s": t1 - t0, "events_s": t2 - t1, "seconds": t2 - t0, **_digests(ev)}  # fmt: skip


# ------------------------------------------------------------------ the pipeline from raw CSV


def snakemake_run(work: Path, config: Path, cores: int) -> float:
    """`snakemake results/events/events.parquet` in `work` (ingest + cohort + events as the DAG runs them)."""
    repo = Path(__file__).resolve().parents[1]
    cmd = [
        str(Path(sys.executable).with_name("snakemake")),
        "results/events/events.parquet",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(work),
        "--cores",
        str(cores),
        "--configfile",
        str(config),
    ]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {work}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall


def from_csv(args) -> None:
    """The whole data part of the DAG from raw CSV through Snakemake (ingest jobs + cohort + events, from
    scratch) and a rerun after a cohort-rule change, beside the pandas script from the same CSVs."""
    import shutil
    import statistics

    import yaml

    for n in args.patients:
        base = args.out / f"csv_p{n}"
        print(f"== {n} patients from raw CSV ({base})", flush=True)
        syn = generate(base / "synthetic", n, args.chartevents_rate, args.seed)
        work = base / "pipeline"
        configs = []
        for gap in (48, 24):
            cfg = {
                "data": {
                    "source": "mimic",
                    "mimic": {
                        "mimiciv_root": str(syn.resolve() / "mimiciv"),
                        "cxr_root": str(syn.resolve() / "mimic-cxr-jpg"),
                    },
                    "duckdb": {"memory_limit": args.memory_limit, "threads": args.threads},
                },
                "events": {"max_events": args.max_events},
                "cohort": {"max_gap_hours": gap},
            }
            path = base / f"config_gap{gap}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            configs.append(path)
        scratch, rerun, pandas = [], [], []
        for _ in range(args.repeat):  # alternate so drift hits both alike
            r = run_engine("pandas_csv", syn, base / "work_pandas", args)
            _show(r)
            pandas.append(r["wall_s"])
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            scratch.append(snakemake_run(work, configs[0], args.threads))
            rerun.append(snakemake_run(work, configs[1], args.threads))  # cohort.max_gap_hours 48 → 24
            rerun.append(snakemake_run(work, configs[0], args.threads))  # and back
            print(
                f"  snakemake from scratch {scratch[-1]:.1f} s; cohort-rule reruns {rerun[-2]:.1f} s, "
                f"{rerun[-1]:.1f} s; pandas from CSV {pandas[-1]:.1f} s (wall, incl. interpreter)",
                flush=True,
            )
        p, s, r = statistics.median(pandas), statistics.median(scratch), statistics.median(rerun)
        print(
            f"  median: pandas {p:.1f} s, pipeline from scratch {s:.1f} s (pandas/pipeline {p / s:.2f}x), "
            f"cohort-rule rerun {r:.1f} s (pandas from scratch/rerun {p / r:.1f}x)",
            flush=True,
        )


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--out", type=Path, default=Path("bench/out/data_stage"))
    ap.add_argument("--chartevents-rate", type=float, default=None, help="synthetic.chartevent_rate_per_hour")
    ap.add_argument("--memory-limit", default="4GB", help="data.duckdb.memory_limit")
    ap.add_argument("--threads", type=int, default=2, help="data.duckdb.threads")
    ap.add_argument("--max-events", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs per engine; the medians are compared")
    ap.add_argument("--memory-only", action="store_true", help="DuckDB only, at the first --patients scale")
    ap.add_argument(
        "--from-csv",
        action="store_true",
        help="Snakemake from raw CSV (ingest + cohort + events) and a cohort-rule rerun vs pandas from CSV",
    )
    ap.add_argument("--_engine", choices=["duckdb", "pandas", "pandas_csv"], help=argparse.SUPPRESS)
    ap.add_argument("--_ehr", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    from ehrxdiff_core.config import DuckDBSettings

    duck = DuckDBSettings(memory_limit=args.memory_limit, threads=args.threads, temp_dir=str(args.out / "duckdb_tmp"))
    if args._engine == "duckdb":
        print(json.dumps({**engine_duckdb(args._ehr, args.out, duck, args.max_events), "peak_rss_mb": peak_rss_mb()}))
        return
    if args._engine == "pandas":
        print(json.dumps({**engine_pandas(args._ehr, args.max_events), "peak_rss_mb": peak_rss_mb()}))
        return
    if args._engine == "pandas_csv":  # --_ehr is the synthetic world here
        print(json.dumps({**engine_pandas(args._ehr, args.max_events, world=args._ehr), "peak_rss_mb": peak_rss_mb()}))
        return
    if args.from_csv:
        from_csv(args)
        return

    scales = args.patients[:1] if args.memory_only else args.patients
    summary = []
    for n in scales:
        tag = f"p{n}" + (f"_r{args.chartevents_rate:g}" if args.chartevents_rate is not None else "")
        base = args.out / tag
        print(f"== {n} patients ({base})", flush=True)
        syn = generate(base / "synthetic", n, args.chartevents_rate, args.seed)
        rows, ingest_s = ingest_all(syn, base / "ehr", duck)
        print("  rows: " + ", ".join(f"{k}={v:,}" for k, v in rows.items() if k in EVENT_TABLES), flush=True)
        ev_rows = sum(rows[t] for t in EVENT_TABLES)
        res = {"patients": n, "rows": rows, "event_rows": ev_rows, "ingest_s": ingest_s}
        runs: dict[str, list[dict]] = {"duckdb": [], "pandas": []}
        engines = ["duckdb"] if args.memory_only or args.skip_pandas else ["duckdb", "pandas"]
        for _ in range(1 if args.memory_only else args.repeat):  # alternate engines so drift hits both alike
            for engine in engines:
                runs[engine].append(r := run_engine(engine, base / "ehr", base / f"work_{engine}", args))
                if engine == "duckdb" and "error" not in r and not args.memory_only:
                    import pyarrow.parquet as pq

                    r.update(_digests(pq.read_table(base / "work_duckdb/events/events.parquet").to_pandas()))
                _show(r)
        res["duckdb"] = d = _median(runs["duckdb"])
        if "pandas" in engines:
            res["pandas"] = p = _median(runs["pandas"])
            res["runs"] = runs
            if "error" not in p and "error" not in d:
                same = all(p[k] == d[k] for k in ("pairs", "events", "pairs_with_events", "key_digest"))
                texts = "yes" if p["text_digest"] == d["text_digest"] else "no (numpy's round() differs at ties)"
                ratios = sorted(x["seconds"] / y["seconds"] for x, y in zip(runs["pandas"], runs["duckdb"]))
                print(f"  same pairs/events (counts + pair/position/source/code): {same}; same texts: {texts}; "
                      f"median of {len(ratios)} run(s): duckdb {d['seconds']:.2f} s, pandas {p['seconds']:.2f} s, "
                      f"speed-up pandas/duckdb = {p['seconds'] / d['seconds']:.1f}x (cohort+events; per run "
                      f"{', '.join(f'{x:.1f}' for x in ratios)}), "
                      f"RSS pandas/duckdb = {p['peak_rss_mb'] / d['peak_rss_mb']:.1f}x", flush=True)  # fmt: skip
                res["same_counts"], res["speedup"] = same, p["seconds"] / d["seconds"]
        if args.memory_only and "error" not in d:
            rate = ev_rows / d["seconds"]
            full = sum(FULL_MIMIC.values())
            scale_ch = FULL_MIMIC["chartevents"] / max(rows["chartevents"], 1)
            print(
                f"  DuckDB cohort+events: {ev_rows:,} event rows in {d['seconds']:.1f} s = {rate:,.0f} rows/s; "
                f"peak RSS {d['peak_rss_mb']:.0f} MB with memory_limit={args.memory_limit}, threads={args.threads}"
            )
            print(f"  ingest: {ev_rows / ingest_s:,.0f} event rows/s")
            print(f"  extrapolated to full MIMIC-IV ({full:,} chart+lab rows, {scale_ch:.0f}x this chartevents): "
                  f"events ≈ {full / rate / 60:.0f} min, ingest ≈ {full / (ev_rows / ingest_s) / 60:.0f} min; "
                  f"memory bounded by memory_limit (spills to temp_dir)")  # fmt: skip
            res["rows_per_s"] = rate
        summary.append(res)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"summary: {args.out / 'summary.json'}")


def _median(runs: list[dict]) -> dict:
    """The run with the median total time (an error if any run failed)."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def _show(r: dict) -> None:
    if "error" in r:
        print(f"  {r['engine']:7s} FAILED ({r['error']}) after {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB")
        return
    print(f"  {r['engine']:7s} pairs={r['pairs']:,} pairs_with_events={r['pairs_with_events']:,} "
          f"events={r['events']:,} "
          f"cohort {r['cohort_s']:.2f} s + events {r['events_s']:.2f} s = {r['seconds']:.2f} s; "
          f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
