"""Knowledge corpus, glossary, event parsing, retrieval of the item's own entry, abnormality flags."""

from __future__ import annotations

import json
from importlib import resources

import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.text.augment import Augmenter, KnowledgeLookup, abnormality_flag, event_item, parse_event
from ehrxdiff_core.text.encoders import load_encoder
from ehrxdiff_core.text.glossary import glossary_path, load_glossary
from ehrxdiff_core.text.index import build_rag_index, read_index
from ehrxdiff_core.text.knowledge import build_knowledge, read_knowledge
from toy_text import write_demo_dictionaries

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("knowledge")
    di, dl = write_demo_dictionaries(d / "ehr")
    n = build_knowledge({"d_items": di, "d_labitems": dl}, d / "rag" / "knowledge.parquet")
    cfg = TextConfig.model_validate({"encoder": {"name": "tiny-random"}, "cache_dir": str(d / "cache")})
    build_rag_index(d / "rag" / "knowledge.parquet", cfg, d / "rag" / "index.faiss")
    knowledge = read_knowledge(d / "rag" / "knowledge.parquet")
    encoder = load_encoder(cfg.encoder)
    index, _ = read_index(d / "rag" / "index.faiss", cfg.rag.index)
    return {"n": n, "knowledge": knowledge, "cfg": cfg, "encoder": encoder, "index": index}


def test_glossary_size_kinds_and_sources():
    g = load_glossary()
    assert len(g) >= 150
    assert {"vital", "lab", "drug", "fluid", "procedure", "organism", "output"} <= set(g["kind"])
    header = "\n".join(line for line in glossary_path().read_text().splitlines() if line.startswith("#"))
    for source in ("MedlinePlus", "Merck Manual", "lownormalvalue"):
        assert source in header
    for key in (
        "respiratory rate",
        "inspired o2 fraction",
        "po2",
        "lactate",
        "c-reactive protein",
        "furosemide",
        "vancomycin",
        "piperacillin-tazobactam",
        "chest tube placed",
        "intubation",
        "multi lumen",
        "pseudomonas aeruginosa",
        "foley",
        "chest tube output",
        "0.9% normal saline",
    ):
        assert key in set(g["key"]), key
    assert (g["text"].str.len() > 40).all()
    ranged = g[g["low"].notna() & g["high"].notna()]
    assert (ranged["low"] <= ranged["high"]).all()
    assert "pulmonary oedema" in g.set_index("key").at["furosemide", "text"]


def test_glossary_covers_most_of_the_prescription_whitelist(corpus):
    """The drugs the paper's prescription filter keeps mostly find their glossary entry lexically."""
    wl = json.loads(
        (resources.files("ehrxdiff_core") / "resources" / "ehrxdiff_selected_prescriptions.json").read_text()
    )
    lookup = KnowledgeLookup(corpus["knowledge"])
    for group, floor in (("antibiotic", 0.7), ("cardiac_lung", 0.8)):
        names = wl[group]
        hit = sum(lookup.glossary_for(n) is not None for n in names)
        assert hit / len(names) >= floor, (group, hit, len(names))


def test_knowledge_rows(corpus):
    k = corpus["knowledge"]
    assert corpus["n"] == len(k)
    assert set(k["source"]) == {"glossary", "d_items", "d_labitems"}
    assert k["snippet_id"].tolist() == list(range(len(k)))
    assert (k["key"] == k["key"].str.lower()).all()
    hr = k[k["ref"] == "d_items:220045"].iloc[0]
    assert (hr["key"], hr["low"], hr["high"], hr["unit"]) == ("heart rate", 60.0, 100.0, "bpm")
    assert "normal range 60 to 100 bpm" in hr["text"]
    assert "delete" not in set(k.loc[k["source"] == "d_labitems", "key"])  # MIMIC placeholder labels skipped


def test_build_knowledge_names_missing_column(tmp_path):
    di, dl = write_demo_dictionaries(tmp_path)
    pd.read_parquet(di).drop(columns=["label"]).to_parquet(di)
    with pytest.raises(ValueError, match="label"):
        build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "k.parquet")
    assert not (tmp_path / "k.parquet").exists()


def test_build_knowledge_without_optional_dictionary_columns(tmp_path):
    """An ingest that keeps only itemid/label/linksto/category still gives a corpus (no d_items ranges)."""
    di, dl = write_demo_dictionaries(tmp_path)
    pd.read_parquet(di)[["itemid", "label", "linksto", "category"]].to_parquet(di)
    pd.read_parquet(dl)[["itemid", "label", "category"]].to_parquet(dl)
    build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "k.parquet")
    k = read_knowledge(tmp_path / "k.parquet")
    hr = k[k["ref"] == "d_items:220045"].iloc[0]
    assert pd.isna(hr["low"]) and hr["text"].startswith("Heart Rate: charted observation")


def test_parse_event_multiword_label_and_columns():
    table, f = parse_event(
        "chartevents itemid Arterial Blood Pressure mean value 65 valuenum 65.0 valueuom mmHg warning 0"
    )
    assert table == "chartevents"
    assert f == {
        "itemid": "Arterial Blood Pressure mean",
        "value": "65",
        "valuenum": "65.0",
        "valueuom": "mmHg",
        "warning": "0",
    }
    item = event_item(
        "prescriptions drug_type MAIN drug Furosemide prod_strength 40mg Tablet dose_val_rx 40 dose_unit_rx mg route PO"
    )
    assert item.label == "Furosemide" and item.value is None
    lab = event_item(
        "labevents itemid Lactate value 2.5 valuenum 2.5 valueuom mmol/L ref_range_lower 0.5 "
        "ref_range_upper 2 flag abnormal"
    )
    assert (lab.label, lab.value, lab.ref_low, lab.ref_high) == ("Lactate", 2.5, 0.5, 2.0)


@pytest.mark.parametrize(
    "text,source,code,expected",
    [
        (
            "chartevents itemid Respiratory Rate value 28 valuenum 28.0 valueuom insp/min warning 0",
            "chartevents",
            "220210",
            "glossary:respiratory rate",
        ),
        (
            "chartevents itemid Inspired O2 Fraction value 60 valuenum 60.0 warning 0",
            None,
            None,
            "glossary:inspired o2 fraction",
        ),
        (
            "prescriptions drug_type MAIN drug Furosemide prod_strength 40mg Tablet dose_val_rx 40 "
            "dose_unit_rx mg route PO",
            "prescriptions",
            "Furosemide",
            "glossary:furosemide",
        ),
        (
            "prescriptions drug_type MAIN drug Piperacillin-Tazobactam prod_strength 4.5 g Vial dose_val_rx 4.5",
            None,
            None,
            "glossary:piperacillin-tazobactam",
        ),
        ("labevents itemid Lactate value 3.1 valuenum 3.1 valueuom mmol/L", "labevents", "50813", "glossary:lactate"),
        (
            "labevents itemid C-Reactive Protein value 80 valuenum 80 valueuom mg/L",
            None,
            None,
            "glossary:c-reactive protein",
        ),
        (
            "outputevents itemid Chest Tube #1 value 150 valueuom mL",
            "outputevents",
            "226588",
            "glossary:chest tube output",
        ),
        ("procedureevents itemid Chest Tube Placed value 1", "procedureevents", "225433", "glossary:chest tube placed"),
        (
            "microbiologyevents spec_type_desc SPUTUM test_seq 1 test_name RESPIRATORY CULTURE org_name PSEUDOMONAS "
            "AERUGINOSA isolate_num 1",
            "microbiologyevents",
            "PSEUDOMONAS AERUGINOSA",
            "glossary:pseudomonas aeruginosa",
        ),
    ],
)
def test_retrieval_returns_the_items_own_glossary_entry(corpus, text, source, code, expected):
    aug = Augmenter(corpus["knowledge"], corpus["cfg"].rag, corpus["encoder"], corpus["index"])
    out = aug.augment([text], [source] if source else None, [code] if code else None)[0]
    refs = corpus["knowledge"]["ref"]
    assert refs[out.snippet_ids[0]] == expected
    assert len(out.snippet_ids) == corpus["cfg"].rag.top_k
    assert out.text.startswith(text + " | context: ")
    assert corpus["knowledge"].at[out.snippet_ids[0], "text"] in out.text


def test_abnormality_flag_edges():
    assert abnormality_flag(12.0, 12.0, 20.0) == "normal"
    assert abnormality_flag(11.999, 12.0, 20.0) == "low"
    assert abnormality_flag(20.0, 12.0, 20.0) == "normal"
    assert abnormality_flag(20.001, 12.0, 20.0) == "high"
    assert abnormality_flag(31.0, None, 30.0) == "high"
    assert abnormality_flag(5.0, None, None) is None
    assert abnormality_flag(None, 1.0, 2.0) is None


@pytest.mark.parametrize("value,flag", [(60.0, "normal"), (59.9, "low"), (100.0, "normal"), (100.1, "high")])
def test_flag_from_d_items_range_in_augmented_text(corpus, value, flag):
    """Heart Rate has d_items normal range 60-100 bpm; both edges are inclusive."""
    cfg = corpus["cfg"].rag.model_copy(update={"top_k": 0})
    aug = Augmenter(corpus["knowledge"], cfg)
    text = f"chartevents itemid Heart Rate value {value:g} valuenum {value} valueuom bpm warning 0"
    out = aug.augment([text], ["chartevents"], ["220045"])[0]
    assert out.flag == flag
    assert f"flag: {flag} (reference 60 to 100 bpm)" in out.text


def test_flag_range_precedence_and_units(corpus):
    cfg = corpus["cfg"].rag.model_copy(update={"top_k": 0})
    aug = Augmenter(corpus["knowledge"], cfg)
    lab_own = "labevents itemid Lactate value 2.1 valuenum 2.1 valueuom mmol/L ref_range_lower 0.5 ref_range_upper 2.2"
    lab_gloss = "labevents itemid Lactate value 2.1 valuenum 2.1 valueuom mmol/L"
    temp_wrong_unit = "chartevents itemid Temperature Fahrenheit value 37 valuenum 37.0 valueuom °C warning 0"
    temp_gloss = "chartevents itemid Temperature Fahrenheit value 101.2 valuenum 101.2 valueuom °F warning 0"
    own, gloss, wrong, temp = aug.augment([lab_own, lab_gloss, temp_wrong_unit, temp_gloss])
    assert own.flag == "normal"  # the lab's own 0.5-2.2 beats the glossary's 0.5-2.0
    assert gloss.flag == "high"  # glossary lactate 0.5-2.0 mmol/L
    assert wrong.flag is None and wrong.text == temp_wrong_unit  # unit mismatch: no flag, nothing added
    assert temp.flag == "high"


def test_bad_template_names_the_config_key(corpus):
    bad = corpus["cfg"].rag.model_copy(update={"template": "{event} {unknown}"})
    with pytest.raises(ValueError, match=r"text\.rag\.template"):
        Augmenter(corpus["knowledge"], bad, corpus["encoder"], corpus["index"])
