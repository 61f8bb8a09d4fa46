"""Events between the two images of each pair: the selected event tables, their filters and truncation, in DuckDB.

Streaming passes keep memory bounded by DuckDB's `memory_limit` (spilling to its temp folder):
(1) each event table is scanned once, filtered, restricted to the admissions and time spans that have
pairs, and serialized into a scratch part; (2) the parts are sorted by (hadm_id, t) and streamed, in
which each pair's window is a contiguous row range of its admission, cut to the most recent
`max_events` and gathered into the output (data/pair_slices.py). What a table's rows become (time, code,
text, dictionary, filter) is its entry in the registry of `data/tables.py`.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from ehrxdiff_core.artifacts.cohort import TRIPLETS
from ehrxdiff_core.artifacts.events import EVENT_TRIPLETS
from ehrxdiff_core.artifacts.images import open_image_store
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import DuckDBSettings, EventsConfig
from ehrxdiff_core.data.duck import ROW_GROUP, close, connect, copy_to_parquet, sql_str
from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.pair_slices import PairWindows, write_pair_events
from ehrxdiff_core.data.serialize import text_sql
from ehrxdiff_core.data.tables import EVENT_TABLES, DictionaryJoin, EventTable, dictionaries

log = logging.getLogger(__name__)


def code_sql(entry: EventTable, alias: str) -> str:
    """The event's `code`: the first non-null of the table's code columns (itemid, drug name, organism, ...)."""
    kinds = {c.name: c.kind for c in entry.table.columns}
    cols = [f"{alias}.{c}" if kinds[c] in ("code", "text") else f"CAST({alias}.{c} AS VARCHAR)" for c in entry.code]
    return cols[0] if len(cols) == 1 else f"coalesce({', '.join(cols)})"


def dictionary_join_sql(join: DictionaryJoin, alias: str) -> str:
    """LEFT JOIN of one row per item of the dictionary (relation `d`: label + the columns filters read)."""
    cols = "".join(f", any_value({c}) AS {c}" for c in join.columns)
    return (
        f"LEFT JOIN (SELECT {join.key}, any_value({join.label}) AS label{cols} FROM {join.table} GROUP BY {join.key}) "
        f"d ON d.{join.key} = {alias}.{join.key}"
    )


def table_events_sql(table: str, cfg: EventsConfig) -> str:
    """SELECT hadm_id, t, source, code, text of one table's rows inside some pair window (relation `win`)."""
    entry = EVENT_TABLES[table]
    time_col = entry.time
    join_dict, label = "", None
    if entry.dictionary is not None:
        join_dict, label = dictionary_join_sql(entry.dictionary, "e"), "d.label"
    where = entry.filter("e", "d", cfg) if cfg.paper_filters and entry.filter is not None else "TRUE"
    return (
        f"SELECT e.hadm_id, e.{time_col} AS t, '{table}' AS source, coalesce({code_sql(entry, 'e')}, '') AS code, "
        f"{text_sql(table, 'e', label, cfg.round_decimals)} AS text "
        f"FROM {table} e {join_dict} JOIN win w ON e.hadm_id = w.hadm_id "
        f"AND e.{time_col} >= w.lo AND e.{time_col} <= w.hi WHERE {where}"
    )


# MEDS input: one table of serialized events (hadm_id, time, source, code, text), written by data/meds.py
MEDS_EVENTS = "meds_events"
MEDS_EVENTS_SQL = (
    f"SELECT e.hadm_id, e.time AS t, e.source, e.code, e.text FROM {MEDS_EVENTS} e "
    "JOIN win w ON e.hadm_id = w.hadm_id AND e.time >= w.lo AND e.time <= w.hi"
)


def _register_parquet(con, ehr_dir: Path, name: str) -> None:
    path = Path(ehr_dir) / f"{name}.parquet"
    if not path.exists():
        raise DataError(f"table {name}: ingested file not found: {path} (needed by events.tables)")
    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{sql_str(str(path))}')")


def build_events(
    ehr_dir: Path,
    triplets: Path,
    cfg: EventsConfig,
    duck: DuckDBSettings,
    out_events: Path,
    out_triplets: Path,
    image_store: Path | None = None,
    meds: bool = False,
) -> dict:
    """Write events/events.parquet and events/triplets.parquet (pairs with ≥1 event, + n_events).

    `image_store` (optional, images/cxr_{size}.h5): pairs whose images are not in the store are dropped too.
    `meds`: the events come from `meds_events.parquet` (already serialized MEDS rows; see data/meds.py)
    instead of the MIMIC event tables of `cfg.tables`.
    """
    out_events, out_triplets = Path(out_events), Path(out_triplets)
    if not cfg.tables and not meds:
        raise DataError(f"events.tables is empty: name at least one of the event tables {list(EVENT_TABLES)}")
    work = Path(tempfile.mkdtemp(prefix=".events_parts.", dir=_mkdir(out_events.parent)))
    con = connect(duck, spill_near=out_events.parent)
    counts: dict[str, int] = {}
    try:
        if not Path(triplets).exists():
            raise DataError(f"triplets file not found: {triplets} (run the cohort stage)")
        TRIPLETS.require(triplets)
        con.execute(f"CREATE TEMP TABLE trip AS SELECT * FROM read_parquet('{sql_str(str(triplets))}')")
        counts["pairs_in"] = int(con.execute("SELECT count(*) FROM trip").fetchall()[0][0])
        if image_store is not None:
            ids = open_image_store(image_store).dicom_ids
            con.register("stored", pa.table({"dicom_id": ids}))
            con.execute(
                "DELETE FROM trip WHERE prev_dicom_id NOT IN (SELECT dicom_id FROM stored) "
                "OR trg_dicom_id NOT IN (SELECT dicom_id FROM stored)"
            )
            counts["pairs_with_images"] = int(con.execute("SELECT count(*) FROM trip").fetchall()[0][0])
        con.execute(
            "CREATE TEMP TABLE win AS SELECT hadm_id, min(prev_time) AS lo, max(trg_time) AS hi "
            "FROM trip GROUP BY hadm_id"
        )
        if meds:
            _register_parquet(con, ehr_dir, MEDS_EVENTS)
            sources = {MEDS_EVENTS: MEDS_EVENTS_SQL}
        else:
            needed = set(cfg.tables) | set(dictionaries(cfg.tables))
            for name in sorted(needed):
                _register_parquet(con, ehr_dir, name)
            sources = {table: table_events_sql(table, cfg) for table in cfg.tables}
        t0 = time.perf_counter()
        # (1) each table scanned once: filtered, inside some pair window, serialized, to a scratch part ...
        parts = []
        for table, sql in sources.items():
            part = work / f"{table}.parquet"
            counts[f"events_in_windows_{table}"] = copy_to_parquet(con, sql, part, compression="snappy")
            log.info("events: %s → %d rows in pair windows", table, counts[f"events_in_windows_{table}"])
            parts.append(f"'{sql_str(str(part))}'")
        # ... then all parts sorted by admission and time (ties by source, code, text: deterministic) and
        # streamed to the gather, which writes each pair's contiguous row range (data/pair_slices.py).
        # Sorting the parts, not the scan itself, is what lets DuckDB spill within memory_limit at scale.
        pairs_tab = con.sql(
            "SELECT pair_id, hadm_id, epoch_us(prev_time) AS prev_us, epoch_us(trg_time) AS trg_us FROM trip "
            "ORDER BY hadm_id, pair_id"
        ).to_arrow_table()
        pairs = PairWindows(*(pairs_tab.column(c) for c in ("pair_id", "hadm_id", "prev_us", "trg_us")))
        stream = con.sql(
            f"SELECT hadm_id, epoch_us(t) AS t, source, code, text FROM read_parquet([{', '.join(parts)}]) "
            "ORDER BY hadm_id, t, source, code, text"
        ).to_arrow_reader(ROW_GROUP)
        with atomic_path(out_triplets) as tmp_t, atomic_path(out_events) as tmp_e:
            kept = write_pair_events(stream, pairs, int(cfg.max_events), tmp_e)
            log.info("events: sorted and gathered (%.1f s)", time.perf_counter() - t0)
            counts["events"] = int(kept.sum())
            counts["pairs_with_events"] = int((kept > 0).sum())
            counts["pairs_without_events"] = len(pairs) - counts["pairs_with_events"]
            if counts["pairs_with_events"] == 0:
                raise DataError(
                    f"no pair has any event in [prev_time, trg_time] with events.tables={cfg.tables} and "
                    f"events.paper_filters={cfg.paper_filters}; counts: {counts}"
                )
            has = kept > 0
            con.register("n_kept", pa.table({"pair_id": pairs_tab.column("pair_id").filter(pa.array(has)),
                                             "n_events": pa.array(kept[has], pa.int64())}))  # fmt: skip
            cols = EVENT_TRIPLETS.select_sql({"n_events": "n.n_events"}, "q")
            copy_to_parquet(con, f"SELECT {cols} FROM trip q JOIN n_kept n USING (pair_id) ORDER BY q.pair_id", tmp_t)
            EVENT_TRIPLETS.check_file(tmp_t)
        log.info("events: written (%.1f s)", time.perf_counter() - t0)
    finally:
        close(con)
        shutil.rmtree(work, ignore_errors=True)
    log.info("events: %s", counts)
    return counts


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p
