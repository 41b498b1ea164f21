"""Weight averages of runs of one base model: the greedy soup's mean and the fixed weighted average."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from training.soup import average_state_dicts, weighted_average  # noqa: E402
from training.train import default_base_model  # noqa: E402


def test_weights_are_normalised_and_integer_buffers_come_from_the_first() -> None:
    first = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([1, 2])}
    second = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([7, 8])}
    mixed = average_state_dicts([first, second], [0.9, 2.7])  # 1:3 once normalised
    torch.testing.assert_close(mixed["w"], torch.tensor([2.5, 5.0]))
    assert mixed["ids"].tolist() == [1, 2]
    torch.testing.assert_close(average_state_dicts([first, second])["w"], torch.tensor([2.0, 4.0]))


@pytest.mark.parametrize("weights", [[1.0], [1.0, -0.5], [0.0, 0.0], [float("nan"), 1.0]])
def test_weights_that_do_not_fit_are_refused(weights: list[float]) -> None:
    states = [{"w": torch.zeros(1)}, {"w": torch.ones(1)}]
    with pytest.raises(ValueError):
        average_state_dicts(states, weights)


def _tiny_run(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=3,
    )
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    shutil.copy2(Path(default_base_model()) / "tokenizer.json", path / "tokenizer.json")
    (path / "training.json").write_text(json.dumps({"config": {"roles": True}, "seed": seed}))
    return path


def test_a_weighted_average_is_saved_with_its_recipe(tmp_path: Path) -> None:
    new, old = _tiny_run(tmp_path / "new", 1), _tiny_run(tmp_path / "old", 2)
    weighted_average([new, old], [0.45, 0.55], tmp_path / "soup")
    load = transformers.BertForSequenceClassification.from_pretrained
    expected = 0.45 * load(new).classifier.weight + 0.55 * load(old).classifier.weight
    torch.testing.assert_close(load(tmp_path / "soup").classifier.weight, expected)
    training = json.loads((tmp_path / "soup" / "training.json").read_text())
    assert training["config"] == {"roles": True}  # the first run's recipe: how it reads its input
    assert training["soup"] == {"members": [str(new), str(old)], "weights": [0.45, 0.55]}
    assert (tmp_path / "soup" / "tokenizer.json").is_file()


def test_the_command_refuses_weights_that_do_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.cli import main as callsense

    new = _tiny_run(tmp_path / "new", 1)
    assert callsense(["soup", str(new), str(new), "--weights", "1", "--output", str(tmp_path / "s")]) == 2
    assert "1 weights for 2 checkpoints" in capsys.readouterr().err and not (tmp_path / "s").exists()
    assert (
        callsense(["soup", str(new), str(new), "--weights", "3", "1", "--output", str(tmp_path / "s")]) == 0
    )
    assert json.loads((tmp_path / "s" / "training.json").read_text())["soup"]["weights"] == [0.75, 0.25]
