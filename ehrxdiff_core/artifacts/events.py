"""The `events` rule's artifacts: each pair's events, and the pairs that have any.

`events/events.parquet`: one row per event kept for a pair, the pair's events in time order: `position`
0 is the oldest kept event, `minutes_from_prev` counts from the previous image, `source` is the event
table, `code` its itemid, drug or organism (null only where a MEDS source has none), `text` the
serialized event. Only events inside `[prev_time, trg_time]` of the pair's admission are kept, and of
those the most recent `events.max_events`.

`events/triplets.parquet`: the rows of `cohort/triplets.parquet` whose pair kept at least one event,
plus `n_events`, the number kept; every stage after `events` reads the pairs from here.
"""

from __future__ import annotations

import pyarrow as pa

from ehrxdiff_core.artifacts.cohort import TRIPLETS
from ehrxdiff_core.artifacts.parquet import ParquetArtifact

EVENTS = ParquetArtifact(
    "events/events.parquet",
    "events",
    pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),
            pa.field("position", pa.int64(), nullable=False),
            pa.field("minutes_from_prev", pa.float64(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("code", pa.string()),
            pa.field("text", pa.string(), nullable=False),
        ]
    ),
)

EVENT_TRIPLETS = ParquetArtifact(
    "events/triplets.parquet", "events", TRIPLETS.schema.append(pa.field("n_events", pa.int64(), nullable=False))
)

# How the pair slices (data/pair_slices.py) write events.parquet: the string columns stay dictionary-encoded
# from gathering to the file, and the Arrow schema is not stored, so readers see the plain strings of `EVENTS`.
DICTIONARY_COLUMNS = ("pair_id", "source", "code", "text")
WRITE_SCHEMA = pa.schema(
    [f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in DICTIONARY_COLUMNS else f for f in EVENTS.schema]
)
# dictionary pages for the strings only, and no min/max statistics over the long texts: together these halve
# the writer's time (measured on the synthetic world); pair_id keeps its statistics for filters
WRITE_OPTIONS = dict(
    store_schema=False,
    use_dictionary=list(DICTIONARY_COLUMNS),
    write_statistics=["pair_id", "position", "minutes_from_prev", "source"],
)
