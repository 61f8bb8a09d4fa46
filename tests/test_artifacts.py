"""The artifact definitions (`ehrxdiff_core/artifacts`): schemas round-trip, writers and openers reject what
does not match them with errors that name the file and the column or dataset, and the package stays light."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.artifacts import ArtifactError, MissingArtifactError
from ehrxdiff_core.artifacts.cohort import COHORT_IMAGES, PAIR_IMAGES, TRIPLETS
from ehrxdiff_core.artifacts.events import EVENT_TRIPLETS, EVENTS, WRITE_SCHEMA
from ehrxdiff_core.artifacts.images import create_pixels, open_image_store, write_index
from ehrxdiff_core.artifacts.samples import MANIFEST
from ehrxdiff_core.artifacts.text import KNOWLEDGE, read_embedding_store, write_embedding_store

PARQUET = [TRIPLETS, COHORT_IMAGES, EVENTS, EVENT_TRIPLETS, KNOWLEDGE, MANIFEST]
VALUE = {
    pa.int64(): 3,
    pa.int32(): 2,
    pa.float64(): 0.5,
    pa.string(): "x",
    pa.timestamp("us"): datetime(2150, 1, 1, 8),
    pa.list_(pa.string()): ["a", "b"],
}


def one_row(artifact) -> pa.Table:
    return pa.table({f.name: pa.array([VALUE[f.type]], f.type) for f in artifact.schema}, schema=artifact.schema)


@pytest.mark.parametrize("artifact", PARQUET, ids=lambda a: a.path)
def test_schema_round_trips(tmp_path, artifact):
    out = tmp_path / "a.parquet"
    artifact.write(one_row(artifact), out)
    artifact.check_file(out)
    back = pq.read_table(out)
    assert back.schema.names == artifact.names and back.schema.types == artifact.schema.types
    assert back.equals(one_row(artifact))
    artifact.require(out)
    empty = tmp_path / "empty.parquet"
    artifact.write(artifact.schema.empty_table(), empty)
    artifact.check_file(empty)


def test_writer_casts_to_the_schema(tmp_path):
    frame = one_row(TRIPLETS).to_pandas().astype({"age": "int32", "gap_hours": "float32"})
    TRIPLETS.write(frame, tmp_path / "t.parquet")
    assert pq.read_schema(tmp_path / "t.parquet").field("age").type == pa.int64()


def test_writer_rejects_a_frame_missing_a_column(tmp_path):
    frame = one_row(TRIPLETS).to_pandas().drop(columns=["prev_dicom_id"])
    out = tmp_path / "triplets.parquet"
    with pytest.raises(ArtifactError, match=r"triplets\.parquet: column\(s\) \['prev_dicom_id'\] missing"):
        TRIPLETS.write(frame, out)
    assert not out.exists()


def test_writer_rejects_nulls_extra_columns_and_bad_types(tmp_path):
    out = tmp_path / "manifest.parquet"
    rows = one_row(MANIFEST).to_pylist()
    with pytest.raises(ArtifactError, match=r"manifest\.parquet: column 'seed' .* 1 null"):
        MANIFEST.write(pa.Table.from_pylist([{**rows[0], "seed": None}], schema=MANIFEST.schema), out)
    with pytest.raises(ArtifactError, match=r"\['extra'\] are not columns"):
        MANIFEST.write(one_row(MANIFEST).append_column("extra", pa.array([1])), out)
    with pytest.raises(ArtifactError, match=r"column 'steps' .* not int64"):
        MANIFEST.write(one_row(MANIFEST).set_column(5, "steps", pa.array(["many"])), out)
    assert not out.exists()


def test_check_file_names_the_column(tmp_path):
    path = tmp_path / "events.parquet"
    pq.write_table(one_row(EVENTS).set_column(1, "position", pa.array([1.0])), path)
    with pytest.raises(ArtifactError, match=r"column 'position' of events/events\.parquet is double, not int64"):
        EVENTS.check_file(path)
    pq.write_table(one_row(EVENTS).drop_columns(["code"]), path)
    with pytest.raises(ArtifactError, match=r"missing \['code'\]"):
        EVENTS.check_file(path)
    # a column the schema says is non-null, written as nullable by another writer, must hold no null
    pq.write_table(
        pa.table(
            {f.name: pa.array([None], f.type) if f.name == "text" else one_row(EVENTS)[f.name] for f in EVENTS.schema}
        ),
        path,
    )
    with pytest.raises(ArtifactError, match=r"column 'text' of events/events\.parquet has 1 null"):
        EVENTS.check_file(path)


def test_readers_name_the_file_and_the_column(tmp_path):
    with pytest.raises(MissingArtifactError, match=r"not found: .*nothere\.parquet \(run the `cohort` rule\)"):
        TRIPLETS.require(tmp_path / "nothere.parquet")
    assert issubclass(MissingArtifactError, FileNotFoundError) and issubclass(ArtifactError, ValueError)
    path = tmp_path / "t.parquet"
    pd.DataFrame({"pair_id": ["b_a"], "prev_dicom_id": ["a"]}).to_parquet(path)
    TRIPLETS.require(path, ["pair_id", "prev_dicom_id"])  # a reader asks only for what it uses
    with pytest.raises(ArtifactError, match=r"t\.parquet: column\(s\) \['trg_dicom_id'\] missing"):
        TRIPLETS.require(path, PAIR_IMAGES)
    with pytest.raises(KeyError, match="no column"):
        TRIPLETS.columns("prev_dicom")  # a projection is checked against the schema


def test_duckdb_writes_the_schema_types(tmp_path):
    """DuckDB producers select through `select_sql`: the file has the artifact's types whatever the query's."""
    from ehrxdiff_core.config import DuckDBSettings
    from ehrxdiff_core.data.duck import close, connect, copy_to_parquet

    con = connect(DuckDBSettings(memory_limit="256MB", threads=1), spill_near=tmp_path)
    try:
        con.register("src", one_row(COHORT_IMAGES).set_column(7, "age", pa.array([61.0])))  # age as a double
        copy_to_parquet(con, f"SELECT {COHORT_IMAGES.select_sql(alias='s')} FROM src s", tmp_path / "i.parquet")
    finally:
        close(con)
    COHORT_IMAGES.check_file(tmp_path / "i.parquet")
    with pytest.raises(KeyError, match="nosuch"):
        COHORT_IMAGES.select_sql({"nosuch": "1"})


def test_events_write_schema_is_the_artifacts_with_dictionaries():
    assert WRITE_SCHEMA.names == EVENTS.names
    assert [f.nullable for f in WRITE_SCHEMA] == [f.nullable for f in EVENTS.schema]
    assert all(t.value_type == pa.string() for t in WRITE_SCHEMA.types if pa.types.is_dictionary(t))
    assert EVENT_TRIPLETS.names == [*TRIPLETS.names, "n_events"]


def _image_store(path, ids, size=4):
    with h5py.File(path, "w") as h5:
        px = create_pixels(h5, len(ids), size)
        px[:] = np.arange(len(ids) * size * size, dtype=np.uint8).reshape(len(ids), size, size)
        write_index(h5, ids, size=size, resize="stretch", jpeg_draft=False, n_bad=0, decoded=len(ids), from_cache=0)


def test_image_store_round_trips(tmp_path):
    _image_store(tmp_path / "cxr_4.h5", ["a", "b", "c"])
    store = open_image_store(tmp_path / "cxr_4.h5")
    assert store.dicom_ids == ["a", "b", "c"] and store.size == 4 and "b" in store
    assert store.load(["c", "a"]).shape == (2, 4, 4) and store.load(["c"])[0, 0, 0] == 32
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        create_pixels(h5, 2, 4)
        with pytest.raises(ArtifactError, match="1 dicom ids for 2 images"):
            write_index(h5, ["a"], size=4, resize="stretch", jpeg_draft=False, n_bad=0, decoded=1, from_cache=0)


def test_opener_rejects_a_store_missing_a_dataset(tmp_path):
    with pytest.raises(MissingArtifactError, match=r"image file not found: .*none\.h5 \(run the images stage\)"):
        open_image_store(tmp_path / "none.h5")
    path = tmp_path / "cxr_4.h5"
    with h5py.File(path, "w") as h5:
        h5["pixels"] = np.zeros((2, 4, 4), np.uint8)
        h5.attrs["size"] = 4
    with pytest.raises(ArtifactError, match=r"cxr_4\.h5: dataset\(s\) \['dicom_id'\] missing from the image store"):
        open_image_store(path)
    _image_store(path, ["a", "b"], size=4)
    with h5py.File(path, "a") as h5:
        h5.attrs["size"] = 8
    with pytest.raises(ArtifactError, match=r"pixels is uint8 \(2, 4, 4\), expected uint8 \(2, 8, 8\)"):
        open_image_store(path)


def test_embedding_store_round_trips_and_rejects_a_missing_dataset(tmp_path):
    path = tmp_path / "events.h5"
    emb = np.arange(6, dtype=np.float16).reshape(3, 2)
    write_embedding_store(
        path,
        hashes=np.array([5, 6, 7], np.uint64),
        embeddings=emb,
        pair_ids=["p", "q"],
        offsets=np.array([0, 2, 3]),
        rows=np.array([0, 2, 1]),
        attrs={"encoder": "toy", "dim": 2, "pooling": "mean", "rag": "{}"},
    )
    store = read_embedding_store(path)
    assert store.pair_ids == ["p", "q"] and np.array_equal(store.embedding, emb) and store.numeric is None
    assert store.rows.tolist() == [0, 2, 1] and store.attrs["encoder"] == "toy"
    with pytest.raises(ArtifactError, match="no texts/numeric"):
        read_embedding_store(path, numeric=True)
    with h5py.File(path, "a") as f:
        del f["pairs/rows"]
    with pytest.raises(ArtifactError, match=r"events\.h5: dataset\(s\) \['pairs/rows'\] missing from the embedding"):
        read_embedding_store(path)
    with pytest.raises(FileNotFoundError, match="run the `embed` rule"):
        read_embedding_store(tmp_path / "none.h5")


def test_artifacts_import_nothing_heavy():
    """The bottom layer: pyarrow, h5py, numpy and pydantic, and of the library only atomic writes and label names."""
    modules = ", ".join(
        f"ehrxdiff_core.artifacts.{m}" for m in ("cohort", "events", "images", "text", "samples", "metrics")
    )
    code = f"import json, sys, {modules}; print(json.dumps(sorted(sys.modules)))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert not {"torch", "duckdb", "pandas", "PIL", "diffusers", "faiss"} & set(loaded)
    ours = {m for m in loaded if m.startswith("ehrxdiff_core.") and not m.startswith("ehrxdiff_core.artifacts")}
    assert ours == {"ehrxdiff_core.atomic", "ehrxdiff_core.labels"}
