"""The artifact store: content addressing, dedup, verification on every load, no path escapes."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from modelroll.artifacts import ArtifactStore, StoredArtifact
from modelroll.errors import Conflict, InvalidInput, NotFound, Tampered
from modelroll.integrity import read_verified


@pytest.fixture()
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def _blobs(store: ArtifactStore) -> list[Path]:
    """Stored files, not counting the scratch and extraction folders."""
    return [p for p in store.root.rglob("*") if p.is_file() and p.relative_to(store.root).parts[0][0] != "."]


def _tamper(path: Path, data: bytes) -> None:
    os.chmod(path, 0o644)
    path.write_bytes(data)


def _folder(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "config.json").write_text('{"hidden_size": 8}')
    (root / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (root / "sub" / "deeper" / "vocab.txt").write_text("a\nb\n")
    (root / "empty").mkdir()
    return root


def test_put_file_round_trips_and_the_id_is_the_sha256_of_the_bytes(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several hashing chunks
    source = tmp_path / "model.onnx"
    source.write_bytes(data)
    stored = store.put_file(source, "onnx")
    expected = hashlib.sha256(data).hexdigest()
    assert stored == StoredArtifact(expected, len(data), "onnx", f"{expected[:2]}/{expected}")
    assert store.exists(expected)
    assert store.path_of(expected) == (store.root / stored.relpath).resolve()
    assert store.read_bytes(expected) == data
    with store.open(expected) as stream:
        assert stream.read() == data


def test_put_bytes_round_trips(store: ArtifactStore) -> None:
    stored = store.put_bytes(b"weights", "torch")
    assert stored.size_bytes == 7
    assert store.read_bytes(stored.sha256) == b"weights"


def test_same_content_is_stored_once(store: ArtifactStore, tmp_path: Path) -> None:
    (tmp_path / "a.onnx").write_bytes(b"same bytes")
    (tmp_path / "b.onnx").write_bytes(b"same bytes")
    first = store.put_file(tmp_path / "a.onnx", "onnx")
    second = store.put_file(tmp_path / "b.onnx", "onnx")
    third = store.put_bytes(b"same bytes", "onnx")
    assert first.sha256 == second.sha256 == third.sha256
    assert len(_blobs(store)) == 1
    assert list((store.root / ".tmp").iterdir()) == []  # no scratch file left behind


def test_tampered_file_is_refused_on_every_kind_of_load(store: ArtifactStore) -> None:
    stored = store.put_bytes(b"original model", "onnx")
    _tamper(store.root / stored.relpath, b"edited model!!")  # same length: only the hash can tell
    message = (f"artifact hash mismatch: the bytes of artifact {stored.sha256[:12]}… changed on disk since they were "
               "stored (tampered or damaged); re-register the model")
    for load in (store.path_of, store.read_bytes, store.open):
        with pytest.raises(Tampered) as caught:
            load(stored.sha256)
        assert caught.value.message == message
        assert isinstance(caught.value, Conflict) and caught.value.status_code == 409


def test_putting_the_content_again_repairs_a_tampered_copy(store: ArtifactStore) -> None:
    stored = store.put_bytes(b"original model", "onnx")
    _tamper(store.root / stored.relpath, b"garbage")
    store.put_bytes(b"original model", "onnx")
    assert store.read_bytes(stored.sha256) == b"original model"


@pytest.mark.parametrize("bad", ["../" * 3 + "etc/passwd", "../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "\n"])
def test_ids_that_are_not_a_sha256_are_refused_before_touching_the_disk(store: ArtifactStore, bad: str) -> None:
    for load in (store.path_of, store.read_bytes, store.open, store.exists, store.tree_of):
        with pytest.raises(InvalidInput, match="expected 64 lowercase hex digits"):
            load(bad)


def test_a_shard_folder_linked_outside_the_root_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    sha = hashlib.sha256(b"x").hexdigest()
    (outside / sha).write_bytes(b"x")
    store.root.mkdir(parents=True)
    (store.root / sha[:2]).symlink_to(outside)
    with pytest.raises(InvalidInput, match="outside the store"):
        store.path_of(sha)


def test_unknown_sha_is_not_found(store: ArtifactStore) -> None:
    sha = hashlib.sha256(b"never stored").hexdigest()
    assert not store.exists(sha)
    with pytest.raises(NotFound, match=f"artifact {sha[:12]}… is not in the artifact store"):
        store.path_of(sha)


def test_missing_source_and_bad_format_are_invalid_input(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=f"no file at {tmp_path / 'nope.onnx'}"):
        store.put_file(tmp_path / "nope.onnx", "onnx")
    with pytest.raises(InvalidInput, match="artifact format 'ONNX!' is not valid"):
        store.put_bytes(b"x", "ONNX!")


def test_folder_is_stored_as_a_deterministic_tar_and_extracted_on_load(store: ArtifactStore, tmp_path: Path) -> None:
    first = store.put_file(_folder(tmp_path / "one"), "hf")
    second_source = _folder(tmp_path / "two")
    os.utime(second_source / "config.json", (1_000_000, 1_000_000))  # times must not change the hash
    assert store.put_file(second_source, "hf").sha256 == first.sha256
    with tarfile.open(store.path_of(first.sha256)) as tar:
        names = tar.getnames()
        assert names == sorted(names)
        assert {m.mtime for m in tar.getmembers()} == {0}
    tree = store.tree_of(first.sha256)
    assert tree.is_relative_to(store.root.resolve())
    assert (tree / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 64
    assert (tree / "sub" / "deeper" / "vocab.txt").read_text() == "a\nb\n"
    assert (tree / "empty").is_dir()
    assert store.tree_of(first.sha256) == tree


def test_an_edited_extraction_is_replaced_from_the_verified_tar(store: ArtifactStore, tmp_path: Path) -> None:
    stored = store.put_file(_folder(tmp_path / "model"), "hf")
    tree = store.tree_of(stored.sha256)
    (tree / "config.json").write_text('{"hidden_size": 9}')
    (tree / "extra.bin").write_bytes(b"planted")
    tree = store.tree_of(stored.sha256)
    assert (tree / "config.json").read_text() == '{"hidden_size": 8}'
    assert not (tree / "extra.bin").exists()


def test_a_tampered_folder_tar_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    stored = store.put_file(_folder(tmp_path / "model"), "hf")
    blob = store.root / stored.relpath
    data = bytearray(blob.read_bytes())
    data[-20000] ^= 0xFF
    _tamper(blob, bytes(data))
    with pytest.raises(Tampered):
        store.tree_of(stored.sha256)


def test_folder_with_a_symlink_is_refused_and_nothing_is_written(store: ArtifactStore, tmp_path: Path) -> None:
    source = _folder(tmp_path / "model")
    (source / "link").symlink_to("/etc/passwd")
    with pytest.raises(InvalidInput, match="not a regular file or folder"):
        store.put_file(source, "hf")
    assert _blobs(store) == []


def test_a_single_file_is_not_extracted_as_a_folder(store: ArtifactStore) -> None:
    stored = store.put_bytes(b"plain onnx bytes", "onnx")
    with pytest.raises(InvalidInput, match="single file"):
        store.tree_of(stored.sha256)


def test_read_verified_returns_the_checked_bytes_and_pins_an_unrecorded_hash(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"model bytes")
    data, pinned = read_verified(path, None)
    assert data == b"model bytes" and pinned == hashlib.sha256(b"model bytes").hexdigest()
    assert read_verified(path, pinned) == (data, pinned)
    path.write_bytes(b"model bytez")
    with pytest.raises(Tampered, match=f"^artifact hash mismatch: the bytes of artifact {pinned[:12]}… changed"):
        read_verified(path, pinned)
    path.unlink()
    with pytest.raises(NotFound, match="is gone"):
        read_verified(path, pinned)
