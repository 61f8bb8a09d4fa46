"""The event-table registry drives every stage: a table registered here the way the README shows (one
`EventTable` entry and one filter function) flows from its CSV through ingest, events.parquet, the
knowledge corpus and the embeddings; the config's `events.tables`, the serialization, the augmentation
and the rules follow the registry too. Every test that registers a table removes it again."""

from __future__ import annotations

import dataclasses
import gzip

import duckdb
import h5py
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import planned_jobs, write_config
from contracts import check_embeddings_h5
from ehrxdiff_core.config import (
    ConfigError,
    DataConfig,
    DuckDBSettings,
    EventsConfig,
    MimicSource,
    TextConfig,
    load_config,
)
from ehrxdiff_core.data.events import build_events
from ehrxdiff_core.data.ingest import ingest_table
from ehrxdiff_core.data.serialize import text_sql
from ehrxdiff_core.data.sources import source_path
from ehrxdiff_core.data.tables import (
    D_ITEMS,
    EVENT_TABLES,
    TABLE_NAMES,
    TABLES,
    DictionaryJoin,
    EventTable,
    default_event_tables,
    dictionaries,
    ingested_tables,
    register_event_table,
    serialized_column_names,
    unregister_event_table,
)
from ehrxdiff_core.synthetic.writer import column_type
from ehrxdiff_core.text.augment import Augmenter, KnowledgeLookup, event_item, parse_event
from ehrxdiff_core.text.embed import embed_events
from ehrxdiff_core.text.index import build_rag_index
from ehrxdiff_core.text.knowledge import build_knowledge, read_knowledge
from ehrxdiff_core.text.numeric import FEATURES
from test_data_events import write_triplets
from toy_text import write_demo_dictionaries

torch.set_num_threads(1)

PAPER_TABLES = [
    "labevents",
    "prescriptions",
    "inputevents",
    "chartevents",
    "outputevents",
    "microbiologyevents",
    "procedureevents",
]
DUCK = DuckDBSettings(memory_limit="512MB", threads=1)
HADM = 20000001


def toyevents_filter(e: str, d: str, cfg: EventsConfig) -> str:
    """Toy items of the category 'Toy Signs' (what the README's example puts in data/event_filters.py)."""
    return f"{d}.category = 'Toy Signs'"


# what the README's example puts in data/tables.py
TOY = EventTable(
    name="toyevents",
    source="icu/toyevents",
    columns="hadm_id:id stay_id:id charttime:ts itemid:id value:num? valueuom:code? site:text?",
    time="charttime",
    code=("itemid",),
    ids=("hadm_id", "stay_id"),
    dictionary=D_ITEMS,
    filter=toyevents_filter,
    quantity=("value", "valueuom"),
    measurement=True,
    item_description="toy observation",
)
TOY_TEXT = "toyevents itemid Toy Pressure value 25.0 valueuom mmHg site left"


@pytest.fixture
def toy():
    before_tables, before_events = list(TABLES), list(EVENT_TABLES)
    entry = register_event_table(TOY)
    try:
        yield entry
    finally:
        unregister_event_table(TOY.name)
        assert list(TABLES) == before_tables and list(EVENT_TABLES) == before_events


# ------------------------------------------------------------------------------------------- the built-in tables


def test_the_paper_tables_are_registered_and_the_default_selection():
    assert list(EVENT_TABLES) == PAPER_TABLES
    assert default_event_tables() == PAPER_TABLES == EventsConfig().tables
    assert load_config({}, check_paths=False).events.tables == PAPER_TABLES
    assert set(PAPER_TABLES) <= set(TABLE_NAMES) and len(TABLE_NAMES) == 14
    assert list(dictionaries()) == ["d_items", "d_labitems"]
    assert list(dictionaries(["chartevents", "prescriptions"])) == ["d_items"]
    assert dictionaries(["prescriptions", "microbiologyevents"]) == {}
    base = ["patients", "admissions", "d_labitems", "d_items", "cxr_metadata", "cxr_split", "cxr_chexpert"]
    assert ingested_tables(["chartevents"]) == [*base, "chartevents"]
    for entry in EVENT_TABLES.values():
        assert TABLES[entry.name] is entry.table  # ingest reads the columns the entry declares
        if entry.dictionary is not None:
            assert entry.item_description, entry.name  # its items get a knowledge snippet that says what they are


def test_the_synthetic_world_writes_every_default_table():
    """`synthesize` declares the selected tables; the rules check only non-default ones against the world."""
    from ehrxdiff_core.synthetic.vocab import FILE_PATHS

    for name in default_event_tables():
        assert FILE_PATHS[name] == f"mimiciv/{EVENT_TABLES[name].source}.csv.gz"


def test_synthetic_writer_types_value_as_the_registry_does():
    """MIMIC's `value` is numeric in outputevents/procedureevents, text in chartevents/labevents."""
    assert column_type("outputevents", "value") == pa.float64() == column_type("procedureevents", "value")
    assert column_type("chartevents", "value") == pa.string() == column_type("labevents", "value")


# ------------------------------------------------------------------------------------------- registering


def test_registry_rejects_an_entry_that_does_not_fit_its_columns():
    bad = {
        "already registered": dataclasses.replace(TOY, name="chartevents"),
        "time": dataclasses.replace(TOY, time="starttime"),
        "kind 'ts'": dataclasses.replace(TOY, time="site"),
        "hosp/<file>": dataclasses.replace(TOY, source="toyevents"),
        "hadm_id": dataclasses.replace(TOY, ids=("stay_id",)),
        "quantity": dataclasses.replace(TOY, quantity=("amount", "valueuom")),
        "not in TABLES": dataclasses.replace(TOY, dictionary=DictionaryJoin("d_toyitems")),
        "unknown kind": dataclasses.replace(TOY, columns="hadm_id:id charttime:when itemid:id"),
    }
    for message, entry in bad.items():
        with pytest.raises(ValueError, match=message):
            register_event_table(entry)
        assert list(EVENT_TABLES) == PAPER_TABLES and "toyevents" not in TABLES


def test_unregistered_names_and_caches_follow_the_registry(toy):
    assert "toyevents" in TABLE_NAMES and TABLES["toyevents"].module == "icu"
    assert "site" in serialized_column_names()  # the cache of every text column was refreshed
    assert [c.name for c in toy.serialized] == ["itemid", "value", "valueuom", "site"]  # no ids, no time
    unregister_event_table("toyevents")
    assert "toyevents" not in TABLE_NAMES and "site" not in serialized_column_names()
    register_event_table(TOY)  # for the fixture to remove


def test_config_validation_follows_the_registry():
    with pytest.raises(ConfigError, match=r"events\.tables\.1: unknown event table 'toyevents'; registered: labevents"):
        load_config({"events": {"tables": ["chartevents", "toyevents"]}}, check_paths=False)
    entry = register_event_table(dataclasses.replace(TOY, default=True))
    try:
        cfg = load_config({"events": {"tables": ["chartevents", "toyevents"]}}, check_paths=False)
        assert cfg.events.tables == ["chartevents", "toyevents"]
        assert EventsConfig().tables == [*PAPER_TABLES, "toyevents"]  # a default table joins the default selection
        assert load_config({}, check_paths=False).events.tables == [*PAPER_TABLES, "toyevents"]
    finally:
        unregister_event_table(entry.name)
    assert EventsConfig().tables == PAPER_TABLES


def test_a_table_that_is_not_a_default_is_read_only_when_selected(toy):
    assert EventsConfig().tables == PAPER_TABLES
    assert EventsConfig(tables=["toyevents"]).tables == ["toyevents"]


def test_serialization_follows_the_registry(toy):
    """Columns in CSV order without the ids (hadm_id, stay_id) and the time; the key becomes its label."""
    sql = text_sql("toyevents", "e", "d.label", 2)
    row = (
        "SELECT 1 AS hadm_id, 2 AS stay_id, TIMESTAMP '2150-01-01 10:00' AS charttime, 990001 AS itemid, "
        "25.126 AS value, 'mmHg' AS valueuom, NULL AS site"
    )
    con = duckdb.connect()
    try:
        (text,) = con.execute(f"SELECT {sql} FROM ({row}) e, (SELECT 'Toy Pressure' AS label) d").fetchone()
        (unlabelled,) = con.execute(f"SELECT {text_sql('toyevents', 'e', None, 2)} FROM ({row}) e").fetchone()
    finally:
        con.close()
    assert text == "toyevents itemid Toy Pressure value 25.13 valueuom mmHg"
    assert unlabelled == "toyevents itemid 990001 value 25.13 valueuom mmHg"


def test_augmentation_follows_the_registry(toy):
    table, fields = parse_event(TOY_TEXT)
    assert (table, fields) == (
        "toyevents",
        {"itemid": "Toy Pressure", "value": "25.0", "valueuom": "mmHg", "site": "left"},
    )
    item = event_item(TOY_TEXT)
    assert (item.label, item.quantity, item.unit, item.value) == ("Toy Pressure", 25.0, "mmHg", 25.0)
    unregister_event_table("toyevents")
    register_event_table(dataclasses.replace(TOY, measurement=False, quantity=None))
    item = event_item(TOY_TEXT)
    assert (item.label, item.quantity, item.value) == ("Toy Pressure", None, None)  # no number, no range


# ------------------------------------------------------------------------------------------- end to end


def _write_csv_gz(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.write(text)
    return path


def _add_toy_items(d_items_parquet):
    """Two d_items rows linked to toyevents: one the filter keeps, one it drops."""
    df = pd.read_parquet(d_items_parquet)
    toy_rows = pd.DataFrame(
        [
            (990001, "Toy Pressure", "TP", "toyevents", "Toy Signs", "mmHg", "Numeric", 10.0, 20.0),
            (990002, "Toy Noise", "TN", "toyevents", "Other", "dB", "Numeric", None, None),
        ],
        columns=df.columns,
    )
    pd.concat([df, toy_rows], ignore_index=True).astype({"itemid": "int64"}).to_parquet(d_items_parquet, index=False)


def _write_triplets(path):
    """One pair (b_a) of admission HADM, 08:00 → 20:00 on 2150-01-01 (a complete cohort/triplets.parquet)."""
    write_triplets(path, [("b_a", HADM, 0, 12)])


def test_a_registered_table_flows_from_its_csv_to_the_embeddings(toy, tmp_path):
    # ingest: the file the registry names, in the PhysioNet layout, headers in any case, extra columns ignored
    mimic = DataConfig(source="mimic", mimic=MimicSource(mimiciv_root=str(tmp_path / "iv"), cxr_root=str(tmp_path)))
    src = source_path("toyevents", mimic, tmp_path / "synthetic")
    assert src == tmp_path / "iv/icu/toyevents.csv.gz"
    _write_csv_gz(
        src,
        "HADM_ID,STAY_ID,CHARTTIME,ITEMID,VALUE,VALUEUOM,SITE,STORETIME\n"
        f"{HADM},30000001,2150-01-01 10:00:00,990001,25,mmHg,left,2150-01-01 10:05:00\n"
        f"{HADM},30000001,2150-01-01 11:00:00,990002,70,dB,,2150-01-01 11:05:00\n"
        f"{HADM},30000001,2150-01-02 10:00:00,990001,12,mmHg,left,2150-01-02 10:05:00\n",
    )
    ehr = tmp_path / "ehr"
    assert ingest_table("toyevents", src, ehr / "toyevents.parquet", DUCK) == 3
    assert pq.read_schema(ehr / "toyevents.parquet").names == [c.name for c in TABLES["toyevents"].columns]

    # events: joined to its dictionary, filtered by its filter function, serialized from its columns
    di, dl = write_demo_dictionaries(ehr)
    _add_toy_items(di)
    _write_triplets(tmp_path / "cohort_triplets.parquet")
    out_e, out_t = tmp_path / "events/events.parquet", tmp_path / "events/triplets.parquet"
    counts = build_events(
        ehr, tmp_path / "cohort_triplets.parquet", EventsConfig(tables=["toyevents"]), DUCK, out_e, out_t
    )
    assert counts["events_in_windows_toyevents"] == 1 and counts["events"] == 1
    events = pd.read_parquet(out_e)
    assert events[["pair_id", "position", "minutes_from_prev", "source", "code", "text"]].values.tolist() == [
        ["b_a", 0, 120.0, "toyevents", "990001", TOY_TEXT]
    ]
    unfiltered = tmp_path / "unfiltered"
    build_events(
        ehr,
        tmp_path / "cohort_triplets.parquet",
        EventsConfig(tables=["toyevents"], paper_filters=False),
        DUCK,
        unfiltered / "events.parquet",
        unfiltered / "triplets.parquet",
    )
    assert pd.read_parquet(unfiltered / "events.parquet")["code"].tolist() == ["990001", "990002"]

    # knowledge corpus: the toy items' dictionary rows say what they are, from the registry entry
    build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "rag/knowledge.parquet")
    knowledge = read_knowledge(tmp_path / "rag/knowledge.parquet")
    snippet = knowledge.set_index("ref").loc["d_items:990001"]
    assert snippet["text"] == (
        "Toy Pressure (TP): toy observation, category Toy Signs, unit mmHg, normal range 10 to 20 mmHg."
    )
    assert snippet["kind"] == "toyevents"

    # embeddings: the event is embedded, augmented with its own dictionary snippet and flagged against its range
    cfg = TextConfig.model_validate(
        {"encoder": {"name": "tiny-random", "tiny_dim": 16}, "rag": {"top_k": 1}, "cache_dir": str(tmp_path / "cache")}
    )
    build_rag_index(tmp_path / "rag/knowledge.parquet", cfg, tmp_path / "rag/index.faiss")
    stats = embed_events(
        out_e,
        out_t,
        tmp_path / "rag/knowledge.parquet",
        tmp_path / "rag/index.faiss",
        cfg,
        tmp_path / "embeddings/events.h5",
    )
    assert (stats["n_pairs"], stats["n_events"], stats["n_encoded"]) == (1, 1, 1)
    check_embeddings_h5(tmp_path / "embeddings/events.h5", events, numeric=True)
    with h5py.File(tmp_path / "embeddings/events.h5", "r") as f:
        numeric = dict(zip(FEATURES, f["texts/numeric"][0].tolist()))
    assert numeric["has_value"] == 1.0 and numeric["abnormal"] == 1.0  # 25 mmHg above the item's 10-20
    lookup = KnowledgeLookup(knowledge)
    item, _, dict_row = lookup.resolve(TOY_TEXT, "toyevents", "990001")
    assert knowledge.at[dict_row, "ref"] == "d_items:990001"
    (aug,) = Augmenter(knowledge, cfg.rag.model_copy(update={"top_k": 0})).augment(
        [TOY_TEXT], ["toyevents"], ["990001"]
    )
    assert aug.flag == "high" and "flag: high (reference 10 to 20 mmHg)" in aug.text


# ------------------------------------------------------------------------------------------- the rules


@pytest.mark.slow
def test_rules_ingest_and_join_only_what_the_selected_tables_need(tmp_path):
    """The events rule takes the selected tables and the dictionaries they join; the knowledge rule every
    registered dictionary; synthesize declares the tables the run ingests."""
    cfg = write_config(tmp_path / "config.yaml", {"events": {"tables": ["chartevents"]}})
    jobs = planned_jobs(tmp_path, cfg, "results/events/events.parquet")
    assert jobs["ingest"] == 6  # patients, admissions, cxr_metadata, cxr_chexpert; chartevents + d_items
    jobs = planned_jobs(tmp_path, cfg, "results/events/events.parquet", "results/rag/knowledge.parquet")
    assert jobs["ingest"] == 7  # + d_labitems, which the knowledge corpus reads whatever the selection
    cfg = write_config(tmp_path / "config.yaml", {})
    assert planned_jobs(tmp_path, cfg, "results/events/events.parquet")["ingest"] == 13  # 4 + 7 tables + 2 dicts
