"""A samples folder: what the model's `sample` rules and the image controls write and `evaluate` reads.

A samples folder (`samples/{split}/`, `samples/image_only/{split}/`, `samples/previous_vae/{split}/`, …)
holds one PNG per (pair, seed index), `size` × `size` 8-bit grayscale, and `manifest.parquet`, one row
per image. Seed index 0 of a pair is `{pair_id}.png` (the path every reader may rely on), index k >= 1
is `seed{k}/{pair_id}.png`. Deterministic controls have index 0 only, `steps` 0 and no guidance (NaN).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from ehrxdiff_core.artifacts.parquet import ParquetArtifact

MANIFEST = ParquetArtifact(
    "samples/{split}/manifest.parquet",
    "sample",
    pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("seed_index", pa.int32(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
            pa.field("path", pa.string(), nullable=False),  # relative to the folder
            pa.field("sampler", pa.string(), nullable=False),
            pa.field("steps", pa.int64(), nullable=False),
            pa.field("guidance", pa.float64()),
            pa.field("seconds", pa.float64(), nullable=False),
            pa.field("compose", pa.string()),  # sample.compose of a generated image (null for a control)
            pa.field("change_blur_px", pa.float64()),  # sample.change_blur_px (null for a control)
        ]
    ),
)
# what every manifest has; those written before several seeds existed lack seed_index and path (seed 0 only)
MANIFEST_REQUIRED = MANIFEST.columns("pair_id", "seed", "sampler", "steps", "guidance")


def sample_path(pair_id: str, seed_index: int) -> str:
    """Where image (pair, seed index) lies in a samples folder, relative to it."""
    return f"{pair_id}.png" if seed_index == 0 else f"seed{seed_index}/{pair_id}.png"


def write_manifest(folder: str | Path, rows: list[dict]) -> None:
    """`{folder}/manifest.parquet` from one dict per image, typed by `MANIFEST` (a missing column fails)."""
    MANIFEST.write(pa.Table.from_pylist(rows, schema=MANIFEST.schema), Path(folder) / "manifest.parquet")
