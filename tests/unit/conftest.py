"""Model fixtures for unit tests: the digits model built once per session, a tiny random BERT-like encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from optimizer.sources import DigitsModel, ModelSource, SentenceEncoder, digits_model, digits_source


@pytest.fixture(scope="session")
def digits_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session: the digits model is trained (~5-10 s) the first time only."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def digits(digits_cache: Path) -> DigitsModel:
    return digits_model(digits_cache)


@pytest.fixture(scope="session")
def digits_src(digits_cache: Path, digits: DigitsModel) -> ModelSource:
    return digits_source(digits_cache)


def make_tiny_bert(seed: int = 0, layers: int = 4) -> SentenceEncoder:
    """A random-init BERT (hidden 32, 4 heads, FFN 64): real transformers code, tiny dims, milliseconds to run."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return SentenceEncoder(BertModel(config, add_pooling_layer=False)).eval()


def tiny_text_feeds(batches: int = 2, rows: int = 8, seq: int = 12, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Token batches with real padding (the last tokens of some rows masked out)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(batches):
        ids = rng.integers(1, 100, (rows, seq)).astype(np.int64)
        mask = np.ones((rows, seq), np.int64)
        for row in range(0, rows, 2):
            mask[row, seq - 1 - row % 5 :] = 0
        feeds.append({"input_ids": ids * mask, "attention_mask": mask})
    return feeds
