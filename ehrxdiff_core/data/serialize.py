"""GenHPF-style event text as a DuckDB expression: "table col value col value ..." (nulls skipped, no times).

Built in SQL so serialization streams with the scan instead of materialising rows in Python. The columns
are the table's registry entry's `serialized` ones: its columns in CSV order without the identifiers and the
event time, so the text says what happened and never when or to whom.
"""

from __future__ import annotations

from ehrxdiff_core.data.duck import ident, sql_str
from ehrxdiff_core.data.tables import EVENT_TABLES


def value_sql(expr: str, kind: str, decimals: int) -> str:
    """Column value as text: floats rounded to `decimals`, integers as integers, strings as is."""
    if kind == "num":
        return f"CAST(round(CAST({expr} AS DOUBLE), {int(decimals)}) AS VARCHAR)"
    return f"CAST({expr} AS VARCHAR)"


def text_sql(table: str, alias: str, label_expr: str | None, decimals: int) -> str:
    """SQL expression for the event text of one row of `table` (row alias `alias`).

    `label_expr` replaces the dictionary key (`itemid`) by its label (falling back to the number when unknown).
    """
    entry = EVENT_TABLES[table]
    key = entry.dictionary.key if entry.dictionary is not None else None
    parts = []
    for c in entry.serialized:
        col = f"{alias}.{ident(c.name)}"
        if c.name == key and label_expr is not None:
            val = f"coalesce({label_expr}, CAST({col} AS VARCHAR))"
        else:
            val = value_sql(col, c.kind, decimals)
        present = f"{col} IS NOT NULL" + (f" AND NOT isnan({col})" if c.kind == "num" else "")  # NaN = missing
        parts.append(f"CASE WHEN {present} THEN '{sql_str(c.name)} ' || {val} END")
    return f"concat_ws(' ', '{sql_str(table)}', {', '.join(parts)})"
