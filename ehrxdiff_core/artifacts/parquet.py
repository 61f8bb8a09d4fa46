"""A Parquet artifact: its path under the results folder, the rule that writes it and its Arrow schema.

Writers conform what they write to the schema (columns in its order, cast to its types, no null where
the schema says non-null) or, when DuckDB writes the file, select through `select_sql` (the schema's
columns, cast to its types) and check the written file before it is renamed into place. Readers ask for
the columns they use by name: a name the schema lacks is a bug caught at once, a column the file lacks
is an `ArtifactError` naming the file and the column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

# the DuckDB type of each Arrow type the schemas use, for the artifacts DuckDB writes (`ParquetArtifact.select_sql`)
_SQL_TYPES = {
    pa.int64(): "BIGINT",
    pa.int32(): "INTEGER",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.timestamp("us"): "TIMESTAMP",
    pa.bool_(): "BOOLEAN",
}


class ArtifactError(ValueError):
    """An artifact is missing or malformed; the message names the file and the column or dataset."""


class MissingArtifactError(ArtifactError, FileNotFoundError):
    """An artifact file does not exist (the message names the rule that writes it)."""


@dataclass(frozen=True)
class ParquetArtifact:
    path: str  # relative to the results folder; `{split}`-style fields where one rule writes several
    rule: str  # the rule that writes it
    schema: pa.Schema

    @property
    def names(self) -> list[str]:
        return list(self.schema.names)

    def columns(self, *names: str) -> list[str]:
        """`names`, each checked to be a column of this artifact: a reader's projection."""
        unknown = [n for n in names if n not in self.schema.names]
        if unknown:
            raise KeyError(f"{self.path} has no column(s) {unknown}; its columns are {self.names}")
        return list(names)

    def select_sql(self, exprs: dict[str, str] | None = None, alias: str | None = None) -> str:
        """The SELECT list of a SQL query that writes this artifact: its columns in order, each from `exprs[name]`
        (default: the column of that name, of relation `alias` when given), cast to its type."""
        exprs = exprs or {}
        unknown = sorted(set(exprs) - set(self.schema.names))
        if unknown:
            raise KeyError(f"expressions for columns {unknown}, which {self.path} lacks")
        parts = []
        for field in self.schema:
            expr = exprs.get(field.name, f"{alias}.{field.name}" if alias else field.name)
            parts.append(f"CAST({expr} AS {_SQL_TYPES[field.type]}) AS {field.name}")
        return ", ".join(parts)

    def conform(self, table, out: str | Path) -> pa.Table:
        """`table` (Arrow or pandas) as exactly this schema: its columns in order, each cast to its type; a
        missing or unexpected column, a failed cast or a null in a non-null column names `out` and the column."""
        if not isinstance(table, pa.Table):
            table = pa.Table.from_pandas(table, preserve_index=False)
        missing = [n for n in self.schema.names if n not in table.column_names]
        if missing:
            raise ArtifactError(f"{out}: column(s) {missing} missing from {self.path} (written by `{self.rule}`)")
        extra = [n for n in table.column_names if n not in self.schema.names]
        if extra:
            raise ArtifactError(f"{out}: column(s) {extra} are not columns of {self.path}: {self.names}")
        cols = []
        for field in self.schema:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
                raise ArtifactError(
                    f"{out}: column {field.name!r} of {self.path} is {col.type}, not {field.type}: {err}"
                ) from None
            if not field.nullable and col.null_count:
                raise ArtifactError(f"{out}: column {field.name!r} of {self.path} has {col.null_count} null(s)")
            cols.append(col)
        return pa.Table.from_arrays(cols, schema=self.schema)

    def write(self, table, out: str | Path, **options) -> None:
        """Write `table`, conformed to the schema, to `out` (`options`: those of `pyarrow.parquet.write_table`)."""
        pq.write_table(self.conform(table, out), out, **options)

    def check_file(self, path: str | Path) -> None:
        """The file at `path` holds exactly this schema's columns, in order, of its types, and no null where
        the schema says non-null (checked from the row-group statistics, else by reading that column)."""
        got = pq.read_schema(path)
        if got.names != self.schema.names:
            missing = [n for n in self.schema.names if n not in got.names]
            extra = [n for n in got.names if n not in self.schema.names]
            raise ArtifactError(
                f"{path}: columns of {self.path} missing {missing}, unexpected {extra} "
                f"(order: {got.names}, expected {self.schema.names})"
            )
        for field in self.schema:
            have = got.field(field.name)
            if have.type != field.type:
                raise ArtifactError(f"{path}: column {field.name!r} of {self.path} is {have.type}, not {field.type}")
        nullable = [i for i, f in enumerate(self.schema) if not f.nullable and got.field(i).nullable]
        if nullable:
            _check_no_nulls(Path(path), [self.schema.names[i] for i in nullable], self.path)

    def require(self, path: str | Path, columns: Iterable[str] | None = None) -> None:
        """The file at `path` exists and has `columns` (default: every column of the schema)."""
        path = Path(path)
        if not path.is_file():
            raise MissingArtifactError(f"{self.path} not found: {path} (run the `{self.rule}` rule)")
        need = self.names if columns is None else self.columns(*columns)
        have = set(pq.read_schema(path).names)
        missing = [c for c in need if c not in have]
        if missing:
            raise ArtifactError(f"{path}: column(s) {missing} missing ({self.path}, written by `{self.rule}`)")


def _check_no_nulls(path: Path, names: list[str], what: str) -> None:
    meta = pq.ParquetFile(path).metadata
    index = {meta.schema.column(i).path: i for i in range(meta.num_columns)}
    for name in names:
        nulls = 0
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(index[name]).statistics
            if stats is None or not stats.has_null_count:
                nulls = pq.read_table(path, columns=[name]).column(name).null_count
                break
            nulls += stats.null_count
        if nulls:
            raise ArtifactError(f"{path}: column {name!r} of {what} has {nulls} null(s)")
