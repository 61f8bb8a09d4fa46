"""Numeric event features: values and flags beside the text embedding, their h5 layout, the reader's width,
and the models taking the wider input (or refusing a width they were not trained on)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.text.augment import Augmenter, KnowledgeLookup
from ehrxdiff_core.text.embed import embed_events
from ehrxdiff_core.text.index import build_rag_index
from ehrxdiff_core.text.knowledge import build_knowledge, read_knowledge
from ehrxdiff_core.text.numeric import CLIP, FEATURES, item_statistics, numeric_features
from ehrxdiff_core.text.store import EmbeddingReader
from toy_text import make_events, write_demo_dictionaries

sys.path.insert(0, str(Path(__file__).parent))
from contracts import check_embeddings_h5  # noqa: E402

torch.set_num_threads(1)
K = len(FEATURES)
COL = {name: i for i, name in enumerate(FEATURES)}


def crp(v) -> str:
    return (
        f"labevents itemid C-Reactive Protein value {v:g} valuenum {v:g} valueuom mg/L ref_range_lower 0 "
        f"ref_range_upper 5 priority STAT"
    )


NO_NUMBER = [
    (
        "microbiologyevents",
        "YEAST",
        "microbiologyevents spec_type_desc SPUTUM test_seq 1 test_name RESPIRATORY "
        "CULTURE org_name YEAST isolate_num 1",
    ),
    ("chartevents", "220001", "chartevents itemid Heart Rhythm value SR (Sinus Rhythm) warning 0"),
    ("prescriptions", "Vancomycin", "prescriptions drug_type MAIN drug Vancomycin prod_strength 1g Vial route IV"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("numeric")
    di, dl = write_demo_dictionaries(d / "ehr")
    build_knowledge({"d_items": di, "d_labitems": dl}, d / "knowledge.parquet")
    cfg = TextConfig.model_validate({"encoder": {"name": "tiny-random", "tiny_dim": 16}, "cache_dir": str(d / "cache")})
    build_rag_index(d / "knowledge.parquet", cfg, d / "index.faiss")
    knowledge = read_knowledge(d / "knowledge.parquet")
    return {"dir": d, "cfg": cfg, "knowledge": knowledge, "lookup": KnowledgeLookup(knowledge)}


def embed(corpus, events: pd.DataFrame, triplets: pd.DataFrame, name: str, **cfg_update) -> tuple[dict, Path]:
    d = corpus["dir"]
    events.to_parquet(d / f"{name}.events.parquet")
    triplets.to_parquet(d / f"{name}.triplets.parquet")
    cfg = corpus["cfg"].model_copy(update=cfg_update)
    stats = embed_events(
        d / f"{name}.events.parquet",
        d / f"{name}.triplets.parquet",
        d / "knowledge.parquet",
        d / "index.faiss",
        cfg,
        d / f"{name}.h5",
    )
    return stats, d / f"{name}.h5"


# ------------------------------------------------------------------------------------------- features


def test_crp_5_and_300_differ_in_numeric_features_not_in_text_embedding(corpus):
    from ehrxdiff_core.config import EncoderConfig
    from ehrxdiff_core.text.encoders import load_encoder

    values = [2, 5, 20, 60, 100, 300]
    texts = [crp(v) for v in values]
    x, attrs = numeric_features(texts, ["labevents"] * 6, ["50889"] * 6, np.ones(6, dtype=np.int64), corpus["lookup"])
    assert x.shape == (6, K) and x.dtype == np.float32
    assert (x[:, COL["has_value"]] == 1).all()
    z = x[:, COL["value_z"]]
    assert (np.diff(z) > 0).all()  # monotone in the value within the item
    i5, i300 = values.index(5), values.index(300)
    assert z[i300] - z[i5] > 2.0
    assert x[i5, COL["abnormal"]] == 0 and x[i300, COL["abnormal"]] == 1  # reference 0-5 mg/L, edges inclusive
    assert x[i5, COL["range_pos"]] == pytest.approx(1.0) and x[i300, COL["range_pos"]] == CLIP
    assert json.loads(attrs["features"]) == list(FEATURES) and "IQR" in attrs["standardisation"]

    # what the features are for: the sentence encoder hardly tells the two values apart
    e = load_encoder(EncoderConfig()).encode([texts[i5], texts[i300]])
    cos = float(e[0] @ e[1] / np.linalg.norm(e[0]) / np.linalg.norm(e[1]))
    assert cos > 0.95
    assert np.linalg.norm(x[i5] - x[i300]) > 2.0


def test_text_without_a_number_has_value_0_and_zeros(corpus):
    sources, codes, texts = map(list, zip(*NO_NUMBER))
    x, _ = numeric_features(texts + [crp(7)], sources + ["labevents"], codes + ["50889"], np.ones(4), corpus["lookup"])
    assert (x[:3] == 0).all()
    assert x[3, COL["has_value"]] == 1 and x[3, COL["abnormal"]] == 1


def test_doses_and_amounts_count_as_values_but_are_never_flagged(corpus):
    texts = [
        "prescriptions drug_type MAIN drug Furosemide prod_strength 40mg Tablet dose_val_rx 40 "
        "dose_unit_rx mg route PO",
        "prescriptions drug_type MAIN drug Furosemide prod_strength 40mg Tablet dose_val_rx 80 "
        "dose_unit_rx mg route PO",
        "inputevents itemid NaCl 0.9% amount 500 amountuom mL ordercategoryname 02-Fluids (Crystalloids)",
    ]
    x, _ = numeric_features(
        texts,
        ["prescriptions", "prescriptions", "inputevents"],
        ["Furosemide", "Furosemide", "225158"],
        np.ones(3),
        corpus["lookup"],
    )
    assert (x[:, COL["has_value"]] == 1).all() and x[1, COL["value_z"]] > x[0, COL["value_z"]]
    assert (x[:, COL["abnormal"]] == 0).all() and (x[:, COL["range_pos"]] == 0).all()


def test_abnormal_flag_is_the_augmentations_flag(corpus):
    ev, _ = make_events(40, seed=5)
    u = ev.drop_duplicates("text")
    texts, sources, codes = u["text"].tolist(), u["source"].tolist(), u["code"].tolist()
    x, _ = numeric_features(texts, sources, codes, np.ones(len(texts)), corpus["lookup"])
    rag = corpus["cfg"].rag.model_copy(update={"top_k": 0})
    flags = [a.flag for a in Augmenter(corpus["knowledge"], rag).augment(texts, sources, codes)]
    expected = np.array([{"low": -1.0, "high": 1.0}.get(f, 0.0) for f in flags], dtype=np.float32)
    np.testing.assert_array_equal(x[:, COL["abnormal"]], expected)
    assert {"low", "high", "normal"} <= set(flags)  # the sample exercises every flag


def test_item_statistics_are_weighted_event_quantiles():
    rng = np.random.default_rng(0)
    item = rng.integers(0, 3, 200)
    q = np.round(rng.gamma(2.0, 10.0, 200), 1)
    q[::17] = np.nan  # texts without a number do not count
    w = rng.integers(0, 4, 200)
    median, scale, count = item_statistics(item, q, w, 4)
    for g in range(3):
        ok = (item == g) & np.isfinite(q)
        expanded = np.repeat(q[ok], w[ok])
        assert count[g] == len(expanded)
        assert median[g] == np.quantile(expanded, 0.5, method="inverted_cdf")
        iqr = np.quantile(expanded, 0.75, method="inverted_cdf") - np.quantile(expanded, 0.25, method="inverted_cdf")
        assert scale[g] == pytest.approx(iqr / 1.349)
    assert count[3] == 0  # an item with no values keeps neutral statistics
    # an item whose values are all equal still gets a finite, positive scale
    m, s, _ = item_statistics(np.zeros(5, dtype=np.int64), np.full(5, 40.0), np.ones(5), 1)
    assert m[0] == 40.0 and s[0] > 0


def test_unseen_item_gets_z_0_and_stats_come_from_weights(corpus):
    texts = [crp(1), crp(2), crp(3), crp(400)]
    w = np.array([1, 1, 1, 0])  # crp 400 only occurs outside the statistics' pairs
    x, _ = numeric_features(texts, ["labevents"] * 4, ["50889"] * 4, w, corpus["lookup"])
    assert x[3, COL["value_z"]] == CLIP  # scored against the others' median/IQR, clipped
    hr = "chartevents itemid Heart Rate value 150 valuenum 150.0 valueuom bpm warning 0"
    y, attrs = numeric_features([hr], ["chartevents"], ["220045"], np.zeros(1), corpus["lookup"])
    assert y[0, COL["has_value"]] == 1 and y[0, COL["value_z"]] == 0 and y[0, COL["abnormal"]] == 1
    assert attrs["n_items_without_stats"] == 1


# ------------------------------------------------------------------------------------------ store + reader


def crp_events():
    rows = [
        ("a", 0, "labevents", "50889", crp(5)),
        ("a", 1, "labevents", "50889", crp(300)),
        ("b", 0, "labevents", "50889", crp(5)),
        ("b", 1, *NO_NUMBER[0]),
        ("c", 0, "labevents", "50889", crp(40)),
        ("c", 1, "labevents", "50889", crp(60)),
    ]
    ev = pd.DataFrame(rows, columns=["pair_id", "position", "source", "code", "text"])
    ev["minutes_from_prev"] = ev["position"].astype(float)
    tr = pd.DataFrame({"pair_id": ["a", "b", "c"], "n_events": [2, 2, 2], "split": ["train", "train", "test"]})
    return ev, tr


def test_h5_layout_and_reader_width(corpus):
    ev, tr = crp_events()
    stats, path = embed(corpus, ev, tr, "on")
    assert stats["numeric_features"] == K
    check_embeddings_h5(path, ev, numeric=True)
    with h5py.File(path, "r") as f:
        num = f["texts/numeric"]
        assert num.dtype == np.float32 and num.shape == (f["texts/embedding"].shape[0], K)
        attrs = dict(num.attrs)
        x, rows = num[:], f["pairs/rows"][:]
        emb = f["texts/embedding"][:]
    assert json.loads(attrs["features"]) == list(FEATURES)
    assert attrs["stats_from"] == "train pairs" and attrs["clip"] == CLIP and "median" in attrs["standardisation"]
    assert attrs["scale"] == pytest.approx(np.linalg.norm(emb.astype(np.float32), axis=1).mean() / np.sqrt(K), rel=1e-3)
    # rows follow texts/embedding: pair a = (CRP 5, CRP 300), b = (CRP 5, no number)
    r5, r300, r_none = rows[0], rows[1], rows[3]
    assert rows[2] == r5
    assert x[r5, COL["abnormal"]] == 0 and x[r300, COL["abnormal"]] == 1 and (x[r_none] == 0).all()
    assert x[r300, COL["value_z"]] > x[r5, COL["value_z"]]
    # statistics from the train pairs only: a, b -> CRP 5, 300, 5 (median 5)
    assert x[r5, COL["value_z"]] == 0

    wide, narrow = EmbeddingReader(path), EmbeddingReader(path, numeric=False)
    assert (wide.dim, narrow.dim, wide.text_dim) == (16 + K, 16, 16) and wide.numeric_features == list(FEATURES)
    xw, mw = wide.batch(["a", "b"], 4)
    xn, mn = narrow.batch(["a", "b"], 4)
    assert xw.shape == (2, 4, 16 + K) and torch.equal(mw, mn)
    assert torch.equal(xw[..., :16], xn)
    expect = torch.from_numpy((x[[r5, r300]] * attrs["scale"]).astype(np.float16).astype(np.float32))
    assert torch.equal(xw[0, :2, 16:], expect)
    assert (xw[~mw] == 0).all()

    from ehrxdiff_core.models.datasets import open_embedding_reader

    assert open_embedding_reader(path).dim == 16 + K and open_embedding_reader(path, numeric=False).dim == 16


def test_switch_off_writes_the_text_only_layout_from_the_same_cache(corpus):
    ev, tr = crp_events()
    _, on = embed(corpus, ev, tr, "cache_on")
    stats, off = embed(corpus, ev, tr, "cache_off", numeric_features=False)
    assert stats["n_encoded"] == 0 and stats["numeric_features"] == 0  # the cache is text-only: nothing re-encoded
    check_embeddings_h5(off, ev, numeric=False)
    with h5py.File(on, "r") as a, h5py.File(off, "r") as b:
        assert "numeric" not in b["texts"]
        assert a["texts/embedding"][:].tobytes() == b["texts/embedding"][:].tobytes()
        assert (a["texts/hash"][:] == b["texts/hash"][:]).all()
    r = EmbeddingReader(off)
    assert r.dim == 16 and r.numeric_features == []
    with pytest.raises(ValueError, match=r"text\.numeric_features"):
        EmbeddingReader(off, numeric=True)


def test_numeric_features_without_rag_keep_the_text_cache_key(corpus):
    """Features need the knowledge corpus for ranges; that must not change what is encoded when RAG is off."""
    ev, tr = crp_events()
    no_rag = corpus["cfg"].rag.model_copy(update={"enabled": False})
    _, a = embed(corpus, ev, tr, "norag_on", rag=no_rag)
    stats, b = embed(corpus, ev, tr, "norag_off", rag=no_rag, numeric_features=False)
    assert stats["n_encoded"] == 0
    with h5py.File(a, "r") as f, h5py.File(b, "r") as g:
        assert f["texts"].attrs["rag"] == g["texts"].attrs["rag"]
        assert f["texts/numeric"][:][:, COL["abnormal"]].max() == 1  # flags without RAG's text flag


def test_old_store_without_numeric_reads_with_features_off(tmp_path):
    from toy_world import write_world

    w = write_world(tmp_path, n_pairs=4, size=8, dim=8, max_len=3)
    r = EmbeddingReader(w["embeddings"])
    assert r.dim == 8 and r.numeric_features == [] and r.numeric_attrs == {}
    x, m = r.batch(r.pair_ids, 3)
    assert x.shape == (4, 3, 8)


def test_malformed_numeric_dataset_names_the_file(tmp_path):
    from toy_world import write_world

    w = write_world(tmp_path, n_pairs=4, size=8, dim=8, max_len=3)
    with h5py.File(w["embeddings"], "a") as f:
        n = f["texts/embedding"].shape[0]
        d = f["texts"].create_dataset("numeric", data=np.zeros((n + 1, K), dtype=np.float32))
        d.attrs["features"], d.attrs["scale"] = json.dumps(list(FEATURES)), 0.5
    with pytest.raises(ValueError, match="events.h5.*texts/numeric"):
        EmbeddingReader(w["embeddings"])


# ------------------------------------------------------------------------------------------------- models


def add_numeric(src: Path, dst: Path, seed: int = 0) -> None:
    """A copy of a toy store with random numeric features, as the embed stage would write them."""
    shutil.copy(src, dst)
    rng = np.random.default_rng(seed)
    with h5py.File(dst, "a") as f:
        n = f["texts/embedding"].shape[0]
        x = np.zeros((n, K), dtype=np.float32)
        x[:, 0] = 1
        x[:, 1] = rng.normal(0, 1, n)
        x[:, 3] = rng.integers(-1, 2, n)
        d = f["texts"].create_dataset("numeric", data=x)
        d.attrs.update(features=json.dumps(list(FEATURES)), standardisation="test", clip=CLIP, scale=0.5)


def test_clip_and_ldm_take_the_wider_input_and_refuse_another_width(tmp_path):
    from ehrxdiff_core.config import ClipConfig, LdmConfig, TrainLoop, VaeConfig
    from ehrxdiff_core.models.clip import ClipModel
    from ehrxdiff_core.models.train_clip import train_clip
    from ehrxdiff_core.models.train_ldm import train_ldm
    from ehrxdiff_core.models.train_vae import train_vae
    from toy_world import write_world

    me, dim = 4, 8
    loop = dict(steps=2, batch_size=4, checkpoint_every=2, log_every=1)
    w = write_world(tmp_path, n_pairs=12, size=16, dim=dim, max_len=me)
    wide = tmp_path / "events_numeric.h5"
    add_numeric(w["embeddings"], wide)
    clip_cfg = ClipConfig(
        patch_size=8,
        vision_width=16,
        vision_layers=1,
        vision_heads=2,
        tab_width=16,
        tab_heads=2,
        tab_ff=32,
        embed_dim=16,
        train=TrainLoop(**loop),
    )
    info = train_clip(w["images"], wide, w["triplets"], clip_cfg, me, tmp_path / "clip")
    assert info["event_dim"] == dim + K
    assert json.loads((tmp_path / "clip" / "clip_config.json").read_text())["event_dim"] == dim + K

    clip = ClipModel.load(tmp_path / "clip").eval()
    x, mask = EmbeddingReader(wide).batch(EmbeddingReader(wide).pair_ids[:3], me)
    assert clip.tab.pooled(x, mask, "masked_mean").shape == (3, 16)
    narrow, nmask = EmbeddingReader(w["embeddings"]).batch(EmbeddingReader(w["embeddings"]).pair_ids[:3], me)
    with pytest.raises(ValueError, match=rf"{dim} wide but this model was trained on {dim + K}"):
        clip.tab.pooled(narrow, nmask, "masked_mean")

    vae = VaeConfig(block_out_channels=[8, 8], layers_per_block=1, train=TrainLoop(**loop))
    train_vae(w["images"], w["triplets"], vae, tmp_path / "vae")
    ldm = LdmConfig(
        block_out_channels=[16, 16],
        attention_levels=[False, True],
        num_heads=2,
        cross_attention_dim=16,
        null_augmentation=False,
        train=TrainLoop(**loop),
    )
    out = train_ldm(w["images"], wide, w["triplets"], tmp_path / "vae", tmp_path / "clip", ldm, me, tmp_path / "ldm")
    assert out["steps"] == 2 and np.isfinite(out["final_loss"])
    with pytest.raises(ValueError, match="retrain CLIP"):  # the text-only store is D wide, CLIP expects D + K
        train_ldm(
            w["images"],
            w["embeddings"],
            w["triplets"],
            tmp_path / "vae",
            tmp_path / "clip",
            ldm,
            me,
            tmp_path / "ldm_narrow",
        )
