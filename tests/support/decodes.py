"""Decode results made up for the ASR's channel logic: what a decode of a request read, at no cost."""

from __future__ import annotations

from asr_service.decoding import DecodeRequest, DecodeResult
from asr_service.recognizer import Recognition


def result_reading(request: DecodeRequest, text: str | None) -> DecodeResult | None:
    """``request``'s result as if Whisper had read ``text`` (None: the decode was skipped; "" or
    whitespace: the filter rejected what it heard)."""
    if text is None:
        return None
    recognition = Recognition(
        text=text.strip(),
        words=(),
        no_speech_prob=0.01,
        avg_logprob=-0.2,
        compression_ratio=1.2,
        audio_s=request.duration_s,
    )
    rejected = None if text.strip() else "no words"
    return DecodeResult(request, recognition, rejected, (), None, 0.0)
