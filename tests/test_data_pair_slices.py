"""Gathering each pair's row range out of the sorted event stream (data/pair_slices.py), against plain Python."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.artifacts.events import EVENTS
from ehrxdiff_core.data.pair_slices import PairWindows, _compact, write_pair_events

T0 = datetime(2150, 1, 1)


def sorted_events(rng, n_adm=12, per_adm=(0, 40)):
    """Rows sorted by (hadm_id, t, text) with repeated times and texts, like the sorted event stream."""
    rows = []
    for a in range(n_adm):
        hadm = 20_000_000 + a
        n = int(rng.integers(*per_adm))
        minutes = np.sort(rng.integers(0, 600, n))  # many ties
        for m in minutes:
            text = f"chartevents itemid Heart Rate value {int(rng.integers(60, 64))}"  # few distinct texts
            rows.append((hadm, T0 + timedelta(minutes=int(m)), "chartevents", "220045", text))
    rows.sort(key=lambda r: (r[0], r[1], r[2], r[3], r[4]))
    return rows


def batches(rows, size):
    """The rows as Arrow record batches of `size` rows, like DuckDB's sorted stream."""
    cols = list(zip(*rows)) if rows else [[]] * 5
    table = pa.table(
        {
            "hadm_id": pa.array(cols[0], pa.int64()),
            "t": pa.array(cols[1], pa.timestamp("us")),
            "source": pa.array(cols[2], pa.string()),
            "code": pa.array(cols[3], pa.string()),
            "text": pa.array(cols[4], pa.string()),
        }
    )
    return table.to_batches(max_chunksize=size)


def us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1)) // timedelta(microseconds=1)


def random_pairs(rng, rows, max_events, n_adm=14):
    """Pair windows (some in admissions without events, some empty) + expected rows and counts, row by row."""
    pairs = []
    for a in range(n_adm):
        hadm = 20_000_000 + a
        for j in range(int(rng.integers(1, 5))):
            lo_t, hi_t = sorted(int(x) for x in rng.integers(0, 600, 2))
            pairs.append((hadm, f"trg{a}_{j}_prev", T0 + timedelta(minutes=lo_t), T0 + timedelta(minutes=hi_t)))
    pairs.sort(key=lambda p: (p[0], p[1]))
    expected, counts = [], []
    for hadm, pair_id, prev, trg in pairs:
        inside = [r for r in rows if r[0] == hadm and prev <= r[1] <= trg][-max_events:]
        counts.append(len(inside))
        for pos, r in enumerate(inside):
            expected.append((pair_id, pos, (r[1] - prev).total_seconds() / 60, r[2], r[3], r[4]))
    windows = PairWindows(pa.array([p[1] for p in pairs]), [p[0] for p in pairs], [us(p[2]) for p in pairs],
                          [us(p[3]) for p in pairs])  # fmt: skip
    return windows, expected, counts


@pytest.mark.parametrize("batch_size", [3, 17, 10_000])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gathered_rows_match_row_by_row_reference(tmp_path, seed, batch_size):
    rng = np.random.default_rng(seed)
    rows = sorted_events(rng)
    k = int(rng.integers(3, 30))
    windows, expected, counts = random_pairs(rng, rows, max_events=k)
    kept = write_pair_events(iter(batches(rows, batch_size)), windows, k, tmp_path / "out.parquet")
    out = pq.read_table(tmp_path / "out.parquet")
    assert list(kept) == counts and 0 in counts and max(counts) == k  # empty windows and the cut both happen
    assert out.num_rows == len(expected)
    EVENTS.check_file(tmp_path / "out.parquet")  # plain strings, not the dictionaries used while gathering
    got = list(zip(*(out.column(c).to_pylist() for c in out.schema.names)))
    assert got == expected


def test_stream_out_of_order_is_an_error_not_silent(tmp_path):
    rng = np.random.default_rng(5)
    rows = sorted_events(rng, n_adm=3, per_adm=(10, 20))
    windows, _, _ = random_pairs(rng, rows, max_events=100, n_adm=3)
    with pytest.raises(RuntimeError, match="out of"):
        write_pair_events(iter(batches(rows[::-1], 8)), windows, 100, tmp_path / "out.parquet")


def test_pairs_must_come_in_admission_order():
    with pytest.raises(ValueError, match="sorted by hadm_id"):
        PairWindows(pa.array(["b", "a"]), [2, 1], [0, 0], [10, 10])


def test_compact_drops_unused_dictionary_entries_and_keeps_values():
    words = [f"text {i}" for i in range(5000)]
    col = pa.array(words).dictionary_encode()
    table = pa.table({"hadm_id": pa.array(range(5000), pa.int64()), "text": col}).slice(4990)
    small = _compact(table)
    assert len(small.column("text").chunk(0).dictionary) == 10
    assert small.column("text").to_pylist() == words[4990:]
    assert small.schema == table.schema
