"""`callsense models` on a registry of its own, with the shipped model and a copy of it as another version:
what each verb prints, and the exit code and message of each refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.model_versions import copy_as_version, shipped_version
from tools.cli import main

V2 = "2099.01.01-test"


@pytest.fixture
def models(tmp_path: Path) -> list[str]:
    """``callsense models --registry <tmp>``."""
    return ["models", "--registry", str(tmp_path / "registry")]


def test_add_promote_show_rollback(
    models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = shipped_version()
    assert main([*models, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["current"], v["shipped"]) for v in listed] == [(shipped, True, True)]
    assert listed[0]["macro_f1"]["meld:dev"] > 0.6  # the card's metrics

    assert main([*models, "add", str(copy_as_version(tmp_path / "v2", V2))]) == 0
    out = capsys.readouterr()
    assert out.out == f"{V2}\n" and f"callsense models promote {V2}" in out.err
    assert main([*models, "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in lines] == [["*", shipped], [V2, "added"]]

    assert main([*models, "promote", V2]) == 0
    out = capsys.readouterr()
    assert out.out == f"{V2}\n" and f"{V2} is current (was {shipped})" in out.err
    assert main([*models, "show", V2, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["current"] and shown["directory"] == str(tmp_path / "registry" / "versions" / V2)
    card = json.loads((tmp_path / "v2" / "model_card.json").read_text())
    for name in ("model.int8.onnx", "tokenizer.json"):
        assert shown["files"][name] == card["files"][name]
    assert shown["metrics"] == card["metrics"]
    assert [(p["action"], p["version"], p["replaced"]) for p in shown["promotions"]] == [
        ("promote", V2, shipped)
    ]
    assert main([*models, "show", V2]) == 0
    text = capsys.readouterr().out
    assert f"version   {V2}  (current)" in text and card["files"]["model.int8.onnx"]["sha256"] in text

    assert main([*models, "rollback"]) == 0
    out = capsys.readouterr()
    assert out.out == f"{shipped}\n" and f"rolled back: {shipped} is current (was {V2})" in out.err
    assert main([*models, "rollback"]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err


def test_refusals_exit_2_saying_what_is_wrong(
    models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped_version()
    assert main([*models, "promote", "1999.nope"]) == 2
    assert "no model version '1999.nope'" in capsys.readouterr().err
    assert main([*models, "show", "1999.nope"]) == 2
    assert "no model version" in capsys.readouterr().err

    tampered = copy_as_version(tmp_path / "tampered", V2)
    with (tampered / "tokenizer.json").open("a") as out:
        out.write(" ")
    assert main([*models, "add", str(tampered)]) == 2
    assert "tokenizer.json has sha256" in capsys.readouterr().err
    assert main([*models, "show", V2]) == 2  # nothing of it was registered

    (tampered / "model_card.json").unlink()
    assert main([*models, "add", str(tampered)]) == 2
    assert "lacks model_card.json" in capsys.readouterr().err

    assert main([*models, "add", str(copy_as_version(tmp_path / "v2", V2))]) == 0
    capsys.readouterr()
    other = copy_as_version(tmp_path / "other", V2)
    (other / "tokenizer.json").write_text("{}")
    card = json.loads((other / "model_card.json").read_text())
    card["files"].pop("tokenizer.json")
    (other / "model_card.json").write_text(json.dumps(card))
    assert main([*models, "add", str(other)]) == 2
    assert "declares no sha256 for tokenizer.json" in capsys.readouterr().err


def test_the_registry_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = shipped_version()
    monkeypatch.setenv("CALLSENSE_MODEL_REGISTRY", str(tmp_path / "from-env"))
    assert main(["models", "add", str(copy_as_version(tmp_path / "v2", V2))]) == 0
    assert main(["models", "promote", V2]) == 0
    assert json.loads((tmp_path / "from-env" / "current.json").read_text())["current"] == V2
    assert sorted(p.name for p in (tmp_path / "from-env" / "versions").iterdir()) == sorted([shipped, V2])
    capsys.readouterr()


def test_add_keeps_a_checkpoint_and_show_lists_it(
    models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped_version()
    best = tmp_path / "best"  # what `callsense train` saves: config, weights, tokenizer, training.json
    best.mkdir()
    for name, text in (("config.json", "{}"), ("model.safetensors", "weights"), ("training.json", "{}")):
        (best / name).write_text(text)
    assert main([*models, "add", str(copy_as_version(tmp_path / "v2", V2)), "--checkpoint", str(best)]) == 0
    capsys.readouterr()
    assert main([*models, "show", V2, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert sorted(shown["checkpoint"]) == ["config.json", "model.safetensors", "training.json"]
    assert main([*models, "show", V2]) == 0
    assert "fine-tuned further by `callsense retrain`" in capsys.readouterr().out
    assert main([*models, "add", str(tmp_path / "v2"), "--checkpoint", str(tmp_path / "v2")]) == 2
    assert "not a Hugging Face checkpoint" in capsys.readouterr().err
