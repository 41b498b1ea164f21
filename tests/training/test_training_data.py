"""Loaders of the project's label format and the shared corpora, bad rows included."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.data import (
    load_csv,
    load_jsonl,
    load_labelled_file,
    load_meld,
    parse_label,
    repair_text,
)


def test_jsonl_keeps_good_rows_and_names_each_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_bytes(
        b'{"text": "Great demo!", "label": "positive", "why": "praise", "annotator": "ann", '
        b'"call_id": "c1", "call_duration_s": 95, "previous_text": "Here it is."}\n'
        b'{"text": "Too pricey", "label": "angry"}\n'
        b'{"text": "   ", "label": "neutral"}\n'
        b'{"text": "caf\xe9 bad bytes", "label": "neutral"}\n'
        b"not json at all\n"
        b'{"text": "fine", "label": 0}\n'
    )
    result = load_jsonl(path)
    assert [e.text for e in result.examples] == ["Great demo!", "fine"]
    first = result.examples[0]
    assert (first.label, first.call_id, first.call_duration_s, first.previous_text) == (
        2,
        "c1",
        95.0,
        "Here it is.",
    )
    assert (first.why, first.annotator) == ("praise", "ann")
    assert result.examples[1].label == 0
    reasons = {error.line: error.reason for error in result.errors}
    assert set(reasons) == {2, 3, 4, 5}
    assert "unknown label 'angry'" in reasons[2]
    assert "empty text" in reasons[3]
    assert "UTF-8" in reasons[4]
    assert "JSON" in reasons[5] or "Expecting" in reasons[5]


def test_csv_reports_bad_rows_with_their_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_bytes(
        b"text,label,call_id,call_duration_s\n"
        b'"Love it, really",positive,c1,60\n'
        b"\xff\xfe broken,negative,c1,60\n"
        b",neutral,c2,30\n"
        b"ok then,meh,c2,30\n"
        b"no idea,neutral,c3,soon\n"
        b"fair enough,neutral,c3,\n"
    )
    result = load_csv(path)
    assert [(e.text, e.label) for e in result.examples] == [("Love it, really", 2), ("fair enough", 1)]
    assert result.examples[1].call_duration_s is None
    assert sorted(error.line for error in result.errors) == [3, 4, 5, 6]


def test_csv_without_text_or_label_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("utterance,sentiment\nhi,positive\n")
    result = load_labelled_file(path)
    assert not result.examples
    assert "header" in result.errors[0].reason


def test_unknown_extension_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="use .csv or .jsonl"):
        load_labelled_file(tmp_path / "labels.xlsx")


def test_label_spellings() -> None:
    assert [parse_label(x) for x in ("Negative", "neu", "2", 1)] == [0, 1, 2, 1]
    with pytest.raises(ValueError, match="one of negative, neutral, positive"):
        parse_label("surprise")


def test_meld_mojibake_is_repaired_and_dialogues_become_calls(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "Sr No.,Utterance,Speaker,Emotion,Sentiment,Dialogue_ID,Utterance_ID,"
        "Season,Episode,StartTime,EndTime\n"
        '1,You mustâ€™ve had your hands full.,A,neutral,neutral,0,0,8,21,"00:16:16,059","00:16:21,731"\n'
        '2,That I did.,B,joy,positive,0,1,8,21,"00:16:22,000","00:16:26,000"\n'
        '3,Oh no.,C,sadness,negative,1,0,8,21,"00:01:00,000","00:01:02,000"\n',
        encoding="utf-8",
    )
    result = load_meld(path)
    assert result.examples[0].text == "You must've had your hands full."
    assert result.examples[1].previous_text == "You must've had your hands full."
    assert result.examples[2].previous_text == ""  # a new dialogue: no context carried across calls
    assert result.examples[0].call_duration_s == pytest.approx(9.941, abs=1e-3)
    assert result.examples[0].call_id != result.examples[2].call_id


def test_repair_text_normalises_quotes_and_space() -> None:
    assert repair_text("  Itâ€™s   “fine” ") == 'It\'s "fine"'


@pytest.mark.evaluation
def test_shared_corpora_load_cleanly(shared_data: Path) -> None:
    from training.data import load_source

    for spec, minimum in (
        ("meld:train", 9000),
        ("meld:dev", 1000),
        ("dailydialog:valid", 400),
        ("tweeteval:val", 2000),
        ("tweeteval:val-fit", 1000),
        ("tweeteval:val-held", 1000),
    ):
        result = load_source(spec, shared_data)
        assert len(result.examples) >= minimum, spec
        assert not result.errors, result.errors[:3]
        assert {e.label for e in result.examples} == {0, 1, 2}


def test_tweeteval_halves_split_the_validation_tweets_between_them(tmp_path: Path) -> None:
    from training.data import load_tweeteval

    (tmp_path / "val_text.txt").write_text("one\ntwo\nthree\nfour\nfive\n", encoding="utf-8")
    (tmp_path / "val_labels.txt").write_text("0\n1\n2\n1\n0\n", encoding="utf-8")
    whole = load_tweeteval(tmp_path, "val").examples
    fit = load_tweeteval(tmp_path, "val-fit").examples
    held = load_tweeteval(tmp_path, "val-held").examples
    assert [e.text for e in fit] == ["one", "three", "five"] and [e.text for e in held] == ["two", "four"]
    # The same tweet keeps its id whichever half it is read from, so reports can be joined on it.
    assert {e.call_id for e in fit} | {e.call_id for e in held} == {e.call_id for e in whole}


def test_tweeteval_emotion_becomes_valence_without_neutral(tmp_path: Path) -> None:
    from training.data import EMOTIONS, load_tweeteval_emotion

    (tmp_path / "train_text.txt").write_text(
        "so angry at this delay\nbest day ever\nthings will get better\nmissing home today\n"
    )
    (tmp_path / "train_labels.txt").write_text("0\n1\n2\n3\n")
    result = load_tweeteval_emotion(tmp_path, "train")
    assert [e.label for e in result.examples] == [0, 2, 2, 0]  # anger, joy, optimism, sadness
    assert [EMOTIONS[e.emotion] for e in result.examples] == ["anger", "joy", "joy", "sadness"]
    (tmp_path / "train_labels.txt").write_text("0\n1\n7\n3\n")
    bad = load_tweeteval_emotion(tmp_path, "train")
    assert len(bad.examples) == 3 and bad.errors[0].line == 3


@pytest.mark.evaluation
def test_shared_tweeteval_emotion_loads(shared_data: Path) -> None:
    from training.data import load_source

    result = load_source("tweeteval-emotion:train", shared_data)
    assert len(result.examples) >= 3000 and not result.errors
    assert {e.label for e in result.examples} == {0, 2}
