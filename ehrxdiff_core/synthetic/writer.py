"""Streaming CSV.gz writers in the PhysioNet style (lower-case header, no quoting, empty = NULL).

Rows arrive as column pieces (numpy arrays or scalars), are buffered as Arrow arrays and flushed
through pyarrow's C++ CSV writer into a gzip stream once a size threshold is reached, so memory stays
bounded whatever the number of rows. The gzip header carries no timestamp, so runs are byte-identical.
"""

from __future__ import annotations

import gzip
import io
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from ehrxdiff_core.data.tables import EVENT_TABLES

from .vocab import COLUMNS

_INT = {
    "subject_id",
    "hadm_id",
    "stay_id",
    "transfer_id",
    "caregiver_id",
    "itemid",
    "labevent_id",
    "specimen_id",
    "pharmacy_id",
    "poe_seq",
    "microevent_id",
    "micro_specimen_id",
    "spec_itemid",
    "test_seq",
    "test_itemid",
    "org_itemid",
    "isolate_num",
    "ab_itemid",
    "orderid",
    "linkorderid",
    "isopenbag",
    "continueinnextdept",
    "warning",
    "anchor_age",
    "anchor_year",
    "hospital_expire_flag",
    "study_id",
    "Rows",
    "Columns",
    "StudyDate",
}
_FLOAT = {
    "valuenum",
    "ref_range_lower",
    "ref_range_upper",
    "doses_per_24_hrs",
    "dilution_value",
    "los",
    "amount",
    "rate",
    "patientweight",
    "totalamount",
    "originalamount",
    "originalrate",
    "lownormalvalue",
    "highnormalvalue",
}
_TIME = {
    "admittime",
    "dischtime",
    "deathtime",
    "edregtime",
    "edouttime",
    "intime",
    "outtime",
    "charttime",
    "storetime",
    "starttime",
    "stoptime",
    "endtime",
    "chartdate",
    "storedate",
}


def _numeric_value(table: str) -> bool:
    """MIMIC's `value` is a number in some event tables (outputevents, procedureevents), text in others (labevents,
    chartevents): as the table's registry entry types it."""
    entry = EVENT_TABLES.get(table)
    return entry is not None and any(c.name == "value" and c.kind == "num" for c in entry.table.columns)


def column_type(table: str, col: str) -> pa.DataType:
    """Arrow type a column is written from (decides its text form in the CSV)."""
    if col in _INT:
        return pa.int64()
    if col in _FLOAT or (col == "value" and _numeric_value(table)):
        return pa.float64()
    if col in _TIME:
        return pa.timestamp("s")
    if col == "dod":
        return pa.date32()
    return pa.string()


def to_arrow(values: Any, typ: pa.DataType, n: int) -> pa.Array:
    """One column piece → Arrow: None = all NULL, a scalar is repeated, arrays/lists are converted."""
    if values is None:
        return pa.nulls(n, typ)
    if isinstance(values, pa.Array):
        if values.type == typ or (pa.types.is_integer(typ) and values.type == pa.string()):
            return values  # integer columns may arrive pre-formatted as text
        return values.cast(typ)
    if np.isscalar(values):
        if pa.types.is_integer(typ):  # constant ids: repeated text is ~10x cheaper to write than ints
            return pa.repeat(pa.scalar(str(int(values)), pa.string()), n)
        return pa.repeat(pa.scalar(values, typ), n)
    if isinstance(values, list):
        return pa.array(values, typ)
    if pa.types.is_timestamp(typ):
        arr = np.asarray(values)
        if arr.dtype.kind in "iu":
            return pa.array(arr.astype("int64"), pa.int64()).cast(typ)
        return pa.array(list(values), typ)
    if pa.types.is_floating(typ):
        arr = np.asarray(values, dtype=np.float64)
        return pa.array(arr, typ, mask=np.isnan(arr))
    if pa.types.is_integer(typ):
        arr = np.asarray(values)
        if arr.dtype.kind in "iu":
            return pa.array(arr.astype(np.int64), typ)
    return pa.array(list(values), typ)


def _scalar(v: Any) -> Any:
    """A one-row column value as a plain Python value (unwraps 1-element lists/arrays)."""
    if isinstance(v, pa.Array):
        return v.to_pylist()[0]
    if isinstance(v, (list, tuple, np.ndarray)):
        v = v[0]
    return v.item() if isinstance(v, np.generic) else v


def _concat(pieces: list[pa.Array]) -> pa.Array:
    """Join column pieces; an integer column with some pieces pre-formatted as text becomes text."""
    types = {p.type for p in pieces}
    if len(types) > 1:
        pieces = [p if p.type == pa.string() else p.cast(pa.string()) for p in pieces]
    return pa.concat_arrays(pieces)


class CsvGzTable:
    """One `.csv.gz` file, appended to in pieces, flushed every `flush_rows` rows."""

    def __init__(
        self, name: str, path: Path, gzip_level: int, flush_rows: int = 262_144, pool: ThreadPoolExecutor | None = None
    ):
        self.name, self.path = name, path
        self.columns = COLUMNS[name]
        self.types = [column_type(name, c) for c in self.columns]
        self.rows = 0
        self._flush_rows = flush_rows
        self._pieces: list[list[pa.Array]] = [[] for _ in self.columns]
        self._buffered = self._n_pieces = 0
        self._rows: list[dict[str, Any]] = []
        self._pool = pool
        self._pending: Future | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, compresslevel=gzip_level, mtime=0)
        self._gz.write((",".join(self.columns) + "\n").encode())
        self._opts = pacsv.WriteOptions(include_header=False, quoting_style="none", batch_size=65_536)

    def add(self, n: int, **cols: Any) -> None:
        """Append `n` rows; `cols` maps column name → array (len n), scalar or None; absent = NULL."""
        if n <= 0:
            return
        unknown = set(cols) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.name}: unknown columns {sorted(unknown)}")
        if n == 1:  # single rows are batched as Python values: one Arrow array per row would be slow
            self._rows.append({c: _scalar(v) for c, v in cols.items()})
            self._buffered += 1
            if len(self._rows) >= 4096:
                self._rows_to_piece()
            if self._buffered >= self._flush_rows:
                self.flush()
            return
        self._rows_to_piece()
        self._n_pieces += 1
        for k, (c, t) in enumerate(zip(self.columns, self.types)):
            arr = to_arrow(cols.get(c), t, n)
            if len(arr) != n:
                raise ValueError(f"{self.name}.{c}: {len(arr)} values for {n} rows")
            self._pieces[k].append(arr)
        self._buffered += n
        if self._buffered >= self._flush_rows or self._n_pieces >= 512:  # bound the per-piece overhead too
            self.flush()

    def _rows_to_piece(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        for k, (c, t) in enumerate(zip(self.columns, self.types)):
            self._pieces[k].append(pa.array([r.get(c) for r in rows], t))

    def flush(self) -> None:
        self._rows_to_piece()
        if not self._buffered:
            return
        table = pa.table(
            [_concat(p) for p in self._pieces],
            names=[f"c{i}" for i in range(len(self.columns))],
        )
        buf = io.BytesIO()
        try:
            pacsv.write_csv(table, buf, write_options=self._opts)
        except pa.ArrowInvalid as e:
            raise ValueError(f"{self.name}: a value contains a comma, quote or newline ({e})") from e
        self._wait()
        data = buf.getvalue()
        if self._pool is None:
            self._gz.write(data)
        else:  # compress in the background while the next rows are generated (zlib releases the GIL)
            self._pending = self._pool.submit(self._gz.write, data)
        self.rows += self._buffered
        self._pieces = [[] for _ in self.columns]
        self._buffered = self._n_pieces = 0

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def abort(self) -> None:
        """Close the file without writing what is buffered (the run failed)."""
        self._pieces, self._rows, self._pending = [], [], None
        for f in (self._gz, self._raw):
            try:
                f.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file is discarded
                pass

    def close(self) -> None:
        self.flush()
        self._wait()
        self._gz.close()
        self._raw.close()
