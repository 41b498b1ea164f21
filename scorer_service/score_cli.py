"""`callsense score`: JSON Lines in, JSON Lines out, with the shipped INT8 model and no torch.

Each input line is `{"id": ..., "text": ..., "previous_text": ..., "speaker": ...}` (previous_text
optional; speaker "agent" or "customer", optional: the model's role prior, as the scorer applies it by the
call's channel; absent, the words alone are scored). Each
output line has the same `id` and either the scores or an `error` that says what to fix; one bad line
never stops the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from callsense.tokenization import TextRejected
from scorer_service.inference import ROLES, Prediction, SentimentInput, SentimentModel


@dataclass
class ScoreCounts:
    scored: int = 0
    rejected: int = 0


def parse_line(line: str) -> tuple[Any, SentimentInput]:
    """(id, input) of one line; raises ValueError with a message for the user."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise ValueError('each line must be a JSON object like {"id": 1, "text": "..."}')
    text = record.get("text")
    if not isinstance(text, str):
        raise ValueError('missing "text": each line needs the utterance as a string')
    previous = record.get("previous_text") or ""
    if not isinstance(previous, str):
        raise ValueError('"previous_text" must be a string')
    speaker = record.get("speaker") or ""
    if speaker not in ("", *ROLES):
        raise ValueError(f'"speaker" must be one of {", ".join(ROLES)} (or absent), not {speaker!r}')
    return record.get("id"), SentimentInput(text, previous, speaker)


def result_line(item_id: Any, prediction: Prediction) -> dict[str, Any]:
    return {
        "id": item_id,
        "label": prediction.label,
        "p_negative": round(prediction.p_negative, 6),
        "p_neutral": round(prediction.p_neutral, 6),
        "p_positive": round(prediction.p_positive, 6),
        "score": round(prediction.score, 6),
    }


def score_lines(
    model: SentimentModel, lines: Iterable[str], batch_size: int = 32
) -> Iterable[dict[str, Any]]:
    """Output records in input order; blank lines are skipped."""
    pending: list[tuple[int, Any, SentimentInput | str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item_id, item = parse_line(line)
            pending.append((number, item_id, item))
        except ValueError as exc:
            pending.append((number, _best_effort_id(line), str(exc)))
        if len(pending) >= batch_size:
            yield from _flush(model, pending, batch_size)
            pending = []
    yield from _flush(model, pending, batch_size)


def _best_effort_id(line: str) -> Any:
    try:
        record = json.loads(line)
        return record.get("id") if isinstance(record, dict) else None
    except json.JSONDecodeError:
        return None


def _flush(
    model: SentimentModel, pending: list[tuple[int, Any, SentimentInput | str]], batch_size: int
) -> Iterable[dict[str, Any]]:
    inputs = [item for _, _, item in pending if isinstance(item, SentimentInput)]
    predictions = iter(model.predict(inputs, max_batch=batch_size))
    for number, item_id, item in pending:
        if isinstance(item, str):
            yield {"id": item_id, "line": number, "error": item}
            continue
        result = next(predictions)
        if isinstance(result, TextRejected):
            yield {"id": item_id, "line": number, "error": str(result)}
        else:
            yield result_line(item_id, result)


def score_stream(
    source: IO[str], sink: IO[str], model_path: Path | None, threads: int, batch_size: int
) -> ScoreCounts:
    model = SentimentModel.load(model_path, threads=threads, backend="onnx")
    counts = ScoreCounts()
    for record in score_lines(model, source, batch_size):
        if "error" in record:
            counts.rejected += 1
        else:
            counts.scored += 1
        sink.write(json.dumps(record) + "\n")
        sink.flush()
    return counts
