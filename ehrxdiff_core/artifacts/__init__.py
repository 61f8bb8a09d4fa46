"""What each artifact holds, in one place: Parquet schemas, HDF5 layouts with their openers, the metrics model.

Paths are relative to the results folder. Writers write through these definitions (a Parquet frame is
cast to its schema, or the file DuckDB wrote is checked against it, before it is renamed into place);
readers take their column names from them; `tests/contracts.py` checks the artifacts against them.
This is the bottom layer of the library: it imports pyarrow, h5py, numpy and pydantic, nothing heavier.

| artifact | rule | module |
|---|---|---|
| `cohort/triplets.parquet`, `cohort/images.parquet`, the split names | `cohort` | `artifacts.cohort` |
| `events/events.parquet`, `events/triplets.parquet` | `events` | `artifacts.events` |
| `images/cxr_{size}.h5` and its opener `open_image_store` | `images` | `artifacts.images` |
| `rag/knowledge.parquet`; `embeddings/events.h5` and its opener | `knowledge`, `embed` | `artifacts.text` |
| a samples folder and its `manifest.parquet` | `sample`, the image controls | `artifacts.samples` |
| `eval/metrics.json` (`MetricsFile`) | `evaluate` | `artifacts.metrics` |
"""

from ehrxdiff_core.artifacts.parquet import ArtifactError, MissingArtifactError, ParquetArtifact

__all__ = ["ArtifactError", "MissingArtifactError", "ParquetArtifact"]
