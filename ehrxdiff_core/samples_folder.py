"""The samples-folder contract shared by the model's `sample` stage, the image controls and `evaluate`.

A samples folder holds one PNG per (pair, seed index) and `manifest.parquet`, one row per image.
Seed index 0 of a pair is `{pair_id}.png` (the path every reader may rely on), index k >= 1 is
`seed{k}/{pair_id}.png`. Deterministic controls have index 0 only and a null `guidance`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("pair_id", pa.string(), nullable=False),
        pa.field("seed_index", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # relative to the folder
        pa.field("sampler", pa.string(), nullable=False),
        pa.field("steps", pa.int64(), nullable=False),
        pa.field("guidance", pa.float64()),
        pa.field("seconds", pa.float64(), nullable=False),
    ]
)


def sample_path(pair_id: str, seed_index: int) -> str:
    """Where image (pair, seed index) lies in a samples folder, relative to it."""
    return f"{pair_id}.png" if seed_index == 0 else f"seed{seed_index}/{pair_id}.png"


def write_manifest(folder: str | Path, rows: list[dict]) -> None:
    """`{folder}/manifest.parquet` from one dict per image, typed by `MANIFEST_SCHEMA` (a missing column fails)."""
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), Path(folder) / "manifest.parquet")
