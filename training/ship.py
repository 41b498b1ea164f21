"""Export, quantise, gate and ship a fine-tuned checkpoint into the package's model folder.

The steps a monthly retrain runs after `callsense train`: export to ONNX, fuse, quantise to INT8,
refuse the INT8 model if it loses more than the allowed macro-F1 on dev, then copy the INT8 model and
its tokenizer next to a model card that lists data, hyper-parameters, metrics and file hashes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from callsense.tokenization import TextRejected, pad_batch
from scorer_service.inference import SentimentInput, parse_role_priors
from training.data import LabelledUtterance, load_source
from training.evaluate import (
    evaluate_examples,
    evaluate_sets,
    file_entry,
    onnx_model,
    predict_examples,
    version_stamp,
    write_model_card,
)
from training.export import (
    ExportedFiles,
    copy_tokenizer,
    export_all,
    export_onnx,
    fit_temperature,
    fit_temperature_and_bias,
    most_sensitive_blocks,
    quantisable_blocks,
    quantisation_gate,
    quantise,
)
from training.metrics import expected_calibration_error
from training.role_priors import fit_role_priors
from training.smooth_quant import input_ranges, smooth


@dataclass
class ShipConfig:
    checkpoint: Path
    destination: Path
    workdir: Path
    dev: str = "meld:dev"
    report_sets: list[str] = field(default_factory=lambda: ["meld:dev", "dailydialog:valid"])
    max_f1_drop: float = 0.5
    calibrate: bool = True  # fit a temperature on `calibrate_on` and fold it into the classifier
    calibrate_on: str = ""  # the set to calibrate on (default: dev)
    class_bias: bool = False  # also fit per-class offsets (a prior shift) on that set
    keep_fp32_blocks: int = 0  # keep this many of the most quantisation-sensitive blocks in fp32
    fp32_blocks: list[str] = field(default_factory=list)  # or these, by name (export.quantisable_blocks)
    int8_weights: str = "s8-reduced"  # how the INT8 weights are stored (training/export.py INT8_WEIGHTS)
    # SmoothQuant's alpha for every layer's feed-forward output projection (training/smooth_quant.py),
    # measured on the calibration set; 0: off
    smooth_ffn_out: float = 0.0
    role_priors_on: str = ""  # fit per speaker role priors on this set (training/role_priors.py); "": none
    notes: str = ""


_WEIGHT_WORDS = {"s8-reduced": "reduced range", "u8": "unsigned 8-bit weights"}


def _calibration_set(config: ShipConfig, dev: list[LabelledUtterance]) -> tuple[str, list[LabelledUtterance]]:
    """The set the temperature is fitted on and SmoothQuant measures on (default: dev), and its lines."""
    name = config.calibrate_on or config.dev
    return name, dev if name == config.dev else load_source(name).examples


def _smooth_and_requantise(
    files: ExportedFiles,
    config: ShipConfig,
    tokenizer: Path,
    uses_context: bool,
    uses_roles: bool,
    calibration: tuple[str, list[LabelledUtterance]],
) -> tuple[ExportedFiles, dict[str, Any]]:
    """The export with every feed-forward output projection smoothed on the calibration set's text, as
    the scorer encodes it (training/smooth_quant.py), and quantised again."""
    calibration_set, examples = calibration
    encoder = onnx_model(files.fused, tokenizer, uses_context, uses_roles=uses_roles)
    feeds = []
    for example in examples:
        try:
            feeds.append(
                pad_batch([encoder.encode(SentimentInput(example.text, example.previous_text, example.role))])
            )
        except TextRejected:  # over-long lines: the chopper would have cut them; they measure nothing new
            continue
    projections = [
        name
        for block, nodes in quantisable_blocks(files.fused).items()
        if block.endswith(".ffn_out")
        for name in nodes
    ]
    ranges = input_ranges(files.fused, projections, feeds)
    smoothed = smooth(files.fused, config.workdir / "model.smoothed.onnx", ranges, config.smooth_ffn_out)
    quantise(smoothed, files.int8, weights=config.int8_weights)
    summary = {
        "alpha": config.smooth_ffn_out,
        "projections": len(projections),
        "calibrated_on": calibration_set,
        "calibration_passes": len(feeds),
    }
    return ExportedFiles(files.fp32, smoothed, files.int8), summary


def ship(config: ShipConfig) -> dict[str, Any]:
    if not 0.0 <= config.smooth_ffn_out < 1.0:
        raise ValueError(f"SmoothQuant's alpha is {config.smooth_ffn_out}: between 0 (off) and 1, 1 excluded")
    if config.fp32_blocks and config.keep_fp32_blocks > 0:
        raise ValueError("name the blocks to keep in fp32 or let the sweep choose them, not both")
    training = json.loads((config.checkpoint / "training.json").read_text())
    uses_context = bool(training["config"].get("context", False))
    uses_roles = bool(training["config"].get("roles", False))
    tokenizer = config.checkpoint / "tokenizer.json"
    dev = load_source(config.dev).examples
    # Read once, for the temperature and SmoothQuant alike, and only where one of them runs.
    uses_calibration_set = config.calibrate or config.smooth_ffn_out > 0
    calibration_lines = _calibration_set(config, dev) if uses_calibration_set else (config.dev, dev)
    calibration: dict[str, Any] = {"temperature": 1.0}
    temperature, bias = 1.0, None
    if config.calibrate:
        # Fitted on the plain fp32 export; fusion and quantisation run once, after.
        calibration_set, held = calibration_lines
        config.workdir.mkdir(parents=True, exist_ok=True)
        uncalibrated = export_onnx(config.checkpoint, config.workdir / "model.uncalibrated.onnx")
        probs = predict_examples(
            onnx_model(uncalibrated, tokenizer, uses_context, uses_roles=uses_roles), held
        )
        labels = [e.label for e in held]
        log_probs = np.log(np.clip(probs, 1e-12, 1.0))
        if config.class_bias:
            temperature, bias = fit_temperature_and_bias(log_probs, labels)
        else:
            temperature = fit_temperature(log_probs, labels)
        calibration = {
            "temperature": temperature,
            "class_bias": bias,
            "fitted_on": calibration_set,
            "ece_before": expected_calibration_error(np.asarray(labels), probs),
        }
    files, fusion_stats = export_all(
        config.checkpoint, config.workdir, temperature, bias, config.int8_weights
    )
    fp32_report = evaluate_examples(
        onnx_model(files.fp32, tokenizer, uses_context, uses_roles=uses_roles), dev
    )
    smoothing: dict[str, Any] = {}
    if config.smooth_ffn_out > 0:  # the fused graph smoothed, then quantised again (and below if mixed)
        files, smoothing = _smooth_and_requantise(
            files, config, tokenizer, uses_context, uses_roles, calibration_lines
        )
    mixed: dict[str, Any] = {}
    kept_any = bool(config.fp32_blocks) or config.keep_fp32_blocks > 0
    blocks = quantisable_blocks(files.fused) if kept_any else {}
    if config.fp32_blocks:
        unknown = [name for name in config.fp32_blocks if name not in blocks]
        if unknown:
            raise ValueError(f"no block {', '.join(unknown)} in this graph: one of {', '.join(blocks)}")
        mixed = {"fp32_blocks": list(config.fp32_blocks)}
    elif config.keep_fp32_blocks > 0:

        def dev_macro_f1(path: Path) -> float:
            return float(
                evaluate_examples(onnx_model(path, tokenizer, uses_context, uses_roles=uses_roles), dev)[
                    "macro_f1"
                ]
            )

        kept, sensitivity = most_sensitive_blocks(
            files.fused, config.workdir, dev_macro_f1, config.keep_fp32_blocks, config.int8_weights
        )
        mixed = {"fp32_blocks": kept, "dev_macro_f1_with_block_kept_fp32": sensitivity}
    if mixed:  # export_all quantised every block: again, with the kept ones in fp32
        kept_nodes = [name for block in mixed["fp32_blocks"] for name in blocks[block]]
        quantise(files.fused, files.int8, keep_fp32=kept_nodes, weights=config.int8_weights)
    int8_model = onnx_model(files.int8, tokenizer, uses_context, uses_roles=uses_roles)
    int8_report = evaluate_examples(int8_model, dev)
    drop = quantisation_gate(fp32_report, int8_report, config.max_f1_drop)  # raises when refused
    role_priors: dict[str, Any] = {}
    if config.role_priors_on:  # fitted on the INT8 model's own scores, after calibration: what serves
        held_out = load_source(config.role_priors_on).examples
        role_priors = fit_role_priors(int8_model, held_out, config.role_priors_on)
        int8_model = onnx_model(
            files.int8,
            tokenizer,
            uses_context,
            role_priors=parse_role_priors(role_priors["shift"]),
            uses_roles=uses_roles,
        )
    config.destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(files.int8, config.destination / "model.int8.onnx")
    copy_tokenizer(config.checkpoint, config.destination)
    weight_words = _WEIGHT_WORDS[config.int8_weights]
    card = {
        "version": version_stamp(),
        "description": (
            "Three-way sentiment (negative / neutral / positive) of conversational utterances, "
            "a fine-tuned transformer encoder exported to ONNX and quantised to INT8."
        ),
        "uses_context": uses_context,
        "uses_roles": uses_roles,
        "max_tokens": 128,
        "labels": ["negative", "neutral", "positive"],
        "score": "p_positive + 0.5 * p_neutral",
        "training": training,
        "metrics": evaluate_sets(int8_model, config.report_sets),
        "calibration": calibration,
        **({"role_priors": role_priors} if role_priors else {}),
        "quantisation": {
            "method": f"dynamic INT8, per-channel, {weight_words}, after ONNX Runtime BERT fusions",
            "weights": config.int8_weights,
            "dev_set": config.dev,
            "fp32_macro_f1": fp32_report["macro_f1"],
            "int8_macro_f1": int8_report["macro_f1"],
            "macro_f1_drop_points": drop,
            "max_allowed_drop_points": config.max_f1_drop,
            **mixed,
            **({"smooth_quant": smoothing} if smoothing else {}),
            "fused_operators": fusion_stats,
        },
        "files": {
            name: file_entry(config.destination / name) for name in ("model.int8.onnx", "tokenizer.json")
        },
        "notes": config.notes,
    }
    write_model_card(config.destination, card)
    return card
