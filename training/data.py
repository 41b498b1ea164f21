"""Labelled utterances for training and evaluation, and the loaders that read them.

Every source becomes a list of `LabelledUtterance`: text, a three-way label, and what the sampler needs
to know about the call it came from. Bad rows never stop a load: each becomes a `RowError` naming the
file, the line and what to fix, and the good rows are kept.

Sources:
- the project's own label format: CSV or JSON Lines with `text`, `label`, and optionally `why`,
  `annotator`, `call_id`, `call_duration_s`, `previous_text`;
- MELD (TV dialogues; a dialogue is a call, its times give the call's length);
- DailyDialog as annotated in RECCON (`valence3_suggested`; "ambiguous" rows are left out);
- TweetEval sentiment (each tweet is a call of its own).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
# Fine-grained emotions some corpora carry (MELD, DailyDialog): an auxiliary training signal only.
EMOTIONS: tuple[str, ...] = ("neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear")
_EMOTION_ALIASES: dict[str, int] = {
    **{name: i for i, name in enumerate(EMOTIONS)},
    "happiness": 1,
    "happy": 1,
    "excited": 1,
    "surprised": 2,
    "angry": 3,
    "sad": 4,
}
LABEL_IDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
_LABEL_ALIASES: dict[str, int] = {
    **LABEL_IDS,
    "neg": 0,
    "neu": 1,
    "pos": 2,
    "0": 0,
    "1": 1,
    "2": 2,
}
# Speaking rate used to estimate a call's length where a corpus has no times (DailyDialog).
_WORDS_PER_SECOND = 2.5

# MELD's text was decoded as cp1252 somewhere on its way: "â€™" stands for "’" and so on.
_MOJIBAKE = {
    "â€™": "'",
    "â€˜": "'",
    "â€œ": '"',
    "â€\x9d": '"',
    "â€": '"',
    "â€”": " - ",
    "â€“": " - ",
    "â€¦": "...",
    "Ã©": "é",
    "\x92": "'",
    "\x93": '"',
    "\x94": '"',
    "\x85": "...",
}


def shared_data_dir() -> Path:
    """Where the shared corpora live: $CALLSENSE_SHARED_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("CALLSENSE_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class LabelledUtterance:
    """One labelled utterance and the call it belongs to."""

    text: str
    label: int
    source: str
    call_id: str = ""
    call_duration_s: float | None = None
    previous_text: str = ""
    why: str = ""
    annotator: str = ""
    emotion: int = -1  # index into EMOTIONS, -1 where the source has none
    role: str = ""  # who said it, where the source knows: "agent" or "customer" (the model's role prior)


def parse_emotion(raw: str | None) -> int:
    """An emotion name as an index into EMOTIONS; -1 when unknown or absent."""
    return _EMOTION_ALIASES.get((raw or "").strip().lower(), -1)


@dataclass(frozen=True)
class RowError:
    """A row that was skipped, and why."""

    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadResult:
    """The good rows of a load, and the rows that were skipped."""

    examples: list[LabelledUtterance] = field(default_factory=list)
    errors: list[RowError] = field(default_factory=list)

    def extend(self, other: LoadResult) -> None:
        self.examples.extend(other.examples)
        self.errors.extend(other.errors)


def repair_text(text: str) -> str:
    """Undo MELD-style mojibake and normalise whitespace."""
    for bad, good in _MOJIBAKE.items():
        if bad in text:
            text = text.replace(bad, good)
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(text.split())


def parse_label(raw: object) -> int:
    """A label as a class id; raises ValueError naming the accepted spellings."""
    key = str(raw).strip().lower()
    if key in _LABEL_ALIASES:
        return _LABEL_ALIASES[key]
    raise ValueError(f"unknown label {raw!r}: use one of negative, neutral, positive (or 0, 1, 2)")


def _decoded_lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, text) for each line; text is None where the bytes are not valid UTF-8."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                yield number, None


def _example_from_record(record: dict[str, object], source: str) -> LabelledUtterance:
    """Validate one record of the project's label format; raises ValueError saying what to fix."""
    text = record.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty text: every row needs a non-empty `text`")
    if "label" not in record or record["label"] in (None, ""):
        raise ValueError("missing label: every row needs `label` (negative, neutral or positive)")
    label = parse_label(record["label"])
    duration_raw = record.get("call_duration_s")
    duration: float | None = None
    if duration_raw not in (None, ""):
        try:
            duration = float(str(duration_raw))
        except ValueError as exc:
            raise ValueError(f"call_duration_s must be a number of seconds, got {duration_raw!r}") from exc
        if duration < 0:
            raise ValueError(f"call_duration_s must not be negative, got {duration}")
    return LabelledUtterance(
        text=repair_text(text),
        label=label,
        source=source,
        call_id=str(record.get("call_id") or ""),
        call_duration_s=duration,
        previous_text=repair_text(str(record.get("previous_text") or "")),
        why=str(record.get("why") or ""),
        annotator=str(record.get("annotator") or ""),
    )


def load_jsonl(path: Path) -> LoadResult:
    """The project's label format as JSON Lines."""
    result = LoadResult()
    for number, line in _decoded_lines(path):
        if line is None:
            result.errors.append(RowError(str(path), number, "not valid UTF-8: re-save the file as UTF-8"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("each line must be a JSON object")
            result.examples.append(_example_from_record(record, path.name))
        except (ValueError, json.JSONDecodeError) as exc:
            result.errors.append(RowError(str(path), number, str(exc)))
    return result


def load_csv(path: Path) -> LoadResult:
    """The project's label format as CSV with a header row."""
    result = LoadResult()
    good_lines: list[str] = []
    line_numbers: list[int] = []
    for number, line in _decoded_lines(path):
        if line is None:
            result.errors.append(RowError(str(path), number, "not valid UTF-8: re-save the file as UTF-8"))
            continue
        good_lines.append(line)
        line_numbers.append(number)
    reader = csv.DictReader(io.StringIO("".join(good_lines)))
    if reader.fieldnames is None or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
        result.errors.append(RowError(str(path), 1, "the header must name at least `text` and `label`"))
        return result
    for record in reader:
        # DictReader counts physical lines; map back to the file's numbering (bad lines were dropped).
        index = min(reader.line_num - 1, len(line_numbers) - 1)
        try:
            result.examples.append(_example_from_record(dict(record), path.name))
        except ValueError as exc:
            result.errors.append(RowError(str(path), line_numbers[index], str(exc)))
    return result


def load_labelled_file(path: Path) -> LoadResult:
    """A file in the project's label format, by extension (.csv, .jsonl, .json)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return load_csv(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return load_jsonl(path)
    raise ValueError(f"{path}: unknown label file type {suffix!r}: use .csv or .jsonl")


def _meld_seconds(stamp: str) -> float:
    """MELD's "00:16:16,059" as seconds."""
    hms, _, millis = stamp.strip().partition(",")
    hours, minutes, seconds = (int(part) for part in hms.split(":"))
    return hours * 3600 + minutes * 60 + seconds + int(millis or 0) / 1000


def _with_context(rows: list[LabelledUtterance]) -> list[LabelledUtterance]:
    """Fill previous_text from the utterance before, within each call (rows are in call order)."""
    out: list[LabelledUtterance] = []
    previous_by_call: dict[str, str] = {}
    for row in rows:
        previous = previous_by_call.get(row.call_id, "")
        out.append(
            LabelledUtterance(
                text=row.text,
                label=row.label,
                source=row.source,
                call_id=row.call_id,
                call_duration_s=row.call_duration_s,
                previous_text=previous,
                emotion=row.emotion,
            )
        )
        previous_by_call[row.call_id] = row.text
    return out


def load_meld(path: Path) -> LoadResult:
    """MELD's CSV (train.csv / dev.csv): Sentiment label, Dialogue_ID as the call."""
    result = LoadResult()
    rows: list[tuple[LabelledUtterance, float, float]] = []
    with path.open(encoding="utf-8", errors="strict", newline="") as handle:
        for number, record in enumerate(csv.DictReader(handle), start=2):
            text = repair_text(record.get("Utterance") or "")
            if not text:
                result.errors.append(RowError(str(path), number, "empty utterance"))
                continue
            try:
                label = parse_label(record["Sentiment"])
                start = _meld_seconds(record["StartTime"])
                end = _meld_seconds(record["EndTime"])
            except (KeyError, ValueError) as exc:
                result.errors.append(RowError(str(path), number, str(exc)))
                continue
            call_id = f"meld-{path.stem}-{record['Dialogue_ID']}"
            emotion = parse_emotion(record.get("Emotion"))
            rows.append((LabelledUtterance(text, label, "meld", call_id, emotion=emotion), start, end))
    spans: dict[str, tuple[float, float]] = {}
    for row, start, end in rows:
        low, high = spans.get(row.call_id, (start, end))
        spans[row.call_id] = (min(low, start), max(high, end))
    ordered = [
        LabelledUtterance(
            row.text,
            row.label,
            row.source,
            row.call_id,
            spans[row.call_id][1] - spans[row.call_id][0],
            emotion=row.emotion,
        )
        for row, _, _ in rows
    ]
    result.examples.extend(_with_context(ordered))
    return result


def load_dailydialog(path: Path) -> LoadResult:
    """DailyDialog (RECCON) TSV: `valence3_suggested`; ambiguous (surprise) rows are left out."""
    result = LoadResult()
    rows: list[LabelledUtterance] = []
    words_by_call: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        for number, record in enumerate(reader, start=2):
            text = repair_text(record.get("utterance") or "")
            call_id = f"dd-{record.get('dialog_id', '')}"
            words_by_call[call_id] = words_by_call.get(call_id, 0) + len(text.split())
            valence = (record.get("valence3_suggested") or "").strip().lower()
            if valence == "ambiguous":
                continue
            if not text:
                result.errors.append(RowError(str(path), number, "empty utterance"))
                continue
            try:
                emotion = parse_emotion(record.get("emotion"))
                rows.append(
                    LabelledUtterance(text, parse_label(valence), "dailydialog", call_id, emotion=emotion)
                )
            except ValueError as exc:
                result.errors.append(RowError(str(path), number, str(exc)))
    timed = [
        LabelledUtterance(
            r.text,
            r.label,
            r.source,
            r.call_id,
            words_by_call[r.call_id] / _WORDS_PER_SECOND,
            emotion=r.emotion,
        )
        for r in rows
    ]
    result.examples.extend(_with_context(timed))
    return result


def _tweets(directory: Path, split: str) -> Iterator[tuple[int, str, str]]:
    """(line number, repaired text, raw label) of `{split}_text.txt` beside `{split}_labels.txt`."""
    texts = (directory / f"{split}_text.txt").read_text(encoding="utf-8").splitlines()
    labels = (directory / f"{split}_labels.txt").read_text(encoding="utf-8").splitlines()
    if len(texts) != len(labels):
        raise ValueError(f"{directory}: {len(texts)} texts but {len(labels)} labels")
    for number, (text, label) in enumerate(zip(texts, labels, strict=True), start=1):
        yield number, repair_text(text), label


# TweetEval's validation split in two fixed halves, so that a model can learn from one half (neutral tweets
# anchor it against reading plain statements as positive) and still be measured on tweets it never saw:
# "val-fit" is the odd-numbered tweets, "val-held" the even-numbered ones.
_TWEET_HALVES = {"val-fit": ("val", 1), "val-held": ("val", 0)}


def load_tweeteval(directory: Path, split: str = "val") -> LoadResult:
    """TweetEval sentiment: `{split}_text.txt` and `{split}_labels.txt`, one tweet a call; "val-fit" and
    "val-held" are the two halves of "val" (odd- and even-numbered tweets)."""
    result = LoadResult()
    file_split, parity = _TWEET_HALVES.get(split, (split, None))
    for number, clean, label in _tweets(directory, file_split):
        if parity is not None and number % 2 != parity:
            continue
        if not clean:
            result.errors.append(RowError(str(directory), number, "empty tweet"))
            continue
        duration = len(clean.split()) / _WORDS_PER_SECOND
        result.examples.append(
            LabelledUtterance(
                clean, parse_label(label), "tweeteval", f"tweet-{file_split}-{number}", duration
            )
        )
    return result


# TweetEval emotion labels as valence: anger and sadness negative, joy and optimism positive (no neutral).
_TWEET_EMOTION_VALENCE = {"0": 0, "1": 2, "2": 2, "3": 0}
_TWEET_EMOTION_NAME = {"0": 3, "1": 1, "2": 1, "3": 4}  # anger, joy, joy (optimism), sadness


def load_tweeteval_emotion(directory: Path, split: str = "train") -> LoadResult:
    """TweetEval emotion (SemEval-2018) as valence: the set has no neutral tweets, so it teaches the
    two poles only; each tweet is a call of its own."""
    result = LoadResult()
    for number, clean, label in _tweets(directory, split):
        valence = _TWEET_EMOTION_VALENCE.get(label.strip())
        if not clean or valence is None:
            result.errors.append(RowError(str(directory), number, f"empty tweet or unknown label {label!r}"))
            continue
        duration = len(clean.split()) / _WORDS_PER_SECOND
        result.examples.append(
            LabelledUtterance(
                clean,
                valence,
                "tweeteval-emotion",
                f"tweet-emotion-{split}-{number}",
                duration,
                emotion=_TWEET_EMOTION_NAME[label.strip()],
            )
        )
    return result


# Named corpora under the shared data directory, for `--train meld:train` and the like.
CORPORA: dict[str, tuple[str, str]] = {
    "meld:train": ("meld", "sentiment/meld/train.csv"),
    "meld:dev": ("meld", "sentiment/meld/dev.csv"),
    "dailydialog:train": ("dailydialog", "sentiment/dailydialog/train.tsv"),
    "dailydialog:valid": ("dailydialog", "sentiment/dailydialog/valid.tsv"),
    "tweeteval:val": ("tweeteval", "sentiment/tweeteval"),
    "tweeteval:val-fit": ("tweeteval", "sentiment/tweeteval"),
    "tweeteval:val-held": ("tweeteval", "sentiment/tweeteval"),
    "tweeteval-emotion:train": ("tweeteval-emotion", "sentiment/tweeteval_emotion"),
    "tweeteval-emotion:val": ("tweeteval-emotion", "sentiment/tweeteval_emotion"),
}


# The sales corpus written and labelled here (data/sales/DATASHEET.md): in the repository, not in
# ../shared. "sales:SPLIT" is the written text, "sales-asr:SPLIT" the same lines as the ASR shapes them.
SALES_DIR = Path(__file__).resolve().parents[1] / "data" / "sales"
SALES_SPLITS = ("train", "dev", "test")


def load_sales(split: str, asr: bool = False, directory: Path = SALES_DIR) -> LoadResult:
    """The adjudicated lines of one split of the sales corpus, in call order, each with the line before
    it in its call as context. Lines without a gold label (none yet, or left undecided) are skipped."""
    lines = [json.loads(raw) for raw in (directory / "lines.jsonl").read_text(encoding="utf-8").splitlines()]
    gold_path = directory / "gold.jsonl"
    if not gold_path.exists():
        raise FileNotFoundError(f"{gold_path} not found: the sales corpus has no adjudicated labels yet")
    gold = {}
    for raw in gold_path.read_text(encoding="utf-8").splitlines():
        row = json.loads(raw)
        if row.get("label") in LABEL_IDS:
            gold[row["line_id"]] = row
    result = LoadResult()
    previous: dict[str, str] = {}
    source = f"sales{'-asr' if asr else ''}:{split}"
    for line in lines:
        text = line["asr_text"] if asr else line["text"]
        before = previous.get(line["call_id"], "")
        previous[line["call_id"]] = text
        if line["split"] != split or line["line_id"] not in gold:
            continue
        row = gold[line["line_id"]]
        result.examples.append(
            LabelledUtterance(
                text=text,
                label=LABEL_IDS[row["label"]],
                source=source,
                call_id=line["call_id"],
                previous_text=before,
                role=line["speaker"],
            )
        )
    return result


def load_source(spec: str, data_dir: Path | None = None) -> LoadResult:
    """A named corpus (see CORPORA), a split of the sales corpus ("sales:dev", "sales-asr:dev"), or a
    path to a file in the project's label format."""
    name, _, split = spec.partition(":")
    if name in ("sales", "sales-asr") and split in SALES_SPLITS:
        return load_sales(split, asr=name == "sales-asr")
    if spec in CORPORA:
        kind, relative = CORPORA[spec]
        path = (data_dir or shared_data_dir()) / relative
        if not path.exists():
            raise FileNotFoundError(
                f"{spec}: {path} not found (set CALLSENSE_SHARED_DATA to the data folder)"
            )
        if kind == "meld":
            return load_meld(path)
        if kind == "dailydialog":
            return load_dailydialog(path)
        if kind == "tweeteval-emotion":
            return load_tweeteval_emotion(path, split=split)
        return load_tweeteval(path, split=split)
    path = Path(spec)
    if not path.exists():
        known = ", ".join(CORPORA)
        raise FileNotFoundError(f"{spec}: no such file, and not a named corpus ({known})")
    return load_labelled_file(path)


def load_sources(specs: Iterable[str], data_dir: Path | None = None) -> LoadResult:
    """Several sources, concatenated."""
    result = LoadResult()
    for spec in specs:
        result.extend(load_source(spec, data_dir))
    return result
