"""GenHPF-style event text as a DuckDB expression: "table col value col value ..." (nulls skipped, no times).

Built in SQL so serialization streams with the scan instead of materialising rows in Python; the
column order is the CSV order of the registry, ids and timestamps are left out (§2.4, §2.5).
"""

from __future__ import annotations

from ehrxdiff_core.data.duck import ident, sql_str
from ehrxdiff_core.data.tables import EVENT_TIME, TABLES

# never part of the text: join keys and the event time (reference/ehrxdiff.md §2.4)
NOT_SERIALIZED = {"hadm_id", "subject_id", "stay_id"}


def value_sql(expr: str, kind: str, decimals: int) -> str:
    """Column value as text: floats rounded to `decimals`, integers as integers, strings as is."""
    if kind == "num":
        return f"CAST(round(CAST({expr} AS DOUBLE), {int(decimals)}) AS VARCHAR)"
    return f"CAST({expr} AS VARCHAR)"


def serialized_columns(table: str) -> list:
    time_col = EVENT_TIME[table]
    return [c for c in TABLES[table].columns if c.name not in NOT_SERIALIZED and c.name != time_col]


def text_sql(table: str, alias: str, label_expr: str | None, decimals: int) -> str:
    """SQL expression for the event text of one row of `table` (row alias `alias`).

    `label_expr` replaces `itemid` by its dictionary label (falling back to the number when unknown).
    """
    parts = []
    for c in serialized_columns(table):
        col = f"{alias}.{ident(c.name)}"
        if c.name == "itemid" and label_expr is not None:
            val = f"coalesce({label_expr}, CAST({col} AS VARCHAR))"
        else:
            val = value_sql(col, c.kind, decimals)
        present = f"{col} IS NOT NULL" + (f" AND NOT isnan({col})" if c.kind == "num" else "")  # NaN = missing
        parts.append(f"CASE WHEN {present} THEN '{sql_str(c.name)} ' || {val} END")
    return f"concat_ws(' ', '{sql_str(table)}', {', '.join(parts)})"
