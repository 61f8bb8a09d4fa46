"""DuckDB connections configured from `DuckDBSettings`, so every stage runs within the same memory budget.

DuckDB spills sorts, joins and aggregates to `temp_dir` when they exceed `memory_limit`, which is what
lets the events stage handle hundreds of millions of chartevents rows on a small machine.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import duckdb

from ehrxdiff_core.config import DuckDBSettings

ROW_GROUP = 122_880  # rows per Parquet row group (DuckDB's default), for every file the stages write
_SCRATCH: dict[int, Path] = {}  # connection id → spill folder we created (removed by `close`)


def connect(settings: DuckDBSettings, spill_near: Path | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the configured memory limit, threads and spill folder.

    Without `temp_dir`, spills go to a private folder next to the stage's output (same disk as the
    results, usually larger than /tmp on cluster nodes); `close` removes it.
    """
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = '{sql_str(settings.memory_limit)}'")
    con.execute(f"SET threads = {int(settings.threads)}")
    if settings.temp_dir:
        temp = Path(settings.temp_dir)
        temp.mkdir(parents=True, exist_ok=True)
    else:
        base = Path(spill_near) if spill_near is not None else Path(tempfile.gettempdir())
        base.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=".duckdb_spill.", dir=base))
        _SCRATCH[id(con)] = temp
    con.execute(f"SET temp_directory = '{sql_str(str(temp))}'")
    # Row order inside a stage is fixed by explicit ORDER BY; not preserving it lets DuckDB stream.
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


def close(con: duckdb.DuckDBPyConnection) -> None:
    """Close the connection and delete the spill folder `connect` made for it."""
    temp = _SCRATCH.pop(id(con), None)
    con.close()
    if temp is not None:
        shutil.rmtree(temp, ignore_errors=True)


def sql_str(text: str) -> str:
    """Escape a Python string for a single-quoted SQL literal."""
    return text.replace("'", "''")


def sql_list(values) -> str:
    """('a', 'b') → "'a', 'b'" for an IN (...) clause."""
    return ", ".join(f"'{sql_str(str(v))}'" for v in values)


def ident(name: str) -> str:
    """Quote an identifier (column names like `value` or `Pleural Effusion`)."""
    return '"' + name.replace('"', '""') + '"'


def copy_to_parquet(con: duckdb.DuckDBPyConnection, query: str, out: Path, compression: str = "zstd") -> int:
    """Stream a query into a Parquet file (zstd for artifacts, snappy for scratch); returns rows written."""
    res = con.execute(
        f"COPY ({query}) TO '{sql_str(str(out))}' (FORMAT parquet, COMPRESSION {compression}, "
        f"ROW_GROUP_SIZE {ROW_GROUP})"
    ).fetchall()
    return int(res[0][0]) if res else 0
