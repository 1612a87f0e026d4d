"""A small convolutional network on scikit-learn's digits (8×8 images, 1.5 M parameters), trained at first use
and cached: the benchmark's CNN, and a built-in model (`digits-cnn`) for trying convolution-aware candidates.

Wide enough that its convolutions, not runtime overhead, dominate latency (~38 M multiply-adds per image).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optimizer.sources import ModelSource, _digits_split, accuracy, fit_one_cycle, torch_threads

CNN_INPUT = "input"
CNN_OUTPUT = "logits"
CNN_CHANNELS = (128, 256, 512)
CNN_EPOCHS, CNN_BATCH, CNN_LR, CNN_SEED = 4, 64, 2e-3, 0
CNN_RECIPE = {"epochs": CNN_EPOCHS, "batch": CNN_BATCH, "lr": CNN_LR, "optimizer": "adamw-onecycle", "seed": CNN_SEED}


class DigitsCNN(nn.Module):
    """conv3×3(1→128) → conv3×3(→256) → pool → conv3×3(→512) → pool → linear(2048→10), ReLU between."""

    def __init__(self, channels: tuple[int, int, int] = CNN_CHANNELS) -> None:
        super().__init__()
        a, b, c = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, a, 3, padding=1), nn.ReLU(),
            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(c * 2 * 2, 10)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(input), 1))  # type: ignore[no-any-return]


def images(x: np.ndarray) -> np.ndarray:
    """Digits rows (n, 64) in [0, 1] as images (n, 1, 8, 8), float32."""
    return np.ascontiguousarray(x.reshape(-1, 1, 8, 8), dtype=np.float32)


@dataclass(frozen=True)
class CnnModel:
    module: DigitsCNN
    onnx_path: Path
    test_accuracy: float
    eval_inputs: np.ndarray  # (n, 1, 8, 8)
    eval_labels: np.ndarray


def cnn_key() -> str:
    blob = json.dumps({"channels": CNN_CHANNELS, "recipe": CNN_RECIPE, "torch": torch.__version__[:4]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_cnn() -> DigitsCNN:
    """AdamW with a one-cycle schedule on the 70 % split (one thread: ~1 minute on a shared core)."""
    x_train, _, y_train, _ = _digits_split()
    torch.manual_seed(CNN_SEED)
    generator = torch.Generator().manual_seed(CNN_SEED)
    model = DigitsCNN()
    fit_one_cycle(model, torch.from_numpy(images(x_train)), torch.from_numpy(y_train), CNN_EPOCHS, CNN_BATCH, CNN_LR,
                  generator)
    return model.eval()


def cnn_model(cache_dir: Path) -> CnnModel:
    """The trained CNN, built at first use into `cache_dir/digits-cnn-<key>/` and loaded after."""
    from optimizer.export import export_onnx

    folder = Path(cache_dir) / f"digits-cnn-{cnn_key()}"
    _, x_test, _, y_test = _digits_split()
    x_eval = images(x_test)
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".digits-cnn-", dir=folder.parent))  # renamed when complete
        try:
            module = train_cnn()
            torch.save(module.state_dict(), staging / "model.pt")
            export_onnx(module, {CNN_INPUT: x_eval[:2]}, staging / "model.onnx", output_name=CNN_OUTPUT)
            with torch.no_grad(), torch_threads(1):
                test_accuracy = accuracy(module(torch.from_numpy(x_eval)).numpy(), y_test)
            (staging / "meta.json").write_text(json.dumps({"test_accuracy": test_accuracy, "recipe": CNN_RECIPE,
                                                           "channels": list(CNN_CHANNELS)}, indent=2))
            with contextlib.suppress(OSError):  # another process won the race; its copy is identical
                staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    module = DigitsCNN()
    module.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return CnnModel(module.eval(), folder / "model.onnx", float(meta["test_accuracy"]), x_eval, y_test)


def cnn_source(cache_dir: Path, calibration_rows: int = 256) -> ModelSource:
    """The CNN as a model source: calibration = the first training images (never the eval split)."""
    model = cnn_model(cache_dir)
    x_train = images(_digits_split()[0])
    return ModelSource(name="digits-cnn", onnx_path=model.onnx_path, output_name=CNN_OUTPUT, torch_model=model.module,
                       calibration=({CNN_INPUT: x_train[:calibration_rows].copy()},),
                       train_feeds=({CNN_INPUT: x_train},))
