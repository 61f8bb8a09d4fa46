"""The text stage on the project's synthetic MIMIC world and data stages: new admissions, glossary coverage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ehrxdiff_core.config import TextConfig
from ehrxdiff_core.data.cohort import build_cohort
from ehrxdiff_core.data.events import build_events
from ehrxdiff_core.data.ingest import ingest_table
from ehrxdiff_core.data.sources import source_path
from ehrxdiff_core.data.tables import TABLE_NAMES

torch.set_num_threads(1)
synthetic = pytest.importorskip("ehrxdiff_core.synthetic")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from ehrxdiff_core.config import CohortConfig, DataConfig, DuckDBSettings, EventsConfig, SyntheticConfig

    root = tmp_path_factory.mktemp("world")
    synthetic.write_world(root / "synthetic", SyntheticConfig(patients=16, seed=5, image_px=32))
    duck = DuckDBSettings(threads=1)
    for t in TABLE_NAMES:
        ingest_table(t, source_path(t, DataConfig(), root / "synthetic"), root / "ehr" / f"{t}.parquet", duck)
    build_cohort(root / "ehr", CohortConfig(), duck, root / "cohort/images.parquet", root / "cohort/triplets.parquet")
    build_events(
        root / "ehr",
        root / "cohort/triplets.parquet",
        EventsConfig(max_events=256),
        duck,
        root / "events/events.parquet",
        root / "events/triplets.parquet",
    )
    return root


def test_new_admissions_encode_only_their_new_texts(world, tmp_path):
    from ehrxdiff_core.text.embed import embed_events
    from ehrxdiff_core.text.index import build_rag_index
    from ehrxdiff_core.text.knowledge import build_knowledge
    from ehrxdiff_core.text.store import EmbeddingReader

    cfg = TextConfig.model_validate(
        {"encoder": {"name": "tiny-random", "tiny_dim": 16}, "cache_dir": str(tmp_path / "c")}
    )
    build_knowledge({d: world / f"ehr/{d}.parquet" for d in ("d_items", "d_labitems")}, tmp_path / "k.parquet")
    build_rag_index(tmp_path / "k.parquet", cfg, tmp_path / "i.faiss")
    trip = pd.read_parquet(world / "events/triplets.parquet")
    events = pd.read_parquet(world / "events/events.parquet")
    adm = np.sort(trip["hadm_id"].unique())
    assert len(adm) >= 3
    new_adm = set(adm[-max(1, len(adm) // 5) :].tolist())
    old = trip[~trip["hadm_id"].isin(new_adm)]
    old.to_parquet(tmp_path / "old.parquet")

    def embed(triplets, name):
        return embed_events(
            world / "events/events.parquet",
            triplets,
            tmp_path / "k.parquet",
            tmp_path / "i.faiss",
            cfg,
            tmp_path / name,
        )

    s1 = embed(tmp_path / "old.parquet", "old.h5")
    s2 = embed(world / "events/triplets.parquet", "all.h5")
    old_texts = set(events.loc[events["pair_id"].isin(old["pair_id"]), "text"])
    assert s2["n_encoded"] == len(set(events["text"]) - old_texts) > 0
    assert s2["n_reused"] == s1["n_unique_texts"]
    # text embeddings only: numeric features are re-standardised on each run's own events by design
    r_old, r_all = (
        EmbeddingReader(tmp_path / "old.h5", numeric=False),
        EmbeddingReader(tmp_path / "all.h5", numeric=False),
    )
    assert r_all.pair_ids == trip["pair_id"].tolist()
    for pid, n in zip(trip["pair_id"], trip["n_events"]):
        assert r_all.n_events(pid) == n
    some = old["pair_id"].tolist()[:4]
    a, ma = r_old.batch(some, 256)
    b, mb = r_all.batch(some, 256)
    assert torch.equal(a, b) and torch.equal(ma, mb)  # old pairs read back bit-identical after the rerun


def test_every_synthetic_item_finds_its_glossary_entry(world, tmp_path):
    """The shipped glossary covers the labels, drugs and organisms the synthetic world (MIMIC vocabulary) emits."""
    from ehrxdiff_core.text.augment import KnowledgeLookup, event_item
    from ehrxdiff_core.text.knowledge import build_knowledge, read_knowledge

    build_knowledge({d: world / f"ehr/{d}.parquet" for d in ("d_items", "d_labitems")}, tmp_path / "k.parquet")
    lookup = KnowledgeLookup(read_knowledge(tmp_path / "k.parquet"))
    events = pd.read_parquet(world / "events/events.parquet").drop_duplicates(["source", "code"])
    missing = []
    for r in events.itertuples():
        item = event_item(r.text, r.source, r.code)
        if item.label is None or lookup.glossary_for(item.label) is None:
            missing.append((r.source, r.code))
    assert not missing, missing
