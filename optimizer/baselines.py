"""Baselines in the catalog and back: register the built-in models with their torch source and eval set,
and rebuild a `ModelSource` from a stored baseline so a worker on any machine can optimize it.

A baseline's `recipe` records where it came from: {"builtin": "digits" | "digits-cnn" | "minilm-l6",
"eval_sha256": ...}.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session

from modelroll.artifacts import ArtifactStore, StoredArtifact
from modelroll.catalog import register_model, stored_artifact_row
from modelroll.db import ArtifactRow, VariantRow
from modelroll.errors import InvalidInput
from optimizer.cnn import CNN_CHANNELS, CNN_INPUT, DigitsCNN, cnn_model, cnn_source
from optimizer.sources import (
    DIGITS_INPUT,
    DigitsMLP,
    ModelSource,
    check_onnx,
    digits_model,
    digits_source,
    encoder_source,
    minilm_dir,
    onnx_source,
)
from optimizer.texts import load_tokenizer, text_corpus, tokenize

BUILTINS = ("digits", "digits-cnn", "minilm-l6")
MINILM_EVAL_TEXTS = 512
CALIBRATION_ROWS = 256


def eval_arrays(name: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """The built-in model's eval set as .npz arrays: digits' held-out split with labels, or eval sentences."""
    if name == "digits":
        model = digits_model(cache_dir)
        return {DIGITS_INPUT: model.eval_inputs, "labels": model.eval_labels}
    if name == "digits-cnn":
        cnn = cnn_model(cache_dir)
        return {CNN_INPUT: cnn.eval_inputs, "labels": cnn.eval_labels}
    if name == "minilm-l6":
        tokenizer = load_tokenizer(minilm_dir())
        texts = text_corpus(MINILM_EVAL_TEXTS, split="eval")
        arrays: dict[str, np.ndarray] = tokenize(tokenizer, texts, max_length=128)
        return arrays
    raise InvalidInput(f"{name!r} is not a built-in model: built-ins are {list(BUILTINS)}")


def builtin_source(name: str, cache_dir: Path) -> ModelSource:
    if name == "digits":
        return digits_source(cache_dir)
    if name == "digits-cnn":
        return cnn_source(cache_dir)
    if name == "minilm-l6":
        return encoder_source(minilm_dir(), cache_dir)
    raise InvalidInput(f"{name!r} is not a built-in model: built-ins are {list(BUILTINS)}")


def _store_torch(store: ArtifactStore, name: str, source: ModelSource) -> StoredArtifact:
    if name == "minilm-l6":
        return store.put_file(minilm_dir(), "hf")
    assert isinstance(source.torch_model, (DigitsMLP, DigitsCNN))
    meta = {"kind": "digits-mlp", "sizes": source.torch_model.sizes} if isinstance(source.torch_model, DigitsMLP) \
        else {"kind": "digits-cnn", "channels": list(CNN_CHANNELS)}
    with tempfile.TemporaryDirectory(prefix="modelroll-torch-") as tmp:
        torch.save(source.torch_model.state_dict(), Path(tmp) / "model.pt")
        (Path(tmp) / "meta.json").write_text(json.dumps(meta))
        return store.put_file(Path(tmp), "torch")


def register_builtin(session: Session, store: ArtifactStore, name: str, cache_dir: Path) -> VariantRow:
    """Build (cached) and register a built-in model: ONNX baseline, torch source, eval set; flushes only."""
    source = builtin_source(name, cache_dir)
    with tempfile.TemporaryDirectory(prefix="modelroll-eval-") as tmp:
        path = Path(tmp) / "eval.npz"
        np.savez(path, **eval_arrays(name, cache_dir))  # type: ignore[arg-type]
        eval_stored = store.put_file(path, "npz")
    torch_row = stored_artifact_row(session, _store_torch(store, name, source))
    _, variant = register_model(session, store, source.onnx_path, name,
                                description=f"built-in {name} model (torch source and eval set included)")
    variant.source_artifact_id = torch_row.id
    variant.recipe = {"builtin": name, "eval_sha256": eval_stored.sha256}
    session.flush()
    return variant


def _digits_module(folder: Path) -> DigitsMLP:
    meta = json.loads((folder / "meta.json").read_text())
    module = DigitsMLP(tuple(meta["sizes"]))
    module.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return module.eval()


def load_source(store: ArtifactStore, model: str, baseline: VariantRow, onnx_sha256: str,
                torch_artifact: ArtifactRow | None, eval_path: Path, cache_dir: Path) -> ModelSource:
    """The stored baseline as a `ModelSource`: its verified ONNX file, its torch model when stored, and
    calibration batches (built-ins: their calibration split; ONNX-only: the first eval rows)."""
    onnx_path = store.path_of(onnx_sha256)
    builtin = (baseline.recipe or {}).get("builtin")
    if builtin == "digits" and torch_artifact is not None:
        module = _digits_module(store.tree_of(torch_artifact.sha256))
        return replace(digits_source(cache_dir), name=model, onnx_path=onnx_path, torch_model=module)
    if builtin == "digits-cnn" and torch_artifact is not None:
        cnn = DigitsCNN()
        cnn.load_state_dict(torch.load(store.tree_of(torch_artifact.sha256) / "model.pt", weights_only=True))
        return replace(cnn_source(cache_dir), name=model, onnx_path=onnx_path, torch_model=cnn.eval())
    if torch_artifact is not None and torch_artifact.format == "hf":
        source = encoder_source(store.tree_of(torch_artifact.sha256), cache_dir)
        return replace(source, name=model, onnx_path=onnx_path)
    inputs = check_onnx(onnx_path).inputs
    with np.load(eval_path, allow_pickle=False) as archive:
        calibration = {k: archive[k][:CALIBRATION_ROWS] for k in inputs}
    return replace(onnx_source(onnx_path, calibration=(calibration,)), name=model)
