"""The retrieval corpus: one snippet per glossary entry and per item of each dictionary the event tables join.

Which dictionaries are read (d_items, d_labitems) and what an item of each event table is ("charted
observation", "laboratory test") come from the event-table registry in `ehrxdiff_core/data/tables.py`, so a
registered table's items are described without a change here.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ehrxdiff_core.artifacts.text import KNOWLEDGE
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.data.tables import EVENT_TABLES, TABLES, DictionaryJoin, dictionaries
from ehrxdiff_core.text.glossary import load_glossary

log = logging.getLogger(__name__)


# d_items also names the items of ICU tables no event table here reads: their snippets still say what they are
UNREAD_TABLE_ITEMS = {"datetimeevents": "ICU date/time record", "ingredientevents": "ICU input ingredient"}


def item_descriptions() -> dict[str, str]:
    """Event table → what one of its items is, as the dictionary snippets say it."""
    registered = {t.name: t.item_description for t in EVENT_TABLES.values() if t.item_description}
    return {**UNREAD_TABLE_ITEMS, **registered}


def _read(path: Path, table: str, columns: list[str], required: tuple[str, str] = ("itemid", "label")) -> pd.DataFrame:
    """Dictionary rows in key order; `required` (key, label) must exist, absent others (units, ranges) read as NULL."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{table}: file not found: {path}")
    con = duckdb.connect()
    try:
        have = [r[0] for r in con.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()]
        missing = [c for c in required if c not in have]
        if missing:
            raise ValueError(f"{path} ({table}): missing column(s) {missing}")
        absent = [c for c in columns if c not in have]
        if absent:
            log.warning("%s (%s) has no column(s) %s: snippets go without them", path, table, absent)
        cols = ", ".join(c if c in have else f"NULL AS {c}" for c in columns)
        return con.execute(f"SELECT {cols} FROM read_parquet(?) ORDER BY {required[0]}", [str(path)]).df()
    finally:
        con.close()


def _fmt(x: float) -> str:
    return f"{x:g}"


def _clean(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) or pd.isna(v) else str(v).strip()


def _d_items_rows(df: pd.DataFrame, described: dict[str, str]) -> list[dict]:
    """MIMIC's ICU dictionary: the item's table (linksto), abbreviation, unit and normal range."""
    rows = []
    for r in df.itertuples(index=False):
        label = _clean(r.label)
        if not label:
            continue
        unit = _clean(r.unitname)
        low = None if pd.isna(r.lownormalvalue) else float(r.lownormalvalue)
        high = None if pd.isna(r.highnormalvalue) else float(r.highnormalvalue)
        parts = [f"{label}"]
        abbr = _clean(r.abbreviation)
        if abbr and abbr.lower() != label.lower():
            parts[0] += f" ({abbr})"
        kind = described.get(_clean(r.linksto), "ICU item")
        text = f"{parts[0]}: {kind}, category {_clean(r.category) or 'unknown'}"
        if unit:
            text += f", unit {unit}"
        if low is not None and high is not None:
            text += f", normal range {_fmt(low)} to {_fmt(high)}" + (f" {unit}" if unit else "")
        elif low is not None:
            text += f", normal at least {_fmt(low)}"
        elif high is not None:
            text += f", normal at most {_fmt(high)}"
        rows.append(
            dict(
                source="d_items",
                ref=f"d_items:{int(r.itemid)}",
                itemid=int(r.itemid),
                key=label.lower(),
                kind=_clean(r.linksto) or "item",
                aliases=[abbr.lower()] if abbr else [],
                text=text + ".",
                low=low,
                high=high,
                unit=unit or None,
            )
        )
    return rows


def _dictionary_rows(name: str, join: DictionaryJoin, df: pd.DataFrame, described: dict[str, str]) -> list[dict]:
    """Any other dictionary (d_labitems): '<label>: <what its items are>[ on <fluid>][, category <category>].'

    An item belongs to the table its `join.item_table` column names, else to the first table joining `name`.
    """
    owner = next(t.name for t in EVENT_TABLES.values() if t.dictionary is not None and t.dictionary.table == name)
    rows = []
    for r in df.to_dict("records"):
        label = _clean(r[join.label])
        if not label or label.lower() == "delete":  # MIMIC's placeholder for retired items
            continue
        table = _clean(r[join.item_table]) if join.item_table else owner
        fluid, cat = _clean(r.get("fluid")), _clean(r.get("category"))
        text = (
            f"{label}: {described.get(table, 'item')}"
            + (f" on {fluid.lower()}" if fluid else "")
            + (f", category {cat}" if cat else "")
        )
        key = int(r[join.key])
        rows.append(
            dict(
                source=name,
                ref=f"{name}:{key}",
                itemid=key,
                key=label.lower(),
                kind=table or "item",
                aliases=[],
                text=text + ".",
                low=None,
                high=None,
                unit=None,
            )
        )
    return rows


def _glossary_rows() -> list[dict]:
    g = load_glossary()
    rows = []
    for r in g.itertuples(index=False):
        rows.append(
            dict(
                source="glossary",
                ref=f"glossary:{r.key}",
                itemid=None,
                key=r.key,
                kind=r.kind,
                aliases=list(r.aliases),
                text=r.text,
                low=None if pd.isna(r.low) else float(r.low),
                high=None if pd.isna(r.high) else float(r.high),
                unit=r.unit or None,
            )
        )
    return rows


def build_knowledge_table(dictionary_files: Mapping[str, Path]) -> pa.Table:
    """Glossary first (its rows win lexical ties), then every dictionary the registered event tables join, by name
    (d_items, d_labitems), each in key order. `dictionary_files`: dictionary name → its ingested Parquet file."""
    described = item_descriptions()
    rows = _glossary_rows()
    for name, join in dictionaries().items():
        if name not in dictionary_files:
            raise FileNotFoundError(f"{name}: no file given for this dictionary (given: {sorted(dictionary_files)})")
        df = _read(Path(dictionary_files[name]), name, [c.name for c in TABLES[name].columns], (join.key, join.label))
        rows += _d_items_rows(df, described) if name == "d_items" else _dictionary_rows(name, join, df, described)
    for i, r in enumerate(rows):
        r["snippet_id"] = i
    return pa.Table.from_pylist(rows, schema=KNOWLEDGE.schema)


def write_knowledge(table: pa.Table, out_parquet: Path) -> None:
    with atomic_path(out_parquet) as tmp:
        KNOWLEDGE.write(table, tmp)


def read_knowledge(path: Path) -> pd.DataFrame:
    KNOWLEDGE.require(path)
    df = pq.read_table(path).to_pandas()
    if df["snippet_id"].tolist() != list(range(len(df))):
        raise ValueError(f"{path}: snippet_id must be 0..N-1 in row order")
    return df


def build_knowledge(dictionary_files: Mapping[str, Path], out_parquet: Path) -> int:
    """Write rag/knowledge.parquet (glossary + item dictionaries); returns the number of snippets.

    `dictionary_files`: name → ingested Parquet of every dictionary the registered event tables join.
    """
    table = build_knowledge_table(dictionary_files)
    write_knowledge(table, Path(out_parquet))
    counts = pd.Series(table.column("source").to_pylist()).value_counts().to_dict()
    log.info("knowledge: %d snippets %s -> %s", table.num_rows, counts, out_parquet)
    return table.num_rows
