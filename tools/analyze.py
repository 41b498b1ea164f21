"""``callsense analyze FILE``: a recorded call through the whole pipeline, offline, in this process.

The same steps as ``POST /v1/sentiment/batch`` with a recording, without the mesh or a database:

1. decode and transcribe (``asr_service.recording``: FFmpeg, then Whisper's offline decoder with its VAD
   filter and the hallucination filter; a stereo file's channels are agent then customer unless
   ``channels`` says otherwise; a mono file's speakers are split into agent and customer, the opener
   being the agent, unless ``speakers`` says otherwise);
2. cut and mask (the chopper service's own code: sentences under 128 scorer tokens, PII masked, each
   segment's prosody carried), segments taken in time order across channels, as the gateway sends them;
3. score as the scorer's ScoreBatch does (``scorer_service.offline``: the shipped INT8 model, or
   ``sentiment_model``, then the tone fusion head ``fusion``: each utterance's voice against the same
   speaker's earlier ones; the words' probabilities alone are kept beside the fused ones);
4. the call statistics, objection tags and the manager's report (``postcall``, built here in-process), as
   a call ending in the gateway gets them from the post-call worker.

The result is a ``CallAnalysis``: JSON (``as_json``) or lines for a terminal (``render_text``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asr_service import diarization
from asr_service.recording import (
    OfflineOptions,
    diarize_recording,
    read_recording,
    transcribe_recording,
)
from asr_service.server import transcript_message
from asr_service.streaming import Transcript
from asr_service.transcribe_file import load_offline_model
from callsense.domain import (
    LABELS,
    CallStatistics,
    Channel,
    UtteranceScore,
    compute_call_stats,
    format_call_time,
)
from callsense.report import CallReport, tag_names
from callsense.v1 import audio_pb2, chopper_pb2, scorer_pb2
from chopper_service.server import chop_offline
from postcall.objections import tagger_from_env
from postcall.summary import build_report
from scorer_service.fusion.head import SHIPPED_HEAD, FusionHead, InvalidHead
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from scorer_service.offline import score_offline

_ROLES: dict[str, audio_pb2.ChannelRole] = {
    "customer": audio_pb2.CUSTOMER,
    "agent": audio_pb2.AGENT,
    "mixed": audio_pb2.MIXED,
}
_CHANNELS: dict[int, Channel] = {
    audio_pb2.CUSTOMER: "customer",
    audio_pb2.AGENT: "agent",
    audio_pb2.MIXED: "mixed",
}
_CHOP_CALL_ID = "offline"
"""The call id the chopper and the scorer see (a file name need not be a valid call id)."""


class ModelUnavailable(RuntimeError):
    """The Whisper or the sentiment model cannot be loaded (missing or unreadable)."""


@dataclass(frozen=True)
class AnalyzeOptions:
    channels: Sequence[str] | None = None
    """Role of each channel ("agent", "customer"), or ("mixed",) to downmix; None: mono is mixed (then
    split by ``speakers``), stereo agent then customer."""
    speakers: str = "auto"
    """How a recording heard as one channel is split by speaker: auto (a mono file: the opener is the
    agent), agent-first, customer-first or none (``asr_service.recording.SPEAKER_SPLITS``)."""
    whisper_model_dir: Path | None = None
    """A CTranslate2 Whisper directory; None: CALLSENSE_ASR_MODEL_DIR or tiny.en."""
    sentiment_model: Path | None = None
    """An ONNX sentiment model; None: the shipped INT8 model."""
    tone: bool = False
    """Fuse each utterance's tone with its words (as a scorer started with --fusion does); False: the
    words alone (the default, as the scorer's)."""
    fusion: Path | None = None
    """A fusion head (fusion.json); None: the shipped one."""


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
    fusion_version: str = ""
    """The tone fusion head used; empty when the words were scored alone."""

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
            "fusion_version": self.fusion_version,
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
        # The words alone beside the voice-fused score above (the same when tone took no part).
        "tone_fused": e.tone_fused,
        "text_label": e.text_label,
        "text_p_negative": round(e.text_p_negative if e.text_p_negative is not None else e.p_negative, 4),
        "text_p_neutral": round(e.text_p_neutral if e.text_p_neutral is not None else e.p_neutral, 4),
        "text_p_positive": round(e.text_p_positive if e.text_p_positive is not None else e.p_positive, 4),
        "text_score": round(e.text_score, 4),
        "tone_moved": e.tone_moved,
        "fusion_version": e.fusion_version,
    }


def analyze_file(path: str | Path, options: AnalyzeOptions | None = None) -> CallAnalysis:
    """Run the pipeline on one file. ValueError (saying what to fix) for a file that cannot be used,
    ModelUnavailable for a model that cannot be loaded; the file is read before any model is."""
    options = options or AnalyzeOptions()
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: no such file; check the path")
    with p.open("rb") as source:
        recording = read_recording(source, str(p), options.channels, speakers=options.speakers)
    try:
        whisper = load_offline_model(options.whisper_model_dir)
        sentiment = SentimentModel.load(options.sentiment_model)
        segmentation = diarization.shared_model() if recording.opener is not None else None
        tone = load_tone(options.fusion) if options.tone else None
    except (OSError, RuntimeError, ValueError) as exc:
        raise ModelUnavailable(str(exc)) from exc
    recording = diarize_recording(recording, segmentation)
    transcripts = transcribe_recording(whisper, recording, OfflineOptions())
    utterances = chop(transcripts, recording.roles)
    events = score(p.stem, utterances, sentiment, tone)
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
        fusion_version=tone.head.version if tone is not None else "",
    )


def chop(transcripts: Sequence[Transcript], roles: Sequence[str]) -> list[chopper_pb2.Utterance]:
    """The chopper service's utterances of a call's final segments (``chopper_service.server.chop_offline``:
    masks, ids, each segment's prosody carried), the segments taken in time order across channels, as the
    gateway sends them; ``roles`` names each transcript channel's speaker."""
    ordered = sorted(transcripts, key=lambda t: (t.start_ms, t.channel))
    return chop_offline(
        _CHOP_CALL_ID, [transcript_message(_CHOP_CALL_ID, _ROLES[roles[t.channel]], t) for t in ordered]
    )


def score(
    call_id: str, utterances: Sequence[chopper_pb2.Utterance], model: SentimentModel, tone: ToneFuser | None
) -> list[UtteranceScore]:
    """Each utterance scored as the scorer's ScoreBatch scores a call (``scorer_service.offline``): the text
    model's probabilities, fused with the voice's tone where ``tone`` and the utterance's prosody allow."""
    events = []
    for u, s in zip(utterances, score_offline(model, tone, utterances), strict=True):
        fused = s.tone_fused
        events.append(
            UtteranceScore(
                call_id=call_id,
                utterance_id=u.utterance_id,
                channel=_CHANNELS[u.channel],
                start_ms=u.start_ms,
                end_ms=u.end_ms,
                text=u.text,
                label=LABELS[s.label - scorer_pb2.NEGATIVE],
                p_negative=s.p_negative,
                p_neutral=s.p_neutral,
                p_positive=s.p_positive,
                score=s.score,
                model_version=s.model_version,
                text_p_negative=s.text_p_negative if fused else None,
                text_p_neutral=s.text_p_neutral if fused else None,
                text_p_positive=s.text_p_positive if fused else None,
                fusion_version=s.fusion_version if fused else None,
            )
        )
    return events


def load_tone(path: Path | None) -> ToneFuser | None:
    """The fusion head at ``path`` (None: the shipped one, when there is one) as a fuser."""
    if path is None and not SHIPPED_HEAD.is_file():
        return None
    try:
        return ToneFuser(FusionHead.load(path or SHIPPED_HEAD))
    except InvalidHead as exc:
        raise ModelUnavailable(str(exc)) from exc


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
