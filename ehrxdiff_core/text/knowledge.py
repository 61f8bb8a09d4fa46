"""The retrieval corpus: one snippet per dictionary item (d_items, d_labitems) and per glossary entry."""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ehrxdiff_core.artifacts.text import KNOWLEDGE
from ehrxdiff_core.atomic import atomic_path
from ehrxdiff_core.text.glossary import load_glossary

log = logging.getLogger(__name__)

D_ITEMS_COLUMNS = ["itemid", "label", "abbreviation", "linksto", "category", "unitname", "param_type",
                   "lownormalvalue", "highnormalvalue"]
D_LABITEMS_COLUMNS = ["itemid", "label", "fluid", "category"]

_TABLE_WORDS = {
    "chartevents": "charted observation",
    "inputevents": "ICU input (drug or fluid)",
    "outputevents": "ICU output",
    "procedureevents": "ICU procedure",
    "datetimeevents": "ICU date/time record",
    "ingredientevents": "ICU input ingredient",
}


def _read(path: Path, table: str, columns: list[str], required: tuple[str, ...] = ("itemid", "label")) -> pd.DataFrame:
    """Dictionary rows; `required` columns must exist, absent optional ones (units, ranges) read as NULL."""
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
        return con.execute(f"SELECT {cols} FROM read_parquet(?) ORDER BY itemid", [str(path)]).df()
    finally:
        con.close()


def _fmt(x: float) -> str:
    return f"{x:g}"


def _clean(v) -> str:
    return "" if v is None or (isinstance(v, float) and pd.isna(v)) or pd.isna(v) else str(v).strip()


def _d_items_rows(df: pd.DataFrame) -> list[dict]:
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
        kind = _TABLE_WORDS.get(_clean(r.linksto), "ICU item")
        text = f"{parts[0]}: {kind}, category {_clean(r.category) or 'unknown'}"
        if unit:
            text += f", unit {unit}"
        if low is not None and high is not None:
            text += f", normal range {_fmt(low)} to {_fmt(high)}" + (f" {unit}" if unit else "")
        elif low is not None:
            text += f", normal at least {_fmt(low)}"
        elif high is not None:
            text += f", normal at most {_fmt(high)}"
        rows.append(dict(source="d_items", ref=f"d_items:{int(r.itemid)}", itemid=int(r.itemid), key=label.lower(),
                         kind=_clean(r.linksto) or "item", aliases=[abbr.lower()] if abbr else [], text=text + ".",
                         low=low, high=high, unit=unit or None))
    return rows


def _d_labitems_rows(df: pd.DataFrame) -> list[dict]:
    rows = []
    for r in df.itertuples(index=False):
        label = _clean(r.label)
        if not label or label.lower() == "delete":
            continue
        fluid, cat = _clean(r.fluid), _clean(r.category)
        text = f"{label}: laboratory test" + (f" on {fluid.lower()}" if fluid else "") + (f", category {cat}" if cat else "")
        rows.append(dict(source="d_labitems", ref=f"d_labitems:{int(r.itemid)}", itemid=int(r.itemid),
                         key=label.lower(), kind="labevents", aliases=[], text=text + ".", low=None, high=None,
                         unit=None))
    return rows


def _glossary_rows() -> list[dict]:
    g = load_glossary()
    rows = []
    for r in g.itertuples(index=False):
        rows.append(dict(source="glossary", ref=f"glossary:{r.key}", itemid=None, key=r.key, kind=r.kind,
                         aliases=list(r.aliases), text=r.text,
                         low=None if pd.isna(r.low) else float(r.low),
                         high=None if pd.isna(r.high) else float(r.high), unit=r.unit or None))
    return rows


def build_knowledge_table(d_items: Path, d_labitems: Path) -> pa.Table:
    """Glossary first (its rows win lexical ties), then d_items and d_labitems in itemid order."""
    rows = _glossary_rows()
    rows += _d_items_rows(_read(d_items, "d_items", D_ITEMS_COLUMNS))
    rows += _d_labitems_rows(_read(d_labitems, "d_labitems", D_LABITEMS_COLUMNS))
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
