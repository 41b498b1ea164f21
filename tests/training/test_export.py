"""Export to ONNX (dynamic axes), fusion, INT8 quantisation, and the gate that refuses a damaged model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from callsense.tokenization import SHIPPED_MODEL_DIR
from scorer_service.inference import DEFAULT_MODEL, SentimentModel, read_model_info
from training.data import load_jsonl
from training.evaluate import evaluate_examples, onnx_model
from training.export import QuantisationRejected, quantisation_gate

TEST_SET = Path(__file__).parents[1] / "data" / "sales_sentiment.jsonl"


def test_export_fuse_quantise_keeps_the_model(tiny_checkpoint: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import BertForSequenceClassification

    from scorer_service.backends.onnx import OnnxBackend
    from training.export import export_all

    files, stats = export_all(tiny_checkpoint, tmp_path)
    assert stats.get("Attention", 0) + stats.get("MultiHeadAttention", 0) == 2, stats  # one per layer
    reference = BertForSequenceClassification.from_pretrained(
        tiny_checkpoint, attn_implementation="eager"
    ).eval()
    rng = np.random.default_rng(0)
    for batch, length in ((1, 5), (3, 17)):  # dynamic batch and sequence axes
        ids = rng.integers(1000, 20000, size=(batch, length)).astype(np.int64)
        mask = np.ones_like(ids)
        mask[1:, length // 2 :] = 0  # padded rows, as a length-bucketed batch has
        ids[mask == 0] = 0
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with torch.no_grad():
            expected = reference(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.numpy()
        for path, tolerance in ((files.fp32, 1e-4), (files.fused, 1e-3), (files.int8, 0.1)):
            got = OnnxBackend(path).predict(inputs)
            assert got.shape == (batch, 3)
            np.testing.assert_allclose(got, expected, atol=tolerance, err_msg=str(path))
    assert files.int8.stat().st_size < files.fp32.stat().st_size * 0.5


def _damaged_copy(source: Path, destination: Path) -> Path:
    """The shipped INT8 model with its quantisation scales scrambled: a quantisation gone wrong."""
    model = onnx.load(str(source))
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        if initializer.name.endswith("_scale") and initializer.data_type == onnx.TensorProto.FLOAT:
            values = numpy_helper.to_array(initializer)
            scrambled = values * rng.uniform(0.0, 3.0, size=values.shape).astype(values.dtype)
            initializer.CopyFrom(numpy_helper.from_array(scrambled.astype(values.dtype), initializer.name))
    onnx.save(model, str(destination))
    return destination


@pytest.mark.skipif(not DEFAULT_MODEL.exists(), reason="no shipped model yet")
def test_gate_refuses_a_damaged_quantised_model(tmp_path: Path) -> None:
    examples = load_jsonl(TEST_SET).examples
    tokenizer = SHIPPED_MODEL_DIR / "tokenizer.json"
    good = evaluate_examples(onnx_model(DEFAULT_MODEL, tokenizer, False), examples)
    damaged = evaluate_examples(
        onnx_model(_damaged_copy(DEFAULT_MODEL, tmp_path / "bad.onnx"), tokenizer, False), examples
    )
    assert quantisation_gate(good, good, max_f1_drop=0.5) == pytest.approx(0.0)
    with pytest.raises(QuantisationRejected, match="macro-F1 points"):
        quantisation_gate(good, damaged, max_f1_drop=0.5)


def test_shipped_model_loads_and_names_its_version() -> None:
    if not DEFAULT_MODEL.exists():
        pytest.fail("scorer_service/model/model.int8.onnx is missing: the package must ship its model")
    model = SentimentModel.load()
    assert model.info.version not in ("", "unversioned")


def test_mixed_precision_keeps_the_chosen_block_in_fp32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from training.export import export_all, most_sensitive_blocks, quantisable_blocks, quantise

    files, _ = export_all(tiny_checkpoint, tmp_path)
    blocks = quantisable_blocks(files.fused)
    assert sorted(blocks) == [
        f"layer{i}.{part}" for i in (0, 1) for part in ("attention", "attention_output", "ffn_in", "ffn_out")
    ]
    assert blocks["layer1.attention"] == ["Attention_1"]
    assert blocks["layer1.ffn_in"] == ["/bert/encoder/layer.1/intermediate/dense/MatMul"]
    assert blocks["layer1.ffn_out"] == ["/bert/encoder/layer.1/output/dense/MatMul"]
    mixed = quantise(files.fused, tmp_path / "mixed.onnx", keep_fp32=blocks["layer1.attention"])
    ops = {node.name: node.op_type for node in onnx.load(str(mixed)).graph.node}
    assert ops["Attention_1"] == "Attention"  # kept in fp32
    assert "QAttention" in ops.values()  # layer 0's attention quantised
    assert files.int8.stat().st_size < mixed.stat().st_size < files.fused.stat().st_size

    # The sweep ranks blocks by the score of the model with that block alone in fp32.
    def size_score(path: Path) -> float:
        return float(path.stat().st_size)  # a stand-in score: the biggest fp32 block ranks first

    kept, scores = most_sensitive_blocks(files.fused, tmp_path, size_score, count=2)
    assert set(scores) == set(blocks)
    assert kept == sorted(scores, key=lambda b: scores[b], reverse=True)[:2]


def test_temperature_fit_sharpens_an_underconfident_model_and_softens_an_overconfident_one() -> None:
    from training.export import fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=3000)
    true_logits = rng.normal(size=(3000, 3))
    true_logits[np.arange(3000), labels] += 2.0  # a model whose logits are calibrated as they are
    # Sample labels from the calibrated probabilities so T=1 is the truth for `true_logits`.
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    sampled = np.array([rng.choice(3, p=p) for p in probs])
    assert fit_temperature(true_logits, sampled) == pytest.approx(1.0, abs=0.15)
    assert fit_temperature(true_logits * 0.5, sampled) == pytest.approx(0.5, abs=0.1)  # under-confident
    assert fit_temperature(true_logits * 2.0, sampled) == pytest.approx(2.0, abs=0.3)  # over-confident


def test_temperature_and_bias_fit_recovers_a_prior_shift() -> None:
    from training.export import fit_temperature_and_bias

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=4000)
    true_logits = rng.normal(size=(4000, 3))
    true_logits[np.arange(4000), labels] += 2.0
    probs = np.exp(true_logits) / np.exp(true_logits).sum(axis=1, keepdims=True)
    sampled = np.array([rng.choice(3, p=p) for p in probs])
    # A model that under-rates "negative" by 1.5 logits (polite negativity read as neutral) and is
    # over-confident by 2x: the fit undoes both.
    skewed = (true_logits - np.array([1.5, 0.0, 0.0])) * 2.0
    temperature, bias = fit_temperature_and_bias(skewed, sampled)
    assert temperature == pytest.approx(2.0, abs=0.3)
    assert bias[0] == pytest.approx(1.5, abs=0.3) and bias[1] == 0.0 and abs(bias[2]) < 0.3


def test_folded_temperature_divides_the_exported_logits(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from scorer_service.backends.onnx import OnnxBackend
    from training.export import export_onnx

    plain = OnnxBackend(export_onnx(tiny_checkpoint, tmp_path / "plain.onnx"))
    cooled = OnnxBackend(export_onnx(tiny_checkpoint, tmp_path / "cooled.onnx", temperature=0.5))
    ids = np.array([[101, 2023, 2003, 2307, 102]], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    np.testing.assert_allclose(cooled.predict(inputs), plain.predict(inputs) * 2.0, rtol=1e-4, atol=1e-5)
    shifted = OnnxBackend(
        export_onnx(tiny_checkpoint, tmp_path / "shifted.onnx", temperature=0.5, bias=[1.0, 0.0, -0.5])
    )
    np.testing.assert_allclose(
        shifted.predict(inputs), plain.predict(inputs) * 2.0 + [1.0, 0.0, -0.5], rtol=1e-4, atol=1e-5
    )


def test_int8_weights_are_stored_as_asked(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from scorer_service.backends.onnx import OnnxBackend
    from training.export import export_all, quantise

    files, _ = export_all(tiny_checkpoint, tmp_path)

    def weight_types(path: Path) -> set[int]:  # of the dense layers (the embeddings are unsigned either way)
        graph = onnx.load(str(path)).graph
        quantised = [i for i in graph.initializer if i.name.endswith("_quantized") and len(i.dims) == 2]
        return {i.data_type for i in quantised if "embeddings" not in i.name}

    unsigned = quantise(files.fused, tmp_path / "u8.onnx", weights="u8")
    assert weight_types(files.int8) == {onnx.TensorProto.INT8}  # the default: signed, reduced range
    assert weight_types(unsigned) == {onnx.TensorProto.UINT8}
    ids = np.array([[101, 2023, 3976, 2003, 2092, 2058, 102]], dtype=np.int64)
    inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    reference = OnnxBackend(files.fp32).predict(inputs)
    np.testing.assert_allclose(OnnxBackend(unsigned).predict(inputs), reference, atol=0.1)
    with pytest.raises(ValueError, match="unknown INT8 weight storage"):
        quantise(files.fused, tmp_path / "x.onnx", weights="s4")


def test_an_export_keeps_the_blocks_it_is_told_to_in_fp32(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from training.ship import ShipConfig, ship

    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    (checkpoint / "training.json").write_text(json.dumps({"config": {"context": False}}))

    def config(destination: str, blocks: list[str]) -> ShipConfig:
        return ShipConfig(
            checkpoint,
            tmp_path / destination,
            tmp_path / f"{destination}-work",
            dev=str(TEST_SET),
            report_sets=[str(TEST_SET)],
            max_f1_drop=100,  # an untrained tiny model: the gate is not what this test is about
            calibrate=False,
            fp32_blocks=blocks,
            role_priors_on="sales:dev",
        )

    card = ship(config("ship", ["layer0.ffn_out", "layer1.ffn_out"]))
    # The role priors are fitted on the shipped INT8 file's scores and served from its card.
    served = read_model_info(tmp_path / "ship")
    assert card["role_priors"]["fitted_on"] == "sales:dev"
    assert set(served.role_priors) == {"agent", "customer"}
    assert served.role_priors["agent"] == tuple(card["role_priors"]["shift"]["agent"])
    assert card["quantisation"]["fp32_blocks"] == ["layer0.ffn_out", "layer1.ffn_out"]
    assert "dev_macro_f1_with_block_kept_fp32" not in card["quantisation"]  # named, not swept
    ops = {
        node.name: node.op_type for node in onnx.load(str(tmp_path / "ship" / "model.int8.onnx")).graph.node
    }
    for layer in (0, 1):
        assert ops[f"/bert/encoder/layer.{layer}/output/dense/MatMul"] == "MatMul"  # fp32
        assert (
            f"/bert/encoder/layer.{layer}/intermediate/dense/MatMul_quant" in ops
        )  # its neighbour quantised
    with pytest.raises(ValueError, match="no block layer7.ffn_out"):
        ship(config("bad", ["layer7.ffn_out"]))


def test_an_export_smooths_the_feed_forward_outputs_when_asked(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from training.ship import ShipConfig, ship

    checkpoint = shutil.copytree(tiny_checkpoint, tmp_path / "checkpoint")
    (checkpoint / "training.json").write_text(json.dumps({"config": {"context": False}}))
    card = ship(
        ShipConfig(
            checkpoint,
            tmp_path / "ship",
            tmp_path / "work",
            dev=str(TEST_SET),
            report_sets=[str(TEST_SET)],
            max_f1_drop=100,  # an untrained tiny model: the gate is not what this test is about
            calibrate=False,
            smooth_ffn_out=0.9,
        )
    )
    smoothing = card["quantisation"]["smooth_quant"]
    lines = len(load_jsonl(TEST_SET).examples)
    assert smoothing == {
        "alpha": 0.9,
        "projections": 2,
        "calibrated_on": str(TEST_SET),
        "calibration_passes": lines,
    }
    assert "fp32_blocks" not in card["quantisation"]
    ops = {
        node.name: node.op_type for node in onnx.load(str(tmp_path / "ship" / "model.int8.onnx")).graph.node
    }
    for layer in (0, 1):  # every feed-forward output INT8, behind its smoothing Mul
        assert ops[f"/bert/encoder/layer.{layer}/output/dense/MatMul/Smooth"] == "Mul"
        assert f"/bert/encoder/layer.{layer}/output/dense/MatMul_quant" in ops
