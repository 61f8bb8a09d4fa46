"""The `cohort` rule's artifacts: the (previous, target) pairs and the images they use, and the split.

`cohort/triplets.parquet`: one row per pair of frontal images of two different studies inside one
adult hospital admission, the target less than `cohort.max_gap_hours` after the previous image.
`pair_id` is `"{trg_dicom_id}_{prev_dicom_id}"`; `gap_hours` is `trg_time - prev_time` in hours;
`split` is `train`/`valid`/`test`, one per subject; `age`, `gender` and `race` are those of the
admission (null when the source has none); the CheXpert labels of both images follow, `prev_`/`trg_`
prefixed, 1.0 positive, 0.0 negative, null for uncertain or blank. Rows are sorted by `pair_id`.

`cohort/images.parquet`: each image some pair uses, once, sorted by `dicom_id`, with its admission,
split, demographics, CheXpert labels (same coding) and `path`, relative to the image root.
"""

from __future__ import annotations

import pyarrow as pa

from ehrxdiff_core.artifacts.parquet import ParquetArtifact
from ehrxdiff_core.labels import LABEL_COLUMNS

SPLITS = ("train", "valid", "test")
PREV, TRG = "prev_", "trg_"  # prefixes of the previous and the target image's label columns


def label_columns(prefix: str, labels=LABEL_COLUMNS) -> list[str]:
    """The label columns of one image of a pair: `label_columns(TRG, ("edema",))` → `["trg_edema"]`."""
    return [f"{prefix}{label}" for label in labels]


def _labels(prefix: str = "") -> list[pa.Field]:
    return [pa.field(name, pa.float64()) for name in label_columns(prefix)]


TRIPLETS = ParquetArtifact(
    "cohort/triplets.parquet",
    "cohort",
    pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("subject_id", pa.int64(), nullable=False),
            pa.field("hadm_id", pa.int64(), nullable=False),
            pa.field("prev_dicom_id", pa.string(), nullable=False),
            pa.field("trg_dicom_id", pa.string(), nullable=False),
            pa.field("prev_study_id", pa.int64(), nullable=False),
            pa.field("trg_study_id", pa.int64(), nullable=False),
            pa.field("prev_time", pa.timestamp("us"), nullable=False),
            pa.field("trg_time", pa.timestamp("us"), nullable=False),
            pa.field("gap_hours", pa.float64(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("age", pa.int64()),
            pa.field("gender", pa.string()),
            pa.field("race", pa.string()),
            *_labels(PREV),
            *_labels(TRG),
        ]
    ),
)

COHORT_IMAGES = ParquetArtifact(
    "cohort/images.parquet",
    "cohort",
    pa.schema(
        [
            pa.field("dicom_id", pa.string(), nullable=False),
            pa.field("subject_id", pa.int64(), nullable=False),
            pa.field("study_id", pa.int64(), nullable=False),
            pa.field("hadm_id", pa.int64(), nullable=False),
            pa.field("study_time", pa.timestamp("us"), nullable=False),
            pa.field("view", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("age", pa.int64()),
            pa.field("gender", pa.string()),
            pa.field("race", pa.string()),
            pa.field("path", pa.string(), nullable=False),
            *_labels(),
        ]
    ),
)

# a pair and its two images: what training, sampling and the image controls read of the triplets
PAIR_IMAGES = TRIPLETS.columns("pair_id", "prev_dicom_id", "trg_dicom_id")
