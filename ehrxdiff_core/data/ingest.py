"""CSV(.gz) → typed Parquet of the needed columns, tolerant of the quirks of real MIMIC files.

Every column is first read as text (so codes keep their leading zeros and nothing is guessed from a
sample), then selected by its lower-cased header and cast to the registry's type.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb

from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.config import DuckDBSettings
from ehrxdiff_core.data.duck import close, connect, copy_to_parquet, ident, sql_str
from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.tables import TABLES, Table

log = logging.getLogger(__name__)


def normalise_header(name: str) -> str:
    """'ViewPosition' → 'viewposition', 'Pleural Effusion' → 'pleural_effusion'."""
    return "_".join(name.strip().lower().split())


def expected_layout(table: Table) -> str:
    """Human-readable expected file and columns, for error messages."""
    where = {"hosp": "mimiciv/hosp/", "icu": "mimiciv/icu/", "cxr": "mimic-cxr-jpg/"}[table.module]
    cols = ", ".join(c.name + ("" if c.required else " (optional)") for c in table.columns)
    return f"expected {where}{table.file}.csv.gz (or .csv) with columns: {cols}"


def _reader(src: Path) -> str:
    return (
        f"read_csv('{sql_str(str(src))}', all_varchar = true, header = true, delim = ',', quote = '\"', "
        "escape = '\"', auto_detect = true)"
    )


def _cast(expr: str, kind: str, sql_type: str) -> str:
    text = f"NULLIF({expr}, '')"
    if kind in ("code", "text"):
        return text
    if kind in ("id", "int"):
        # integers written as floats ("91.0") occur in exported CSVs; accept them only when whole
        return f"CAST(CAST({text} AS DOUBLE) AS BIGINT)" if kind == "int" else f"CAST({text} AS BIGINT)"
    return f"CAST({text} AS {sql_type})"


def _study_time(date_col: str, time_col: str) -> str:
    """StudyDate 21800723 + StudyTime 80556.875 → 2180-07-23 08:05:56.875 (leading zero dropped in the file)."""
    d = f"NULLIF(trim({date_col}), '')"
    t = f"CAST(NULLIF(trim({time_col}), '') AS DOUBLE)"
    hh = f"floor({t} / 10000)"
    mm = f"floor({t} / 100) - 100 * {hh}"
    us = f"round(({t} - 100 * floor({t} / 100)) * 1000000)"
    return f"strptime({d}, '%Y%m%d') + to_microseconds(CAST(({hh} * 3600 + ({mm}) * 60) * 1000000 + {us} AS BIGINT))"


def ingest_table(table_name: str, src: Path, out_parquet: Path, duck: DuckDBSettings) -> int:
    """Write `ehr/{table}.parquet` from the source CSV; returns rows written. Errors name table, file, columns."""
    if table_name not in TABLES:
        raise DataError(f"unknown table {table_name!r}; known tables: {', '.join(TABLES)}")
    table = TABLES[table_name]
    src = Path(src)
    if not src.exists():
        raise DataError(f"table {table_name}: file not found: {src}; {expected_layout(table)}")
    con = connect(duck, spill_near=Path(out_parquet).parent)
    try:
        try:
            header = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_reader(src)}").fetchall()]
        except duckdb.Error as err:
            raise DataError(f"table {table_name}: cannot read {src} as CSV: {err}") from None
        by_name: dict[str, str] = {}
        for h in header:
            by_name.setdefault(normalise_header(h), h)
        missing = [c.name for c in table.columns if c.required and c.name not in by_name]
        if missing:
            raise DataError(
                f"table {table_name}: file {src} lacks required column(s) {', '.join(missing)} "
                f"(found: {', '.join(header)}); {expected_layout(table)}"
            )
        select = []
        for c in table.columns:
            if table_name == "cxr_metadata" and c.name in ("studydate", "studytime"):
                continue
            if c.name in by_name:
                select.append(f"{_cast(ident(by_name[c.name]), c.kind, c.sql_type)} AS {ident(c.name)}")
            else:
                select.append(f"CAST(NULL AS {c.sql_type}) AS {ident(c.name)}")
        if table_name == "cxr_metadata":
            select.append(f"{_study_time(ident(by_name['studydate']), ident(by_name['studytime']))} AS study_time")
        query = f"SELECT {', '.join(select)} FROM {_reader(src)}"
        with atomic_path(out_parquet) as tmp:
            try:
                rows = copy_to_parquet(con, query, tmp)
            except duckdb.Error as err:
                raise DataError(f"table {table_name}: bad value in {src}: {err}; {expected_layout(table)}") from None
    finally:
        close(con)
    log.info("ingest %s: %d rows from %s", table_name, rows, src)
    return rows
