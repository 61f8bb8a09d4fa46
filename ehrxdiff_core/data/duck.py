"""DuckDB connections configured from `DuckDBSettings`, so every stage runs within the same memory budget.

DuckDB spills sorts, joins and aggregates to `temp_dir` when they exceed `memory_limit`, which is what
lets the events stage handle hundreds of millions of chartevents rows on a small machine.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import duckdb

from ehrxdiff_core.config import DuckDBSettings


def connect(settings: DuckDBSettings, spill_near: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the configured memory limit, threads and spill folder."""
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{settings.memory_limit}'")
    con.execute(f"SET threads = {int(settings.threads)}")
    if settings.temp_dir:
        temp = Path(settings.temp_dir)
    elif spill_near is not None:
        temp = Path(spill_near) / ".duckdb_tmp"
    else:
        temp = Path(tempfile.gettempdir()) / "ehrxdiff_duckdb_tmp"
    temp.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = '{sql_str(str(temp))}'")
    # Row order inside a stage is fixed by explicit ORDER BY; not preserving it lets DuckDB stream.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def sql_str(text: str) -> str:
    """Escape a Python string for a single-quoted SQL literal."""
    return text.replace("'", "''")


def sql_list(values) -> str:
    """('a', 'b') → "'a', 'b'" for an IN (...) clause."""
    return ", ".join(f"'{sql_str(str(v))}'" for v in values)


def ident(name: str) -> str:
    """Quote an identifier (column names like `value` or `Pleural Effusion`)."""
    return '"' + name.replace('"', '""') + '"'


def copy_to_parquet(con: duckdb.DuckDBPyConnection, query: str, out: Path) -> int:
    """Stream a query into a Parquet file (zstd); returns the number of rows written."""
    res = con.execute(
        f"COPY ({query}) TO '{sql_str(str(out))}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE 122880)"
    ).fetchone()
    return int(res[0]) if res else 0
