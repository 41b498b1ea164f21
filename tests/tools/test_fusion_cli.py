"""``callsense train-fusion`` and ``evaluate-fusion`` say what is missing instead of failing obscurely."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.cli import main


def test_absent_corpus_or_head_exit_2_saying_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-data"
    assert main(["evaluate-fusion", "--shared-data", str(missing), "--fusion", str(tmp_path / "x.json")]) == 2
    assert "x.json" in capsys.readouterr().err
    head = tmp_path / "fusion.json"
    from tests.support.tone import toy_head

    toy_head().save(head)
    assert main(["evaluate-fusion", "--shared-data", str(missing), "--fusion", str(head)]) == 2
    assert "RAVDESS" in capsys.readouterr().err
    assert main(["train-fusion", "--shared-data", str(missing), "--output", str(tmp_path / "out.json")]) == 2
    assert "RAVDESS" in capsys.readouterr().err and not (tmp_path / "out.json").exists()
