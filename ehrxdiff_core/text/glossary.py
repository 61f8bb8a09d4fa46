"""The clinical glossary shipped with the package: what an item means and what a change means for the chest.

Stored as `ehrxdiff_core/resources/glossary.csv`; leading `#` lines are the header (sources, licence).
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path

import pandas as pd

GLOSSARY_COLUMNS = ["key", "kind", "aliases", "low", "high", "unit", "text"]
GLOSSARY_KINDS = {"vital", "setting", "lab", "drug", "fluid", "procedure", "organism", "output", "specimen"}
# kinds whose low/high are reference ranges of a measurement (the abnormality flag uses only these)
MEASUREMENT_KINDS = {"vital", "setting", "lab"}


def glossary_path() -> Path:
    return Path(str(resources.files("ehrxdiff_core") / "resources" / "glossary.csv"))


def load_glossary(path: str | Path | None = None) -> pd.DataFrame:
    """Glossary rows with columns GLOSSARY_COLUMNS; `aliases` becomes a list of lower-case names."""
    path = Path(path) if path is not None else glossary_path()
    lines = path.read_text(encoding="utf-8").splitlines()
    body = "\n".join(line for line in lines if not line.startswith("#"))
    df = pd.read_csv(io.StringIO(body), dtype=str, keep_default_na=False, quoting=csv.QUOTE_MINIMAL)
    missing = set(GLOSSARY_COLUMNS) - set(df.columns)
    if missing:
        raise ValueError(f"{path}: glossary lacks columns {sorted(missing)}")
    bad_kind = sorted(set(df["kind"]) - GLOSSARY_KINDS)
    if bad_kind:
        raise ValueError(f"{path}: unknown glossary kind(s) {bad_kind}")
    df["key"] = df["key"].str.strip().str.lower()
    dup = df["key"][df["key"].duplicated()].tolist()
    if dup:
        raise ValueError(f"{path}: duplicate glossary keys {dup}")
    for col in ("low", "high"):
        df[col] = pd.to_numeric(df[col].replace("", None), errors="raise").astype("float64")
    df["unit"] = df["unit"].str.strip()
    df["aliases"] = [[a.strip().lower() for a in s.split("|") if a.strip()] for s in df["aliases"]]
    return df[GLOSSARY_COLUMNS].reset_index(drop=True)
