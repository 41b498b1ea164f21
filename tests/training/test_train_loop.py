"""The training loop end to end on a tiny model: it learns, saves its best model, and resumes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from training.train import TrainConfig, Trainer, default_base_model  # noqa: E402

pytestmark = pytest.mark.slow  # trains (tiny models, but seconds each)

TEST_SET = Path(__file__).parents[1] / "data" / "sales_sentiment.jsonl"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    path = tmp_path_factory.mktemp("tiny_base")
    transformers.BertModel(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy2(Path(default_base_model()) / name, path / name)
    return path


def _config(base: Path, output: Path, epochs: int) -> TrainConfig:
    return TrainConfig(
        output=str(output),
        train=[str(TEST_SET)],
        dev=[str(TEST_SET)],
        base_model=str(base),
        epochs=epochs,
        batch_size=8,
        learning_rate=5e-3,
        patience=50,
        evals_per_epoch=1,
        checkpoint_every=1000,
        threads=1,
    )


def _write_teacher(path: Path, examples: list[Any], sign: float, context: bool) -> str:
    """A soft-label file whose logits point each example at its own label (sign 1) or away from it (-1)."""
    from training.soft_labels import soft_key

    rows = [
        {"key": soft_key(e, context), "logits": [sign * 4.0 * (k == e.label) for k in range(3)]}
        for e in examples
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _loss(made: Trainer, index: np.ndarray) -> float:
    with torch.no_grad():
        return float(made.loss_of(made.model, index))


def test_learns_saves_best_and_resumes(tiny_base: Path, tmp_path: Path) -> None:
    first = Trainer(_config(tiny_base, tmp_path, epochs=20)).run()
    best = tmp_path / "best"
    assert (best / "model.safetensors").exists() and (best / "tokenizer.json").exists()
    meta = json.loads((best / "training.json").read_text())
    assert meta["learning_rate"] == 5e-3 and len(meta["class_weights"]) == 3
    history = first["history"]
    assert len(history) == 20
    # 30 clear-cut sentences: a tiny model fitted on them must beat chance (1/3) by a wide margin.
    assert first["best_dev_macro_f1"] > 0.6

    # Resume: the same run asked for 24 epochs continues from its checkpoint at epoch 20.
    resumed = Trainer(_config(tiny_base, tmp_path, epochs=24)).run(resume=True)
    assert [h["step"] for h in resumed["history"][:20]] == [h["step"] for h in history]
    assert len(resumed["history"]) == 24
    assert resumed["history"][-1]["step"] == history[-1]["step"] * 24 // 20


def test_a_step_budget_ends_the_run_evaluated_and_saved(tiny_base: Path, tmp_path: Path) -> None:
    config = _config(tiny_base, tmp_path, epochs=20)
    config.max_steps = 5  # four batches an epoch: the budget ends inside the second
    summary = Trainer(config).run()
    assert summary["steps"] == 5 and summary["history"][-1]["step"] == 5  # evaluated at the last step
    assert [h["step"] for h in summary["history"]] == [4, 5]
    assert (tmp_path / "best" / "model.safetensors").exists()


def test_distils_a_shallower_student_from_a_teacher(tiny_base: Path, tmp_path: Path) -> None:
    teacher_run = Trainer(_config(tiny_base, tmp_path / "teacher", epochs=20)).run()
    config = _config(tiny_base, tmp_path / "student", epochs=20)
    config.teacher, config.layers = str(tmp_path / "teacher" / "best"), 1
    trainer = Trainer(config)
    assert trainer.teacher is not None and len(trainer.model.base_model.encoder.layer) == 1
    student_run = trainer.run()
    saved = json.loads((tmp_path / "student" / "best" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 1
    # A one-layer student of a fitted teacher still learns the 30 sentences well past chance.
    assert student_run["best_dev_macro_f1"] > 0.6, (student_run, teacher_run["best_dev_macro_f1"])


def test_distils_from_soft_labels_written_by_a_teacher(tiny_base: Path, tmp_path: Path) -> None:
    from training.data import load_sources
    from training.soft_labels import read_soft_labels, write_soft_labels

    Trainer(_config(tiny_base, tmp_path / "teacher", epochs=20)).run()
    soft = tmp_path / "soft.jsonl"
    examples = load_sources([str(TEST_SET)]).examples
    written = write_soft_labels(str(tmp_path / "teacher" / "best"), examples, soft, threads=1)
    assert written == len({e.text for e in examples})
    table = read_soft_labels(soft)
    # The teacher fitted the 30 sentences (dev macro-F1 > 0.6): its logits put most in their own class.
    agree = sum(int(table[e.text].argmax() == e.label) for e in examples)
    assert agree >= 0.6 * len(examples)

    config = _config(tiny_base, tmp_path / "student", epochs=20)
    config.soft_labels, config.layers = str(soft), 1
    trainer = Trainer(config)
    assert trainer.teacher is None and trainer.soft_labels is not None
    assert trainer.run()["best_dev_macro_f1"] > 0.6

    config.train = [str(TEST_SET), "sales:dev"]  # texts the teacher never saw: refused, not guessed
    with pytest.raises(ValueError, match="no logits for"):
        Trainer(config)


def test_the_served_model_writes_soft_labels_that_match_what_it_serves(tmp_path: Path) -> None:
    """A served model as the teacher (what a new student must not forget): its soft labels are the
    log-probabilities the scorer answers, so their softmax is the scorer's own probabilities."""
    from callsense.tokenization import SHIPPED_MODEL_DIR
    from scorer_service.inference import SentimentInput, SentimentModel
    from training.data import load_sources
    from training.soft_labels import read_soft_labels, write_soft_labels

    examples = load_sources([str(TEST_SET)]).examples
    soft = tmp_path / "served.jsonl"
    written = write_soft_labels(str(SHIPPED_MODEL_DIR), examples, soft, threads=1)
    assert written == len({e.text for e in examples})
    table = read_soft_labels(soft)
    served = SentimentModel.load(threads=1).predict([SentimentInput(e.text) for e in examples[:5]])
    for example, prediction in zip(examples[:5], served, strict=True):
        assert not isinstance(prediction, Exception)
        probs = np.exp(table[example.text]) / np.exp(table[example.text]).sum()
        expected = [prediction.p_negative, prediction.p_neutral, prediction.p_positive]
        assert np.allclose(probs, expected, atol=1e-4), (example.text, probs, expected)
    # A training text over the served model's 128 tokens is cut to its first words that fit, as training
    # truncates it (the scorer itself refuses it: the chopper never sends one).
    long = replace(examples[0], text=" ".join(["the rollout went well and the team is happy"] * 30))
    assert write_soft_labels(str(SHIPPED_MODEL_DIR), [long], soft, threads=1) == 1
    assert read_soft_labels(soft)[long.text].shape == (3,)


def test_context_is_encoded_for_training_as_the_scorer_encodes_it() -> None:
    """A model trained with --context must see at training what the scorer feeds it: no empty first
    segment when there is no previous line, the context cut from its start, a long line cut not refused."""
    from callsense.tokenization import SentimentTokenizer
    from training.data import LabelledUtterance
    from training.train import encode

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_base_model())
    served = SentimentTokenizer()
    examples = [
        LabelledUtterance(
            "Hm. That's quite a bit more than we'd pencilled in.", 0, "t", previous_text="It's $40k."
        ),
        LabelledUtterance("Morning! Yes, good time, go ahead.", 1, "t"),  # the call's first line: no context
        LabelledUtterance("Send it over.", 2, "t", previous_text=" ".join(["pricing"] * 300)),  # context cut
    ]
    batch = encode(tokenizer, examples, True, 128)
    for row, example in enumerate(examples):
        expected = served.encode(example.text, example.previous_text)
        n = int(batch["attention_mask"][row].sum())
        assert n == len(expected) <= 128
        assert batch["input_ids"][row, :n].tolist() == expected.input_ids.tolist()
        assert batch["token_type_ids"][row, :n].tolist() == expected.token_type_ids.tolist()
    long_line = LabelledUtterance(" ".join(["fine"] * 300), 1, "t", previous_text="And the price?")
    assert encode(tokenizer, [long_line], True, 128)["input_ids"].shape == (1, 128)  # cut, not an error


def test_context_encoding_takes_a_tokenizer_without_token_types() -> None:
    """MPNet and DistilBERT tokenizers give no token types and their models take none."""
    from training.data import LabelledUtterance
    from training.train import encode

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_base_model())
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    examples = [
        LabelledUtterance("That's more than we pencilled in.", 0, "t", previous_text="It's $40k a year."),
        LabelledUtterance("Morning!", 1, "t"),
    ]
    batch = encode(tokenizer, examples, True, 128)
    assert set(batch) == {"input_ids", "attention_mask"} and batch["input_ids"].shape[0] == 2


def test_a_line_given_a_swapped_context_learns_from_its_label_not_the_teacher(
    tiny_base: Path, tmp_path: Path
) -> None:
    """The teacher's logits were written for each line with its own previous line: with another line
    before it they are no target, so the loss of a swapped line does not move with them; a short reaction
    keeps its context and its teacher."""
    from training.context_swap import MIN_WORDS
    from training.data import load_sources

    reactions = [{"text": "Okay.", "label": "neutral"}, {"text": "Sounds good.", "label": "positive"}]
    rows = [json.loads(line) for line in TEST_SET.read_text().splitlines()]
    lines: list[dict[str, str]] = []
    for start in range(0, len(rows), 10):  # three calls of ten lines, two short reactions in each
        call = rows[start : start + 5] + reactions + rows[start + 5 : start + 10]
        lines += [{**row, "previous_text": call[k - 1]["text"] if k else ""} for k, row in enumerate(call)]
    calls = tmp_path / "calls.jsonl"
    calls.write_text("".join(json.dumps(line) + "\n" for line in lines))
    examples = load_sources([str(calls)]).examples

    def trainer(swap: float, teacher_sign: float) -> Trainer:
        soft = _write_teacher(tmp_path / f"soft{teacher_sign}.jsonl", examples, teacher_sign, context=True)
        config = _config(tiny_base, tmp_path / "run", epochs=1)
        config.train, config.context, config.context_swap, config.soft_labels = (
            [str(calls)],
            True,
            swap,
            soft,
        )
        made = Trainer(config)
        made.model.eval()
        return made

    with_context = np.array([i for i, e in enumerate(examples) if e.previous_text])
    short = np.array([i for i in with_context if len(examples[i].text.split()) < MIN_WORDS])
    assert len(with_context) == len(examples) - 3 and len(short) == 6
    plain = trainer(0.0, 1.0), trainer(0.0, -1.0)
    assert _loss(plain[0], with_context) != pytest.approx(_loss(plain[1], with_context))  # the teacher counts
    swapping = trainer(1.0, 1.0), trainer(1.0, -1.0)
    # Every long line is swapped: only the short reactions' teacher moves the loss, by what it moves
    # theirs alone (the loss is a mean over the rows).
    moved = _loss(swapping[0], with_context) - _loss(swapping[1], with_context)
    moved_short = _loss(swapping[0], short) - _loss(swapping[1], short)
    assert moved != pytest.approx(0.0, abs=1e-6)
    assert moved * len(with_context) == pytest.approx(moved_short * len(short), rel=1e-3)
    # Which lines are swapped is fixed by the batch (a resumed run swaps the same), not by a running state.
    half = trainer(0.5, 1.0)
    assert _loss(half, with_context) == _loss(half, with_context)
    for wrong, message in (({"context": False}, "needs --context"), ({"context_swap": 1.5}, "0 to 1")):
        config = _config(tiny_base, tmp_path / "refused", epochs=1)
        config.context, config.context_swap = True, 0.3
        for name, value in wrong.items():
            setattr(config, name, value)
        with pytest.raises(ValueError, match=message):
            Trainer(config)


def test_roles_are_encoded_for_training_as_the_scorer_encodes_them() -> None:
    """With --roles, a line whose speaker is known reads "customer: ..." at training exactly as the scorer
    feeds a model whose card says uses_roles; a line with no speaker (the general corpora) is unmarked."""
    from callsense.tokenization import TextRejected
    from scorer_service.inference import ModelInfo, SentimentInput, SentimentModel
    from training.data import LabelledUtterance
    from training.train import encode

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_base_model())
    served = SentimentModel.load(threads=1)
    roles_model = SentimentModel(
        served.backend, served.tokenizer, ModelInfo("t", uses_context=True, uses_roles=True)
    )
    examples = [
        LabelledUtterance(
            "Still. Get it under five and we'll talk.", 0, "t", previous_text="It's 5.4.", role="customer"
        ),
        LabelledUtterance(
            "Happy to walk you through it.", 1, "t", previous_text="How does it work?", role="agent"
        ),
        LabelledUtterance("I loved that episode.", 2, "t", previous_text="Did you watch it?"),
    ]
    batch = encode(tokenizer, examples, True, 128, roles=True)
    for row, example in enumerate(examples):
        expected = roles_model.encode(SentimentInput(example.text, example.previous_text, example.role))
        n = int(batch["attention_mask"][row].sum())
        assert batch["input_ids"][row, :n].tolist() == expected.input_ids.tolist()
    marked = tokenizer.decode(batch["input_ids"][0]).split("[SEP]")[1]
    assert marked.strip().startswith("customer :")
    unmarked = encode(tokenizer, examples, True, 128, roles=False)
    n = int(batch["attention_mask"][2].sum())
    assert unmarked["input_ids"][2, :n].tolist() == batch["input_ids"][2, :n].tolist()  # no role: as before
    # a line that fits only without its marker is scored unmarked, not refused
    full = " ".join(["fine"] * 126)
    assert len(roles_model.encode(SentimentInput(full, role="customer"))) == 128
    with pytest.raises(TextRejected, match="empty text"):  # a marker is no words
        roles_model.encode(SentimentInput("   ", role="customer"))


def test_partial_soft_labels_train_uncovered_lines_on_their_labels(tiny_base: Path, tmp_path: Path) -> None:
    """--soft-labels-partial: the general lines keep the served model's soft labels, the sales lines
    (which it would only teach its own mistakes) train on their gold labels; without the flag a missing
    line is refused. A line without a soft label does not move with any teacher."""
    from training.data import load_sources

    examples = load_sources([str(TEST_SET)]).examples
    covered = examples[: len(examples) // 2]

    def trainer(sign: float, partial: bool) -> Trainer:
        config = _config(tiny_base, tmp_path / "run", epochs=1)
        config.soft_labels = _write_teacher(tmp_path / f"soft{sign}.jsonl", covered, sign, context=False)
        config.soft_labels_partial = partial
        made = Trainer(config)
        made.model.eval()
        return made

    with pytest.raises(ValueError, match="no logits for"):
        trainer(1.0, False)
    up, down = trainer(1.0, True), trainer(-1.0, True)

    uncovered = np.arange(len(covered), len(examples))
    assert _loss(up, uncovered) == pytest.approx(_loss(down, uncovered))
    assert _loss(up, np.arange(len(covered))) != pytest.approx(_loss(down, np.arange(len(covered))))
