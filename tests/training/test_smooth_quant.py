"""SmoothQuant on the feed-forward output projections: the fp32 graph computes what it did, its INT8 copy
loses less than plain INT8 where the GELU has outlier channels, and recovery divides the scales back out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from scorer_service.backends.onnx import OnnxBackend
from training.export import export_all, quantisable_blocks, quantise
from training.recover import recover_weights
from training.smooth_quant import input_ranges, smooth, smoothing_scales

OUTLIER_CHANNELS = (3, 17, 40)
OUTLIER_GAIN = 100.0


@pytest.fixture(scope="module")
def with_outliers(trained_like: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a few GELU channels per layer 100 times larger (and the projection after them
    as much smaller): the outlier channels trained BERTs have, which one INT8 scale per tensor serves
    worst."""
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(trained_like)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for channel in OUTLIER_CHANNELS:
                layer.intermediate.dense.weight[channel] *= OUTLIER_GAIN
                layer.intermediate.dense.bias[channel] = 1.0 * OUTLIER_GAIN
                layer.output.dense.weight[:, channel] /= OUTLIER_GAIN
    path = tmp_path_factory.mktemp("outliers")
    model.save_pretrained(path)
    shutil.copy(trained_like / "tokenizer.json", path / "tokenizer.json")
    return path


def _feeds(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        length = int(rng.integers(5, 30))
        ids = rng.integers(1000, 20000, size=(1, length)).astype(np.int64)
        feeds.append(
            {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        )
    return feeds


def _smoothed(checkpoint: Path, workdir: Path, alpha: float = 0.5) -> tuple[Path, Path]:
    files, _ = export_all(checkpoint, workdir)
    projections = [
        n
        for block, nodes in quantisable_blocks(files.fused).items()
        if block.endswith("ffn_out")
        for n in nodes
    ]
    ranges = input_ranges(files.fused, projections, _feeds(seed=1, count=20))
    assert set(ranges) == set(projections) and len(projections) == 2  # one per layer
    return files.fused, smooth(files.fused, workdir / "model.smoothed.onnx", ranges, alpha)


def _logits(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    backend = OnnxBackend(path)
    return np.concatenate([backend.predict(feed) for feed in feeds])


def test_the_smoothed_fp32_graph_computes_what_it_did(with_outliers: Path, tmp_path: Path) -> None:
    fused, smoothed = _smoothed(with_outliers, tmp_path)
    feeds = _feeds(seed=2, count=8)
    np.testing.assert_allclose(_logits(smoothed, feeds), _logits(fused, feeds), atol=1e-4)
    scales = smoothing_scales(onnx.load(str(smoothed)).graph)
    assert len(scales) == 2
    for scale in scales.values():  # the outlier channels' inputs are divided by far more than the rest
        others = np.delete(scale, OUTLIER_CHANNELS)
        assert scale[list(OUTLIER_CHANNELS)].min() > 3 * np.median(others)


def test_smoothed_int8_loses_less_than_plain_int8(with_outliers: Path, tmp_path: Path) -> None:
    fused, smoothed = _smoothed(with_outliers, tmp_path)
    feeds = _feeds(seed=3, count=16)
    reference = _logits(fused, feeds)
    plain = _logits(quantise(fused, tmp_path / "plain.int8.onnx", weights="u8"), feeds)
    smooth_int8 = _logits(quantise(smoothed, tmp_path / "smoothed.int8.onnx", weights="u8"), feeds)
    plain_error = np.abs(plain - reference).mean()
    smooth_error = np.abs(smooth_int8 - reference).mean()
    assert smooth_error < 0.5 * plain_error, (smooth_error, plain_error)


def test_recovery_divides_the_scales_back_out(with_outliers: Path, tmp_path: Path) -> None:
    fused, smoothed = _smoothed(with_outliers, tmp_path)
    original, recovered = recover_weights(fused), recover_weights(smoothed)
    for name, weight in original.items():
        np.testing.assert_allclose(recovered[name], weight, rtol=1e-5, atol=1e-6, err_msg=name)
    # From the INT8 file too, where the projections are MatMulInteger nodes named "..._quant": the scales
    # come out to within the quantisation's rounding, far closer than the stored s * W.
    int8 = recover_weights(quantise(smoothed, tmp_path / "smoothed.int8.onnx", weights="u8"))
    scales = smoothing_scales(onnx.load(str(smoothed)).graph)
    for layer in (0, 1):
        name = f"bert.encoder.layer.{layer}.output.dense.weight"
        stored = original[name] * scales[f"/bert/encoder/layer.{layer}/output/dense/MatMul"][None, :]
        error = np.abs(int8[name] - original[name]).mean()
        assert error < 0.05 * np.abs(stored - original[name]).mean(), name


def test_padding_does_not_count_in_the_measured_ranges(with_outliers: Path, tmp_path: Path) -> None:
    files, _ = export_all(with_outliers, tmp_path)
    projections = [
        n for b, nodes in quantisable_blocks(files.fused).items() if b.endswith("ffn_out") for n in nodes
    ]
    short, long = _feeds(seed=4, count=2)
    width = max(short["input_ids"].shape[1], long["input_ids"].shape[1]) + 8
    rng = np.random.default_rng(5)
    batch = {key: np.zeros((2, width), np.int64) for key in short}
    for row, feed in enumerate((short, long)):
        n = feed["input_ids"].shape[1]
        batch["input_ids"][row] = rng.integers(1000, 20000, size=width)  # junk where the mask is 0
        batch["input_ids"][row, :n] = feed["input_ids"][0]
        batch["attention_mask"][row, :n] = 1
    apart = [input_ranges(files.fused, projections, [feed]) for feed in (short, long)]
    together = input_ranges(files.fused, projections, [batch])
    for name in projections:
        np.testing.assert_allclose(
            together[name], np.maximum(apart[0][name], apart[1][name]), rtol=1e-4, atol=1e-5
        )


def test_alpha_must_lie_between_zero_and_one(with_outliers: Path, tmp_path: Path) -> None:
    files, _ = export_all(with_outliers, tmp_path)
    with pytest.raises(ValueError, match="between 0 and 1"):
        smooth(files.fused, tmp_path / "x.onnx", {}, alpha=1.0)
