"""Data stages: ingest (CSV → typed Parquet), cohort and pairs, image store, events (DuckDB + Parquet)."""

from ehrxdiff_core.data.errors import DataError

__all__ = ["DataError"]
