"""Where each source table lives: the synthetic world's folder or a PhysioNet download (MIMIC-IV,
MIMIC-CXR-JPG), or the MEDS image root; the rules resolve their input paths here."""

from __future__ import annotations

from pathlib import Path

from ehrxdiff_core.config import DataConfig
from ehrxdiff_core.data.errors import DataError
from ehrxdiff_core.data.tables import TABLE_NAMES, TABLES


def mimiciv_root(data_cfg: DataConfig, synthetic_root: Path) -> Path:
    """Folder holding hosp/ and icu/."""
    if data_cfg.source == "synthetic":
        return Path(synthetic_root) / "mimiciv"
    if data_cfg.source == "mimic":
        if not data_cfg.mimic.mimiciv_root:
            raise DataError("data.mimic.mimiciv_root must be set when data.source is 'mimic'")
        return Path(data_cfg.mimic.mimiciv_root)
    raise DataError(f"data.source={data_cfg.source!r} has no MIMIC CSV tables (use 'synthetic' or 'mimic')")


def cxr_root(data_cfg: DataConfig, synthetic_root: Path) -> Path:
    """Folder the cohort's image paths are relative to: MIMIC-CXR-JPG's root, or the MEDS image root."""
    if data_cfg.source == "meds":
        return Path(data_cfg.meds.image_root or Path(data_cfg.meds.image_manifest).parent)
    if data_cfg.source == "synthetic":
        return Path(synthetic_root) / "mimic-cxr-jpg"
    if data_cfg.source == "mimic":
        if not data_cfg.mimic.cxr_root:
            raise DataError("data.mimic.cxr_root must be set when data.source is 'mimic'")
        return Path(data_cfg.mimic.cxr_root)
    raise DataError(f"data.source={data_cfg.source!r} has no MIMIC-CXR-JPG folder (use 'synthetic' or 'mimic')")


def source_path(table: str, data_cfg: DataConfig, synthetic_root: Path) -> Path:
    """The CSV of `table` in the PhysioNet layout: `.csv.gz`, or `.csv` when only that exists."""
    if table not in TABLES:
        raise DataError(f"unknown table {table!r}; known tables: {', '.join(TABLE_NAMES)}")
    t = TABLES[table]
    if t.module == "cxr":
        base = cxr_root(data_cfg, synthetic_root) / t.file
    else:
        base = mimiciv_root(data_cfg, synthetic_root) / t.module / t.file
    gz, plain = base.with_name(base.name + ".csv.gz"), base.with_name(base.name + ".csv")
    if not gz.exists() and plain.exists():
        return plain
    return gz
