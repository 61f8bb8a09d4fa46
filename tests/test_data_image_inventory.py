"""The images rule's inventory hash: it follows the files the cohort lists, and only those."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrxdiff_core.data import images
from ehrxdiff_core.data.images import image_inventory_hash


def write_listing(tmp_path, rels, ids=None):
    listing = tmp_path / "images.parquet"
    ids = ids or [f"dcm{k}" for k in range(len(rels))]
    pq.write_table(pa.table({"dicom_id": ids, "path": rels}), listing)
    return listing


@pytest.fixture
def world(tmp_path):
    root = tmp_path / "cxr"
    rels = [f"files/p10/p1000000{k}/s5000000{k}/dcm{k}.jpg" for k in range(5)]
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"jpeg" * 10)
    (root / "files/p10/unlisted.jpg").write_bytes(b"other")
    return root, rels, write_listing(tmp_path, rels)


def test_same_files_same_hash_serial_or_threaded(world, monkeypatch):
    root, _, listing = world
    pools = []

    class CountingPool(images.ThreadPoolExecutor):
        def __init__(self, *args, **kwargs):
            pools.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(images, "ThreadPoolExecutor", CountingPool)
    first = image_inventory_hash(listing, root)
    assert first.startswith("5 listed, 0 missing, sha256 ")
    assert not pools  # a local disk: a few µs per stat, serial
    assert image_inventory_hash(listing, root) == first
    assert image_inventory_hash(listing, root, workers=1, slow_stat_s=0) == first
    assert not pools  # one worker: no pool
    # slow_stat_s=0: every probe counts as slow, so the paths after the probe go to the threads
    for probe in (0, 1, 2):
        assert image_inventory_hash(listing, root, workers=3, probe=probe, slow_stat_s=0) == first
    assert len(pools) == 3


def test_rewritten_file_with_another_size(world):
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    st = (root / rels[2]).stat()
    (root / rels[2]).write_bytes(b"jpeg" * 11)
    os.utime(root / rels[2], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime: size alone
    assert image_inventory_hash(listing, root) != before


def test_same_size_newer_mtime(world):
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    st = (root / rels[0]).stat()
    os.utime(root / rels[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert image_inventory_hash(listing, root) != before


def test_removed_and_restored_file(world):
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    st = (root / rels[4]).stat()
    data = (root / rels[4]).read_bytes()
    (root / rels[4]).unlink()
    gone = image_inventory_hash(listing, root)
    assert gone != before and gone.startswith("5 listed, 1 missing, ")
    (root / rels[4]).write_bytes(data)
    os.utime(root / rels[4], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image_inventory_hash(listing, root) == before  # same path, size and mtime again


def test_image_added_to_or_dropped_from_the_listing(world, tmp_path):
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    added = write_listing(tmp_path, [*rels, "files/p10/unlisted.jpg"])
    assert image_inventory_hash(added, root).startswith("6 listed, 0 missing, ")
    dropped = write_listing(tmp_path, rels[:-1])
    assert image_inventory_hash(dropped, root).startswith("4 listed, ")
    assert image_inventory_hash(write_listing(tmp_path, rels), root) == before


def test_unlisted_file_changes_nothing(world):
    root, _, listing = world
    before = image_inventory_hash(listing, root)
    (root / "files/p10/unlisted.jpg").write_bytes(b"changed, and longer")
    (root / "files/p10/new.jpg").write_bytes(b"new")
    (root / "files/p10/p10000001/s50000001/dcm1.jpg.tmp").write_bytes(b"x")
    assert image_inventory_hash(listing, root) == before


def test_order_and_duplicates_of_the_listing_do_not_matter(world, tmp_path):
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    shuffled = write_listing(tmp_path, [rels[3], rels[0], rels[4], rels[1], rels[2], rels[0]])
    assert image_inventory_hash(shuffled, root) == before


def test_path_under_a_file_counts_as_missing(world):
    """A listed path under a regular file (`NotADirectoryError`) counts as missing, not as an error."""
    root, rels, listing = world
    before = image_inventory_hash(listing, root)
    folder = (root / rels[1]).parent
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    folder.write_bytes(b"not a folder")
    after = image_inventory_hash(listing, root)
    assert after != before and after.startswith("5 listed, 1 missing, ")
