"""WER as the field measures it (tools/asr_eval.py) and `callsense evaluate-asr`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.asr_eval import corpus_wer, errors_after, reference_words, word_errors
from tools.cli import main


def test_numbers_and_spellings_agree_through_whispers_normaliser() -> None:
    assert word_errors("In fourteen sixty-five they began", "In 1465, they began.") == (0, 4)
    assert word_errors("Mr. Smith's colour", "Mister Smith's color") == (0, 4)  # smith is colour
    assert word_errors("we would need a discount", "we need the discount") == (2, 5)


def test_a_human_transcripts_parentheses_keep_their_words() -> None:
    # Whisper's normaliser drops "(laughs)"-style asides; in a reference they were said.
    ref = "the first Bible actually dated (which also was printed at Maintz)"
    assert reference_words(ref)[-5:] == ["also", "was", "printed", "at", "maintz"]
    assert word_errors(ref, "the first Bible actually dated, which also was printed at mains") == (1, 11)


def test_errors_after_an_opening_leave_the_openings_own_mistakes_to_it() -> None:
    ref = "And so my fellow Americans, ask not what your country can do for you"
    heard = "And so am I fell in America. Ask not. What your country can do for you."
    assert word_errors(ref, heard)[0] == 5
    assert errors_after(ref, heard, 5) == 0
    assert errors_after(ref, "And so am I fell in America. Ask not what your country can do", 5) == 2
    assert errors_after(ref, "ask not what your country can do for you", 5) == 0  # the opening unheard
    assert errors_after(ref, heard, 0) == 5  # nothing set apart: every error counts
    assert errors_after("ask not what your country", "thank you ask not what your country", 0) == 2


def test_corpus_wer_weighs_clips_by_their_words() -> None:
    long = "that is well over what we budgeted for this quarter I am afraid"
    refs = [long, "yes"]  # 13 words and 1: one wrong word is 1/14 of the set, not half of it
    assert corpus_wer(refs, [long, "no"]) == pytest.approx(100 / 14)


def test_unknown_sets_are_refused_with_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate-asr", "--sets", "librispeech-test-clean"]) == 2
    assert "one of asr, asr_dev, ravdess" in capsys.readouterr().err


@pytest.mark.evaluation
@pytest.mark.slow
def test_evaluate_asr_prints_the_table(shared_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not (shared_data / "speech" / "asr" / "manifest.tsv").is_file():
        pytest.skip(f"SHARED DATA ABSENT: {shared_data}/speech/asr")
    argv = ["evaluate-asr", "--sets", "asr", "--rates", "16k", "--decoders", "streaming", "offline"]
    assert main([*argv, "--shared-data", str(shared_data)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "| asr | 16k |" in line)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "91"  # reference words of the five clips
    streaming, offline, gap = (float(c.rstrip(" %")) for c in cells[4:7])
    assert gap == pytest.approx(streaming - offline, abs=0.011), row
    # A broken path loses whole clips (tens of points); how close streaming is to offline, word by word, is
    # tests/asr_service/test_asr_wer.py's bound.
    assert streaming < 10.0, row
