"""``callsense analyze FILE``: a recorded call through the whole pipeline, offline, in this process.

The same steps as ``POST /v1/sentiment/batch`` with a recording, without the mesh or a database:

1. decode and transcribe (``asr_service.recording``: FFmpeg, then Whisper's offline decoder with its VAD
   filter and the hallucination filter; a stereo file's channels are agent then customer unless
   ``channels`` says otherwise);
2. cut and mask (``chopper_service.segmenter``: sentences under 128 scorer tokens, PII masked), segments
   taken in time order across channels, as the gateway sends them;
3. score (``scorer_service.inference``: the shipped INT8 model, or ``sentiment_model``);
4. the call statistics, objection tags and the manager's report (``postcall``, built here in-process), as
   a call ending in the gateway gets them from the post-call worker.

The result is a ``CallAnalysis``: JSON (``as_json``) or lines for a terminal (``render_text``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from asr_service.recording import OfflineOptions, Recording, read_recording, transcribe_recording
from asr_service.streaming import Transcript
from asr_service.transcribe_file import load_offline_model
from callsense.domain import (
    CallStatistics,
    Channel,
    Label,
    UtteranceScore,
    compute_call_stats,
    format_call_time,
)
from callsense.report import CallReport, tag_names
from chopper_service.segmenter import Segmenter, TranscriptSegment, Utterance, WordTiming
from postcall.objections import tagger_from_env
from postcall.summary import build_report
from scorer_service.inference import Prediction, SentimentInput, SentimentModel


class ModelUnavailable(RuntimeError):
    """The Whisper or the sentiment model cannot be loaded (missing or unreadable)."""


@dataclass(frozen=True)
class AnalyzeOptions:
    channels: Sequence[str] | None = None
    """Role of each channel ("agent", "customer"), or ("mixed",) to downmix; None: mono is mixed,
    stereo agent then customer."""
    whisper_model_dir: Path | None = None
    """A CTranslate2 Whisper directory; None: CALLSENSE_ASR_MODEL_DIR or tiny.en."""
    sentiment_model: Path | None = None
    """An ONNX sentiment model; None: the shipped INT8 model."""


@dataclass(frozen=True)
class CallAnalysis:
    file: str
    duration_s: float
    channels: tuple[str, ...]
    events: tuple[UtteranceScore, ...]
    """Scored utterances in utterance order (masked text)."""
    stats: CallStatistics
    summary: tuple[str, ...]
    objection_tags: tuple[str, ...] = ()
    model_version: str = ""
    report: CallReport | None = None
    """Spikes, turning points, quarters and tagged segments, as the gateway stores them."""

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "duration_s": round(self.duration_s, 3),
            "channels": list(self.channels),
            "utterances": [_utterance_json(e) for e in self.events],
            "stats": {**dataclasses.asdict(self.stats), "label_counts": dict(self.stats.label_counts)},
            "summary": list(self.summary),
            "objection_tags": list(self.objection_tags),
            "report": self.report.to_json() if self.report is not None else None,
            "model_version": self.model_version,
        }


def _utterance_json(e: UtteranceScore) -> dict[str, Any]:
    return {
        "utterance_id": e.utterance_id,
        "start_ms": e.start_ms,
        "end_ms": e.end_ms,
        "channel": e.channel,
        "text": e.text,
        "label": e.label,
        "p_negative": round(e.p_negative, 4),
        "p_neutral": round(e.p_neutral, 4),
        "p_positive": round(e.p_positive, 4),
        "score": round(e.score, 4),
    }


def analyze_file(path: str | Path, options: AnalyzeOptions | None = None) -> CallAnalysis:
    """Run the pipeline on one file. ValueError (saying what to fix) for a file that cannot be used,
    ModelUnavailable for a model that cannot be loaded; the file is read before any model is."""
    options = options or AnalyzeOptions()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; check the path")
    with p.open("rb") as source:
        recording = read_recording(source, str(p), options.channels)
    try:
        whisper = load_offline_model(options.whisper_model_dir)
        sentiment = SentimentModel.load(options.sentiment_model)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelUnavailable(str(exc)) from exc
    transcripts = transcribe_recording(whisper, recording, OfflineOptions())
    utterances = chop(transcripts)
    events = score(p.stem, utterances, recording, sentiment)
    stats = compute_call_stats(events)
    report = _post_call(events, stats)
    return CallAnalysis(
        file=str(p),
        duration_s=recording.duration_s,
        channels=recording.roles,
        events=tuple(events),
        stats=stats,
        summary=report.lines,
        objection_tags=tuple(tag_names(report.tags)),
        model_version=sentiment.info.version,
        report=report,
    )


def chop(transcripts: Sequence[Transcript]) -> list[Utterance]:
    """The chopper's utterances of a call's final segments, taken in time order across channels (the
    segmenter's ``channel`` is the channel index here)."""
    segmenter = Segmenter()
    utterances: list[Utterance] = []
    for t in sorted(transcripts, key=lambda t: (t.start_ms, t.channel)):
        segment = TranscriptSegment(
            text=t.text,
            channel=t.channel,
            start_ms=t.start_ms,
            end_ms=t.end_ms,
            words=tuple(WordTiming(w.text, w.start_ms, w.end_ms) for w in t.words),
            segment_id=t.segment_id,
        )
        utterances += segmenter.feed(segment)
    return utterances + segmenter.close()


def score(
    call_id: str, utterances: Sequence[Utterance], recording: Recording, model: SentimentModel
) -> list[UtteranceScore]:
    """Each utterance with the model's probabilities (the chopper keeps them under the model's limit)."""
    predictions = model.predict([SentimentInput(u.text, u.previous_text) for u in utterances])
    events = []
    for u, prediction in zip(utterances, predictions, strict=True):
        if not isinstance(prediction, Prediction):  # cannot happen after the chopper; never guess a score
            raise RuntimeError(f"utterance {u.utterance_id} could not be scored: {prediction}")
        events.append(
            UtteranceScore(
                call_id=call_id,
                utterance_id=u.utterance_id,
                channel=cast(Channel, recording.roles[u.channel]),
                start_ms=u.start_ms,
                end_ms=u.end_ms,
                text=u.text,
                label=cast(Label, prediction.label),
                p_negative=prediction.p_negative,
                p_neutral=prediction.p_neutral,
                p_positive=prediction.p_positive,
                score=prediction.score,
                model_version=model.info.version,
            )
        )
    return events


def _post_call(events: Sequence[UtteranceScore], stats: CallStatistics) -> CallReport:
    """Objection tags and the report of a scored call: what a manager reads after it."""
    return build_report(events, stats, tagger_from_env().tag(events))


def render_text(analysis: CallAnalysis) -> str:
    """Lines for a terminal: one per utterance (time, speaker, label, score, text), then the summary."""
    lines = [f"{analysis.file}: {analysis.duration_s:.1f} s, channels {', '.join(analysis.channels)}"]
    for e in analysis.events:
        span = f"{format_call_time(e.start_ms)}-{format_call_time(e.end_ms)}"
        lines.append(f"{span}  {e.channel:<8}  {e.label:<8} {e.score:.2f}  {e.text}")
    if not analysis.events:
        lines.append("(no speech recognised)")
    lines += [f"- {line}" for line in analysis.summary]
    if analysis.objection_tags:
        lines.append(f"- objections: {', '.join(analysis.objection_tags)}")
    return "\n".join(lines)
