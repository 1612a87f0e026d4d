"""The store as gc lists and deletes it: what counts as a stored file, and files that vanish meanwhile."""

from __future__ import annotations

from pathlib import Path

from modelroll.artifacts import ArtifactStore
from modelroll.store_files import Deleter, _entries, listing


def test_listing_tells_stored_files_extracted_folders_and_temporary_files_apart(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    blob = store.put_bytes(b"weights", "onnx")
    (store.root / "notes.txt").write_text("not the store's")  # never listed, never deleted
    (store.root / "zz").mkdir()
    (store.root / "zz" / ("zz" + "0" * 62)).write_text("not hex")
    tree = store.root / ".trees" / ("a" * 64)
    tree.mkdir(parents=True)
    (tree / "model.pt").write_bytes(b"x" * 10)
    (store.root / ".tmp" / "put-1").write_bytes(b"yy")
    files, trees, scratch = listing(store.root)
    assert [(e.name, e.size_bytes) for e in files] == [(blob.sha256, 7)]
    assert [(e.name, e.size_bytes) for e in trees] == [("a" * 64, 10)]
    assert [(e.name, e.size_bytes) for e in scratch] == [("put-1", 2)]
    assert listing(tmp_path / "no-store-yet") == ([], [], [])


def test_a_file_gone_between_listing_and_reading_is_left_out(tmp_path: Path) -> None:
    here = tmp_path / "here"
    here.write_bytes(b"1")
    assert [e.name for e in _entries([tmp_path / "renamed-meanwhile", here])] == ["here"]


def test_deleting_the_last_file_of_a_shard_removes_the_shard_folder(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    blob = store.put_bytes(b"weights", "onnx")
    deleter = Deleter(store.root)
    assert deleter.remove(store.root / blob.relpath)
    assert not (store.root / blob.sha256[:2]).exists()
    assert not deleter.remove(store.root / blob.relpath)  # already gone: nothing to do, no error
    assert deleter.errors == []
