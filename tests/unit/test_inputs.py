"""The input-path policy: inside the input root by a relative path, or one refusal that tells nothing of the host."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelroll.errors import InvalidInput, NotFound
from modelroll.inputs import LOCAL, InputPolicy


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "inputs"
    (root / "digits").mkdir(parents=True)
    (root / "digits" / "eval.npz").write_bytes(b"inside")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.npz").write_bytes(b"outside")
    (root / "leak.npz").symlink_to(tmp_path / "outside" / "secret.npz")
    (root / "dangling.npz").symlink_to(tmp_path / "outside" / "nothing.npz")
    (root / "sub").symlink_to(tmp_path / "outside")
    (root / "loop.npz").symlink_to(root / "loop.npz")
    (root / "alias.npz").symlink_to(root / "digits" / "eval.npz")
    return root


def refusal(policy: InputPolicy, raw: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        policy.resolve("eval_data", raw)
    assert "MODELROLL_INPUT_DIR" in caught.value.message and "eval_sha256" in caught.value.message
    return caught.value.message.replace(repr(raw), "<path>")


def test_a_relative_path_inside_the_root_is_read(root: Path) -> None:
    policy = InputPolicy.within(root)
    assert policy.resolve("eval_data", "digits/eval.npz") == (root / "digits" / "eval.npz").resolve()
    assert policy.resolve("eval_data", "alias.npz") == (root / "digits" / "eval.npz").resolve()


def test_escapes_get_one_refusal_whether_or_not_the_file_exists(root: Path, tmp_path: Path) -> None:
    policy = InputPolicy.within(root)
    existing, missing = tmp_path / "outside" / "secret.npz", tmp_path / "outside" / "nothing.npz"
    attempts = ["../outside/secret.npz", "../outside/nothing.npz", str(existing), str(missing),
                "digits/../../outside/secret.npz", "../" * 12 + str(existing).lstrip("/"),
                "leak.npz", "dangling.npz", "sub/secret.npz", "sub/nothing.npz", "loop.npz", "./digits/eval.npz",
                "digits//eval.npz", "digits/eval.npz\x00.npz", "", "digits/eval.csv"]
    messages = {refusal(policy, raw) for raw in attempts}
    assert len(messages) == 1, messages


def test_a_missing_file_inside_the_root_is_not_found(root: Path) -> None:
    with pytest.raises(NotFound) as caught:
        InputPolicy.within(root).resolve("eval_data", "digits/other.npz")
    assert "'digits/other.npz'" in caught.value.message and "input root" in caught.value.message
    with pytest.raises(NotFound):
        InputPolicy.within(root).resolve("eval_data", "digits.npz")  # a folder of that name would be too


def test_the_cli_reads_what_its_user_can_read(root: Path, tmp_path: Path) -> None:
    assert LOCAL.resolve("eval_data", str(tmp_path / "outside" / "secret.npz")).read_bytes() == b"outside"
