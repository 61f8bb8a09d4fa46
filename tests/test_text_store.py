"""Embedding store: dedup, event order, incremental cache, reader, offline run, optional LM rewrite."""

from __future__ import annotations

import json
import os
import socket

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.text.embed import embed_events
from ehrxdiff_core.text.index import build_rag_index
from ehrxdiff_core.text.knowledge import build_knowledge
from ehrxdiff_core.text.store import EmbeddingReader
from toy_text import make_events, write_demo_dictionaries

torch.set_num_threads(1)


def tiny_cfg(tmp_path, **over) -> TextConfig:
    raw = {"encoder": {"name": "tiny-random", "tiny_dim": 16}, "cache_dir": str(tmp_path / "cache")}
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(v, dict) else v
    return TextConfig.model_validate(raw)


@pytest.fixture
def stage(tmp_path):
    """Knowledge + index built once per test; returns a runner for embed_events."""
    di, dl = write_demo_dictionaries(tmp_path / "ehr")
    build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "rag" / "knowledge.parquet")
    cfg = tiny_cfg(tmp_path)
    build_rag_index(tmp_path / "rag" / "knowledge.parquet", cfg, tmp_path / "rag" / "index.faiss")

    def run(events: pd.DataFrame, triplets: pd.DataFrame, cfg: TextConfig = cfg, name: str = "events.h5"):
        events.to_parquet(tmp_path / "events.parquet")
        triplets.to_parquet(tmp_path / "triplets.parquet")
        stats = embed_events(
            tmp_path / "events.parquet",
            tmp_path / "triplets.parquet",
            tmp_path / "rag" / "knowledge.parquet",
            tmp_path / "rag" / "index.faiss",
            cfg,
            tmp_path / name,
        )
        return stats, tmp_path / name

    run.cfg = cfg
    run.tmp = tmp_path
    return run


def read_h5(path):
    with h5py.File(path, "r") as f:
        return {
            "hash": f["texts/hash"][:],
            "emb": f["texts/embedding"][:],
            "attrs": dict(f["texts"].attrs),
            "pair_id": [s.decode() for s in f["pairs/pair_id"][:]],
            "offsets": f["pairs/offsets"][:],
            "rows": f["pairs/rows"][:],
        }


def test_contract_same_text_same_row_and_event_order(stage):
    events, triplets = make_events(12, seed=3)
    events = events.sample(frac=1.0, random_state=0)  # the store must not rely on file order
    triplets = triplets.iloc[::-1]
    dropped = triplets["pair_id"].iloc[0]
    stats, path = stage(events, triplets.iloc[1:])
    h = read_h5(path)
    assert h["emb"].dtype == np.float16 and h["hash"].dtype == np.uint64 and h["emb"].shape[1] == 16
    assert h["attrs"]["dim"] == 16 and h["attrs"]["pooling"] == "mean"
    assert json.loads(h["attrs"]["rag"])["rag"]["top_k"] == 2
    assert len(np.unique(h["hash"])) == len(h["hash"])  # each unique text stored once
    assert h["pair_id"] == triplets["pair_id"].iloc[1:].tolist() and dropped not in h["pair_id"]
    kept = events[events["pair_id"] != dropped]
    assert stats["n_events"] == len(kept) == h["offsets"][-1] and stats["n_unique_texts"] == kept["text"].nunique()
    row_of_text = {}
    for i, pid in enumerate(h["pair_id"]):
        ev = kept[kept["pair_id"] == pid].sort_values("position")
        rows = h["rows"][h["offsets"][i] : h["offsets"][i + 1]]
        assert len(rows) == len(ev)
        for text, row in zip(ev["text"], rows):
            assert row_of_text.setdefault(text, row) == row  # same text -> same row, everywhere
    assert len(set(row_of_text.values())) == len(row_of_text)  # different texts -> different rows


def test_incremental_rerun_encodes_only_new_texts(stage):
    old_ev, old_tr = make_events(20, seed=0)
    s1, path = stage(old_ev, old_tr, name="first.h5")
    assert s1["n_encoded"] == s1["n_unique_texts"] and s1["n_reused"] == 0
    before = read_h5(path)
    new_ev, new_tr = make_events(5, seed=1, pair_offset=20)  # new admissions: some texts repeat old ones
    all_ev, all_tr = pd.concat([old_ev, new_ev]), pd.concat([old_tr, new_tr])
    expected_new = len(set(new_ev["text"]) - set(old_ev["text"]))
    assert 0 < expected_new < new_ev["text"].nunique()
    s2, path2 = stage(all_ev, all_tr, name="second.h5")
    assert s2["n_encoded"] == expected_new
    assert s2["n_reused"] == old_ev["text"].nunique()
    after = read_h5(path2)
    pos = {h: i for i, h in enumerate(after["hash"])}
    idx = np.array([pos[h] for h in before["hash"]])
    assert after["emb"][idx].tobytes() == before["emb"].tobytes()  # old rows byte-identical
    s3, _ = stage(all_ev, all_tr, name="third.h5")
    assert s3["n_encoded"] == 0
    # a changed augmentation setting is a different content hash: everything is re-encoded
    changed = stage.cfg.model_copy(update={"rag": stage.cfg.rag.model_copy(update={"top_k": 1})})
    s4, _ = stage(all_ev, all_tr, cfg=changed, name="fourth.h5")
    assert s4["n_encoded"] == s4["n_unique_texts"]


def test_reader_padding_mask_truncation(stage):
    texts = [f"chartevents itemid Heart Rate value {v} valuenum {v}.0 valueuom bpm warning 0" for v in range(60, 66)]
    ev = pd.DataFrame(
        {
            "pair_id": ["a"] * 5 + ["b"] * 2,
            "position": [0, 1, 2, 3, 4, 0, 1],
            "minutes_from_prev": np.arange(7, dtype=float),
            "source": "chartevents",
            "code": "220045",
            "text": texts[:5] + [texts[5], texts[0]],
        }
    )
    tr = pd.DataFrame({"pair_id": ["a", "b"], "n_events": [5, 2]})
    _, path = stage(ev, tr)
    h = read_h5(path)
    r = EmbeddingReader(path, numeric=False)  # the text embeddings alone (numeric features: test_text_numeric.py)
    assert r.dim == 16 and r.pair_ids == ["a", "b"] and "a" in r and "zz" not in r and len(r) == 2
    x, mask = r.batch(["b", "a"], 3)
    assert x.shape == (2, 3, 16) and x.dtype == torch.float32 and mask.dtype == torch.bool
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    emb = h["emb"].astype(np.float32)
    rows_a = h["rows"][h["offsets"][0] : h["offsets"][1]]
    rows_b = h["rows"][h["offsets"][1] : h["offsets"][2]]
    np.testing.assert_array_equal(x[1].numpy(), emb[rows_a[-3:]])  # most recent 3 of 5, oldest kept first
    np.testing.assert_array_equal(x[0, :2].numpy(), emb[rows_b])
    assert (x[0, 2] == 0).all()
    assert rows_b[1] == rows_a[0]  # the repeated text shares a row
    x8, m8 = r.batch(["a"], 8)
    assert m8.sum().item() == 5 and (x8[0, 5:] == 0).all()
    wide = EmbeddingReader(path)  # default: numeric features on, appended after the embedding, padding still zero
    xw, mw = wide.batch(["b", "a"], 3)
    assert wide.dim == 16 + 4 and xw.shape == (2, 3, 20) and torch.equal(mw, mask)
    assert torch.equal(xw[..., :16], x) and (xw[0, 2] == 0).all()
    with pytest.raises(KeyError, match="zz"):
        r.batch(["zz"], 4)


def test_whole_stage_runs_with_network_blocked(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during the text stage")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    di, dl = write_demo_dictionaries(tmp_path / "ehr")
    cfg = tiny_cfg(tmp_path)
    n = build_knowledge({"d_items": di, "d_labitems": dl}, tmp_path / "knowledge.parquet")
    meta = build_rag_index(tmp_path / "knowledge.parquet", cfg, tmp_path / "index.faiss")
    ev, tr = make_events(4)
    ev.to_parquet(tmp_path / "events.parquet")
    tr.to_parquet(tmp_path / "triplets.parquet")
    stats = embed_events(
        tmp_path / "events.parquet",
        tmp_path / "triplets.parquet",
        tmp_path / "knowledge.parquet",
        tmp_path / "index.faiss",
        cfg,
        tmp_path / "events.h5",
    )
    assert meta["n_snippets"] == n and stats["n_pairs"] == 4 and stats["n_encoded"] > 0
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    # the default encoder loads from the installed package, also without network
    from ehrxdiff_core.config import EncoderConfig
    from ehrxdiff_core.text.encoders import load_encoder

    assert load_encoder(EncoderConfig()).encode(["chest tube placed"]).shape == (1, 384)


def test_bad_events_input_names_the_column(stage):
    ev, tr = make_events(2)
    with pytest.raises(ValueError, match="'text'"):
        stage(ev.drop(columns=["text"]), tr)
    assert not (stage.tmp / "events.h5").exists()


def save_tiny_gpt2(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    words = "<pad> <eos> <unk> rewrite this icu record as one short clinical sentence record heart rate patient".split()
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(words),
            n_positions=256,
            n_embd=16,
            n_layer=1,
            n_head=2,
            bos_token_id=1,
            eos_token_id=1,
            pad_token_id=0,
        )
    ).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def test_optional_rewrite_with_a_tiny_causal_lm(stage):
    from ehrxdiff_core.config import RewriteConfig
    from ehrxdiff_core.text.rewrite import Rewriter

    folder = save_tiny_gpt2(stage.tmp / "tiny-gpt2")
    rw_cfg = RewriteConfig(enabled=True, model_path=str(folder), max_new_tokens=5)
    rw = Rewriter(rw_cfg, device="cpu")
    texts = ["chartevents itemid Heart Rate value 90", "outputevents itemid Foley value 200 valueuom mL"]
    a, b = rw.rewrite(texts), rw.rewrite(texts)
    assert a == b and all(s for s in a)  # greedy: deterministic, never empty
    assert all(len(s.split()) <= 5 for s in a if s not in texts)

    ev, tr = make_events(3)
    plain, p1 = stage(ev, tr, name="plain.h5")
    cfg = stage.cfg.model_copy(update={"rewrite": rw_cfg})
    rewritten, p2 = stage(ev, tr, cfg=cfg, name="rewritten.h5")
    assert rewritten["n_encoded"] == plain["n_unique_texts"]  # rewrite is part of the content hash
    assert json.loads(read_h5(p2)["attrs"]["rag"])["rewrite"].startswith(str(folder.resolve()))
    assert not np.array_equal(read_h5(p1)["hash"], read_h5(p2)["hash"])


def test_rewrite_enabled_without_folder_names_the_key(stage):
    from ehrxdiff_core.config import RewriteConfig

    cfg = stage.cfg.model_copy(update={"rewrite": RewriteConfig(enabled=True, model_path=str(stage.tmp / "missing"))})
    ev, tr = make_events(1)
    with pytest.raises(FileNotFoundError, match=r"text\.rewrite\.model_path"):
        stage(ev, tr, cfg=cfg)


def test_killed_run_keeps_finished_shards(stage, monkeypatch):
    from ehrxdiff_core.text import store

    ev, tr = make_events(10, seed=4)
    n_unique = ev["text"].nunique()
    cfg = stage.cfg.model_copy(update={"cache_shard_texts": 40})
    real_add, calls = store.EmbeddingCache.add, []

    def add_then_die(self, hashes, embeddings):
        calls.append(len(hashes))
        if len(calls) == 2:
            raise KeyboardInterrupt("job killed")
        return real_add(self, hashes, embeddings)

    monkeypatch.setattr(store.EmbeddingCache, "add", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        stage(ev, tr, cfg=cfg)
    assert not (stage.tmp / "events.h5").exists()
    monkeypatch.setattr(store.EmbeddingCache, "add", real_add)
    stats, _ = stage(ev, tr, cfg=cfg)
    assert stats["n_encoded"] == n_unique - 40 and stats["n_reused"] == 40
    assert len(list((stage.tmp / "cache").rglob("shard-*.npz"))) == 1 + -(-(n_unique - 40) // 40)
