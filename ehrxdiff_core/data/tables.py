"""Registry of the source tables: where each lives in the PhysioNet layout, which typed columns we keep, and for
each event table everything the stages need to turn its rows into events.

Ingest reads only the listed columns (matched case-insensitively) so later stages can rely on lower-case names
and fixed types; the column order is the CSV order, which the GenHPF serialization follows. An event table is one
`EventTable` entry, added with `register_event_table`: the ingest, events, knowledge and embedding stages, the
config's `events.tables` and the workflow's rules all read this registry, so a new table is that entry plus,
when its rows are filtered, one function in `data/event_filters.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache, cached_property
from typing import TYPE_CHECKING

from ehrxdiff_core.data import event_filters as F
from ehrxdiff_core.labels import LABEL_COLUMNS

if TYPE_CHECKING:
    from ehrxdiff_core.config import EventsConfig

# Logical types → DuckDB types. "id"/"int" are integers, "code"/"text" strings (codes that look numeric
# keep their leading zeros), "ts" timestamps with optional milliseconds, "num" measurements.
SQL_TYPES = {"id": "BIGINT", "int": "BIGINT", "num": "DOUBLE", "ts": "TIMESTAMP", "code": "VARCHAR", "text": "VARCHAR"}
MIMICIV_MODULES = ("hosp", "icu")  # the MIMIC-IV folders an event table can live in


@dataclass(frozen=True)
class Column:
    name: str  # lower-case, snake-case name in the CSV header (after normalisation) and in our Parquet
    kind: str  # key of SQL_TYPES
    required: bool = True  # a missing optional column becomes NULL instead of an error

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.kind]


@dataclass(frozen=True)
class Table:
    name: str
    module: str  # "hosp", "icu" (MIMIC-IV) or "cxr" (MIMIC-CXR-JPG)
    file: str  # file name without .csv/.csv.gz
    columns: tuple[Column, ...]


def parse_columns(spec: str) -> tuple[Column, ...]:
    """'subject_id:id race:text?' → Columns, in the order given; a trailing '?' marks an optional column."""
    cols = []
    for item in spec.split():
        col, kind = item.split(":")
        if kind.rstrip("?") not in SQL_TYPES:
            raise ValueError(f"column {col!r}: unknown kind {kind!r} (one of {', '.join(SQL_TYPES)})")
        cols.append(Column(col, kind.rstrip("?"), required=not kind.endswith("?")))
    return tuple(cols)


def _table(name: str, module: str, spec: str, file: str | None = None) -> Table:
    return Table(name, module, file or name, parse_columns(spec))


# The tables that are not event tables, columns in the CSV order of MIMIC-IV 2.2 / MIMIC-CXR-JPG 2.0.0.
BASE_TABLES = (
    _table("patients", "hosp", "subject_id:id gender:code anchor_age:int anchor_year:int"),
    _table("admissions", "hosp", "subject_id:id hadm_id:id admittime:ts dischtime:ts race:text?"),
    # the item dictionaries: an event table's `DictionaryJoin` names one of them
    _table("d_labitems", "hosp", "itemid:id label:text fluid:text? category:text"),
    _table(
        "d_items",
        "icu",
        "itemid:id label:text abbreviation:text? linksto:code category:text unitname:text? param_type:text? "
        "lownormalvalue:num? highnormalvalue:num?",
    ),
    _table(
        "cxr_metadata",
        "cxr",
        "dicom_id:code subject_id:id study_id:id viewposition:code studydate:code studytime:code",
        file="mimic-cxr-2.0.0-metadata",
    ),
    _table("cxr_split", "cxr", "dicom_id:code study_id:id subject_id:id split:code", file="mimic-cxr-2.0.0-split"),
    _table(
        "cxr_chexpert",
        "cxr",
        "subject_id:id study_id:id " + " ".join(f"{c}:num" for c in LABEL_COLUMNS),
        file="mimic-cxr-2.0.0-chexpert",
    ),
)


@dataclass(frozen=True)
class DictionaryJoin:
    """How an event table names its items: through the dictionary table `table` (one of TABLES).

    `key` is a column of both tables; in the event text the dictionary's `label` replaces it (the number stays
    when the item is unknown). A filter reads the dictionary row as `d.label` and `d.<column>` for `columns`.
    `item_table`: the dictionary column that says which event table each item belongs to (d_items.linksto);
    None when all of them belong to the table that joins it. The knowledge corpus holds one snippet per row.
    """

    table: str
    key: str = "itemid"
    label: str = "label"
    columns: tuple[str, ...] = ("category",)
    item_table: str | None = None


D_ITEMS = DictionaryJoin("d_items", columns=("category", "linksto"), item_table="linksto")
D_LABITEMS = DictionaryJoin("d_labitems")

EventFilter = Callable[[str, str, "EventsConfig"], str]


@dataclass(frozen=True)
class EventTable:
    """One MIMIC-IV event table and how its rows become events.

    An event row becomes `events.parquet`'s `text` ("table col value col value ...": every column but `ids` and
    `time`, in CSV order, nulls skipped, numbers rounded to `events.round_decimals`), `code` (the first non-null
    of `code`) and `source` (the table's name); the text stage reads `quantity` back from the text.
    """

    name: str
    source: str  # where it lives under the MIMIC-IV root, without .csv/.csv.gz: "icu/chartevents"
    columns: str  # the columns ingest keeps, in CSV order: "hadm_id:id charttime:ts value:text? ..." ('?': optional)
    time: str  # the event's time: events between the two images of a pair are kept
    code: tuple[str, ...]  # the event's `code`: the first of these columns that is not null
    ids: tuple[str, ...] = ("hadm_id",)  # identifiers, never in the text; hadm_id joins the events to the pairs
    dictionary: DictionaryJoin | None = None  # where its items' names come from
    filter: EventFilter | None = None  # the paper's row filter (`events.paper_filters`); None keeps every row
    quantity: tuple[str, str] | None = None  # the (number, unit) columns: numeric features, abnormality flags
    measurement: bool = False  # the quantity is a measurement, compared with reference ranges (not a dose)
    item_description: str | None = None  # what one of its dictionary's items is, in the knowledge corpus
    default: bool = False  # selected when `events.tables` is not set (the paper's seven tables)

    @cached_property
    def table(self) -> Table:
        module, _, file = self.source.partition("/")
        return Table(self.name, module, file, parse_columns(self.columns))

    @cached_property
    def serialized(self) -> tuple[Column, ...]:
        """The columns of the event text, in CSV order."""
        return tuple(c for c in self.table.columns if c.name not in self.ids and c.name != self.time)

    def check(self) -> None:
        """Raise ValueError naming the field when the entry does not fit its own columns."""
        module, _, file = self.source.partition("/")
        if module not in MIMICIV_MODULES or not file or "/" in file:
            raise ValueError(f"event table {self.name}: source {self.source!r} must be 'hosp/<file>' or 'icu/<file>'")
        kinds = {c.name: c.kind for c in self.table.columns}
        named = {
            "time": [self.time],
            "ids": list(self.ids),
            "code": list(self.code),
            "quantity": list(self.quantity or ()),
            "dictionary.key": [self.dictionary.key] if self.dictionary is not None else [],
        }
        for field, cols in named.items():
            missing = [c for c in cols if c not in kinds]
            if missing:
                raise ValueError(f"event table {self.name}: {field} names column(s) {missing} that `columns` lacks")
        if kinds[self.time] != "ts":
            raise ValueError(f"event table {self.name}: time column {self.time!r} must be of kind 'ts'")
        if "hadm_id" not in self.ids:
            raise ValueError(f"event table {self.name}: ids must include hadm_id (events are joined to pairs by it)")
        if not self.code:
            raise ValueError(f"event table {self.name}: code must name at least one column")
        if self.dictionary is not None:
            if self.dictionary.table not in TABLES:
                raise ValueError(f"event table {self.name}: dictionary {self.dictionary.table!r} is not in TABLES")
            if kinds[self.dictionary.key] not in ("id", "int"):
                raise ValueError(f"event table {self.name}: dictionary key {self.dictionary.key!r} must be an integer")


# name → Table of every table ingest writes, and name → EventTable; both grow with register_event_table
TABLES: dict[str, Table] = {t.name: t for t in BASE_TABLES}
EVENT_TABLES: dict[str, EventTable] = {}
# the names of TABLES: a live view, so tables registered later are in it too
TABLE_NAMES = TABLES.keys()


def register_event_table(entry: EventTable) -> EventTable:
    """Add an event table to the registry: every stage and the config's `events.tables` then know it."""
    if entry.name in TABLES:
        raise ValueError(f"table {entry.name!r} is already registered")
    entry.check()
    TABLES[entry.name] = entry.table
    EVENT_TABLES[entry.name] = entry
    _derived_changed()
    return entry


def unregister_event_table(name: str) -> None:
    """Remove a registered event table (tests that register a table of their own clean up with this)."""
    if name not in EVENT_TABLES:
        raise KeyError(f"{name!r} is not a registered event table")
    del EVENT_TABLES[name], TABLES[name]
    _derived_changed()


def default_event_tables() -> list[str]:
    """`events.tables` when the config does not set it, in registration order."""
    return [t.name for t in EVENT_TABLES.values() if t.default]


def ingested_tables(selected: Iterable[str]) -> list[str]:
    """What a run ingests: every table that is not an event table (the item dictionaries included, which the
    knowledge corpus reads whatever the selection) and the `selected` event tables, in TABLES order."""
    selected = set(selected)
    return [t for t in TABLES if t not in EVENT_TABLES or t in selected]


def dictionaries(tables: Iterable[str] | None = None) -> dict[str, DictionaryJoin]:
    """The item dictionaries the given event tables join (default: every registered one), by name, sorted."""
    names = EVENT_TABLES if tables is None else tables
    joins: dict[str, DictionaryJoin] = {}
    for name in names:
        join = EVENT_TABLES[name].dictionary
        if join is not None:
            joins.setdefault(join.table, join)
    return dict(sorted(joins.items()))


@cache
def serialized_column_names() -> tuple[str, ...]:
    """Every column name that can appear in an event text, sorted (for texts whose table is not registered)."""
    return tuple(sorted({c.name for t in EVENT_TABLES.values() for c in t.serialized}))


def _derived_changed() -> None:
    serialized_column_names.cache_clear()


# The paper's seven tables and filters. Each keeps the columns the original serialization keeps (all but its
# excluded ones), plus hadm_id and the time.
for _entry in (
    EventTable(
        name="labevents",
        source="hosp/labevents",
        columns="hadm_id:id itemid:id charttime:ts value:text? valuenum:num? valueuom:code? ref_range_lower:num? "
        "ref_range_upper:num? flag:code? priority:code? comments:text?",
        time="charttime",
        code=("itemid",),
        dictionary=D_LABITEMS,
        filter=F.labevents_filter,
        quantity=("valuenum", "valueuom"),
        measurement=True,
        item_description="laboratory test",
        default=True,
    ),
    EventTable(
        name="prescriptions",
        source="hosp/prescriptions",
        columns="hadm_id:id starttime:ts drug_type:code? drug:text prod_strength:text? form_rx:code? "
        "dose_val_rx:text? dose_unit_rx:code? form_val_disp:text? form_unit_disp:code? doses_per_24_hrs:num? "
        "route:code?",
        time="starttime",
        code=("drug",),
        filter=F.prescriptions_filter,
        quantity=("dose_val_rx", "dose_unit_rx"),
        default=True,
    ),
    EventTable(
        name="inputevents",
        source="icu/inputevents",
        columns="hadm_id:id starttime:ts itemid:id amount:num? amountuom:code? rate:num? rateuom:code? "
        "ordercategoryname:text? secondaryordercategoryname:text? ordercomponenttypedescription:text? "
        "ordercategorydescription:text? patientweight:num? totalamount:num? totalamountuom:code? isopenbag:int? "
        "originalamount:num? originalrate:num?",
        time="starttime",
        code=("itemid",),
        dictionary=D_ITEMS,
        quantity=("amount", "amountuom"),
        item_description="ICU input (drug or fluid)",
        default=True,
    ),
    EventTable(
        name="chartevents",
        source="icu/chartevents",
        columns="hadm_id:id charttime:ts itemid:id value:text? valuenum:num? valueuom:code? warning:int?",
        time="charttime",
        code=("itemid",),
        dictionary=D_ITEMS,
        filter=F.chartevents_filter,
        quantity=("valuenum", "valueuom"),
        measurement=True,
        item_description="charted observation",
        default=True,
    ),
    EventTable(
        name="outputevents",
        source="icu/outputevents",
        columns="hadm_id:id charttime:ts itemid:id value:num? valueuom:code?",
        time="charttime",
        code=("itemid",),
        dictionary=D_ITEMS,
        quantity=("value", "valueuom"),
        measurement=True,
        item_description="ICU output",
        default=True,
    ),
    EventTable(
        name="microbiologyevents",
        source="hosp/microbiologyevents",
        columns="hadm_id:id charttime:ts spec_type_desc:text test_seq:int? test_name:text? org_name:text? "
        "isolate_num:int? quantity:text? ab_name:text? dilution_text:text? dilution_comparison:code? "
        "dilution_value:num? interpretation:code? comments:text?",
        time="charttime",
        code=("org_name", "test_name", "spec_type_desc"),  # the organism, else the test, else the specimen
        filter=F.microbiologyevents_filter,
        default=True,
    ),
    EventTable(
        name="procedureevents",
        source="icu/procedureevents",
        columns="hadm_id:id starttime:ts itemid:id value:num? valueuom:code? location:text? locationcategory:text? "
        "ordercategoryname:text ordercategorydescription:text? patientweight:num? isopenbag:int? "
        "originalamount:num? originalrate:num?",
        time="starttime",
        code=("itemid",),
        dictionary=D_ITEMS,
        filter=F.procedureevents_filter,
        quantity=("value", "valueuom"),
        item_description="ICU procedure",
        default=True,
    ),
):
    register_event_table(_entry)
del _entry
