"""Write events/events.parquet from one stream of in-window events sorted by (hadm_id, t, source, code, text).

Why not a SQL range join + ORDER BY: pairs overlap (an event sits in ~1.6 pairs on the synthetic
world), so the join duplicates rows and the final sort then moves the long text strings a second
time; that was ~60 % of the stage's time. In the sorted stream every pair's events are a contiguous
row range of its admission, found by binary search on (hadm_id, t) and gathered by index. Event
texts repeat a lot (tens of events per distinct text), so the string columns are dictionary-encoded
as they arrive and stay so up to the output: gathering moves 4-byte indices, not strings. Memory
holds the rows of the admission in flight plus one batch and one output row group, whatever the
table size.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrxdiff_core.artifacts.events import EVENTS, WRITE_OPTIONS, WRITE_SCHEMA
from ehrxdiff_core.data.duck import ROW_GROUP

STRINGS = ("source", "code", "text")  # the event stream's string columns, carried to the output
# events/events.parquet as the artifact says (artifacts/events.py), its strings dictionary-encoded while gathering
OUTPUT_SCHEMA = WRITE_SCHEMA
_KEY = np.dtype([("hadm_id", "<i8"), ("t", "<i8")])  # numpy orders structured values field by field


class PairWindows:
    """Pairs in output order (sorted by hadm_id), each with its window [prev, trg] in epoch microseconds."""

    def __init__(self, pair_id, hadm_id, prev_us, trg_us):
        pair_id = pa.chunked_array([pair_id]) if isinstance(pair_id, pa.Array) else pair_id
        self.pair_id = pc.dictionary_encode(pair_id.combine_chunks())
        self.hadm_id = np.asarray(hadm_id, dtype=np.int64)
        self.prev_us = np.asarray(prev_us, dtype=np.int64)
        self.trg_us = np.asarray(trg_us, dtype=np.int64)
        if not (np.all(np.diff(self.hadm_id) >= 0) and np.all(self.prev_us <= self.trg_us)):
            raise ValueError("pairs must be sorted by hadm_id, each with prev <= trg")

    def __len__(self) -> int:
        return len(self.hadm_id)


def write_pair_events(
    batches: Iterable[pa.RecordBatch], pairs: PairWindows, max_events: int, out: Path, compression: str = "zstd"
) -> np.ndarray:
    """Write each pair's most recent `max_events` events to `out`; return the events kept per pair.

    `batches` (hadm_id, t, source, code, text; t in epoch µs or timestamp[us]) must be sorted by
    (hadm_id, t, ...); a pair's `position` counts from its oldest kept event, `minutes_from_prev`
    from its previous image.
    RuntimeError when the stream is out of order (a bug upstream: never silent).
    """
    kept = np.zeros(len(pairs), dtype=np.int64)
    buf: pa.Table | None = None  # the rows of admissions not finished yet
    done = 0  # pairs [0, done) are written
    pending: list[pa.Table] = []
    # the pool is left first: it waits for a write in flight before the writer closes
    with (
        pq.ParquetWriter(out, OUTPUT_SCHEMA, **WRITE_OPTIONS, compression=compression) as writer,
        ThreadPoolExecutor(max_workers=1) as pool,
    ):
        writing = None  # writing one row group overlaps with gathering the next (pyarrow releases the GIL)

        def flush() -> None:
            nonlocal pending, writing
            if writing is not None:
                writing.result()
            table = pa.concat_tables(pending).combine_chunks()
            writing = pool.submit(writer.write_table, table, row_group_size=table.num_rows)
            pending = []

        for batch in itertools.chain(batches, [None]):  # None: end of stream, every admission is complete
            if batch is not None:
                if batch.num_rows == 0:
                    continue
                part = _encode(batch)
                _check_order(buf, part)
                buf = part if buf is None else pa.concat_tables([buf, part]).unify_dictionaries().combine_chunks()
            if buf is None:
                break
            hadm = buf.column("hadm_id").to_numpy()
            # rows of admissions before the last one seen are complete (all of them at the end)
            last = hadm[-1] if batch is not None else np.iinfo(np.int64).max
            complete = int(np.searchsorted(hadm, last, side="left"))
            stop = int(np.searchsorted(pairs.hadm_id, last, side="left"))
            if stop > done:
                table = _gather(buf.slice(0, complete), pairs, done, stop, max_events, kept)
                done = stop
                if table is not None:
                    pending.append(table)
                    if sum(t.num_rows for t in pending) >= ROW_GROUP:
                        flush()
            if complete:
                buf = _compact(buf.slice(complete))
        if pending:
            flush()
        if writing is not None:
            writing.result()
    EVENTS.check_file(out)
    return kept


def _encode(batch: pa.RecordBatch) -> pa.Table:
    cols = [batch.column(n) for n in ("hadm_id", "t")] + [pc.dictionary_encode(batch.column(n)) for n in STRINGS]
    return pa.Table.from_arrays(cols, names=["hadm_id", "t", *STRINGS])


def _check_order(buf: pa.Table | None, part: pa.Table) -> None:
    h = part.column("hadm_id").to_numpy()
    t = part.column("t").cast(pa.int64()).to_numpy()
    if buf is not None and buf.num_rows:
        h = np.concatenate([buf.column("hadm_id").to_numpy()[-1:], h])
        t = np.concatenate([buf.column("t").cast(pa.int64()).to_numpy()[-1:], t])
    dh, dt = np.diff(h), np.diff(t)
    if np.any((dh < 0) | ((dh == 0) & (dt < 0))):
        raise RuntimeError("events: the sorted event stream is out of (hadm_id, t) order")


def _gather(rows: pa.Table, pairs: PairWindows, a: int, b: int, k: int, kept: np.ndarray) -> pa.Table | None:
    """Output rows of pairs [a, b): all their admissions' rows are in `rows`; records counts in `kept`."""
    keys = np.empty(rows.num_rows, dtype=_KEY)
    keys["hadm_id"] = rows.column("hadm_id").to_numpy()
    keys["t"] = rows.column("t").cast(pa.int64()).to_numpy()
    q = np.empty(b - a, dtype=_KEY)
    q["hadm_id"] = pairs.hadm_id[a:b]
    q["t"] = pairs.prev_us[a:b]
    lo = np.searchsorted(keys, q, side="left")  # first event at or after the previous image
    q["t"] = pairs.trg_us[a:b]
    hi = np.searchsorted(keys, q, side="right")  # one past the last event at or before the target image
    counts = np.clip(hi - lo, 0, k)  # the most recent k
    kept[a:b] = counts
    if not counts.any():
        return None
    owner = np.repeat(np.arange(b - a), counts)
    position = np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    got = rows.take(pa.array((hi - counts)[owner] + position))
    t_us = got.column("t").cast(pa.int64()).to_numpy()
    return pa.table(
        {
            "pair_id": pairs.pair_id.take(pa.array(owner + a)),
            "position": position,
            "minutes_from_prev": (t_us - pairs.prev_us[a:b][owner]) / 60e6,
            **{name: got.column(name).combine_chunks() for name in STRINGS},
        },
        schema=OUTPUT_SCHEMA,
    )


def _compact(buf: pa.Table) -> pa.Table:
    """Drop dictionary entries no row of `buf` uses any more (slicing keeps them; unification adds more)."""
    cols = []
    for name in buf.column_names:
        col = buf.column(name).combine_chunks()
        if pa.types.is_dictionary(col.type) and len(col.dictionary) > 2 * len(col) + 1024 and not col.null_count:
            used, idx = np.unique(col.indices.to_numpy(zero_copy_only=False), return_inverse=True)
            col = pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32)), col.dictionary.take(pa.array(used)))
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=buf.schema)
