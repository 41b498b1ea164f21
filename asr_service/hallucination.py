"""Deciding whether Whisper's text was said: silence, noise and music must never become a transcript.

The VAD keeps most non-speech away from Whisper; this is the second line, for what gets through (a
breath, line noise, hold music the VAD took for a voice). Whisper on such audio says things like
"Thank you.", "you", "Thanks for watching!" or "I'm going to go.", usually with a high no-speech
probability and a low log-probability. A text is rejected, with the reason, when:

- it holds no word, or only a bracketed caption ("[Music]", "(applause)") or music symbols;
- Whisper's own silence rule holds: ``no_speech_prob`` above 0.6 while ``avg_logprob`` is below -1;
  or, the same with word confidence: ``no_speech_prob`` above 0.6 while the mean word probability is
  below 0.5 (a tone sequence after a pause came out as a confident "Ooh, o" with words at 0.36; of
  1,069 accepted finals of real speech none had a ``no_speech_prob`` above 0.5);
- confidence is very low on its own: ``avg_logprob`` below -1.5 or mean word probability below 0.35;
- ``no_speech_prob`` is above 0.9 (Whisper is sure nothing was said) unless the text is confident;
- it is too repetitive (zlib ``compression_ratio`` above 2.4);
- it is a subtitle or video phrase ("thanks for watching", "subscribe", "subtitles by ...") that no
  sales call contains;
- it is one of the short stock phrases Whisper produces for non-speech ("thank you", "you", "bye") and
  confidence is not high: these are also said in calls, so they pass only when Whisper is sure;
- more characters per second than anyone speaks (a text longer than its audio allows).

Thresholds are in ``FilterConfig``; ``judge`` is pure (no model), so it is unit-tested on its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from asr_service.recognizer import Recognition

ALWAYS_REJECTED = (
    "thanks for watching",
    "thank you for watching",
    "thanks for listening",
    "thank you for listening",
    "please subscribe",
    "like and subscribe",
    "subscribe to",
    "don't forget to subscribe",
    "see you in the next video",
    "see you next time",
    "subtitles by",
    "subtitled by",
    "captions by",
    "captioned by",
    "transcribed by",
    "translated by",
    "amara org",
)
"""Phrases (normalised: lower case, punctuation as spaces) that reject a text wherever they occur."""

STOCK_PHRASES = frozenset(
    {
        "you",
        "thank you",
        "thank you very much",
        "thank you so much",
        "thanks",
        "thank you bye",
        "bye",
        "bye bye",
        "goodbye",
        "okay",
        "ok",
        "oh",
        "so",
        "hmm",
        "um",
        "uh",
        "ah",
        "i'm sorry",
        "i'm going to go",
        "i'll",
        "the end",
        "yeah",
        "music",
    }
)
"""Whole texts (normalised) that Whisper emits for non-speech; kept only when it is confident."""

_CAPTION = re.compile(r"^\W*([\[(*][^\])*]*[\])*]\W*)+$")
_NON_WORD = re.compile(r"[^\w']+")


@dataclass(frozen=True)
class FilterConfig:
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    """Whisper's silence rule: rejected when no_speech_prob > no_speech_threshold and avg_logprob below."""
    unsure_word_probability: float = 0.5
    """The silence rule on words: no_speech_prob > no_speech_threshold and mean word probability below."""
    min_avg_logprob: float = -1.5
    min_word_probability: float = 0.35
    """Mean word probability below which the words are guesses."""
    certain_no_speech: float = 0.9
    max_compression_ratio: float = 2.4
    max_chars_per_s: float = 30.0
    """Fast speech is about 15-20 characters per second."""
    stock_max_no_speech: float = 0.3
    stock_min_avg_logprob: float = -0.6
    stock_min_word_probability: float = 0.6
    """A stock phrase ("thank you") passes only with no_speech_prob, avg_logprob and word probability
    all on the confident side of these."""


def normalise(text: str) -> str:
    """Lower case, punctuation to spaces, single spaces: the form the phrase lists use."""
    return " ".join(_NON_WORD.sub(" ", text.lower().replace("’", "'")).split())


def judge(recognition: Recognition, config: FilterConfig | None = None) -> str | None:
    """Why ``recognition`` must not be used as a transcript, or None when it may."""
    c = config or FilterConfig()
    r = recognition
    text = r.text.strip()
    norm = normalise(text)
    if not norm or _CAPTION.match(text) or "♪" in text:
        return "no words"
    if r.no_speech_prob > c.no_speech_threshold and r.avg_logprob < c.logprob_threshold:
        return f"silence (no_speech_prob {r.no_speech_prob:.2f}, avg_logprob {r.avg_logprob:.2f})"
    if r.avg_logprob < c.min_avg_logprob:
        return f"low confidence (avg_logprob {r.avg_logprob:.2f})"
    word_probability = mean_word_probability(r)
    if (
        r.no_speech_prob > c.no_speech_threshold
        and word_probability is not None
        and word_probability < c.unsure_word_probability
    ):
        return f"silence (no_speech_prob {r.no_speech_prob:.2f}, word probability {word_probability:.2f})"
    if word_probability is not None and word_probability < c.min_word_probability:
        return f"low word confidence ({word_probability:.2f})"
    if r.no_speech_prob > c.certain_no_speech and r.avg_logprob < c.stock_min_avg_logprob:
        return f"no speech (no_speech_prob {r.no_speech_prob:.2f})"
    if r.compression_ratio > c.max_compression_ratio:
        return f"repetitive (compression ratio {r.compression_ratio:.2f})"
    padded = f" {norm} "
    for phrase in ALWAYS_REJECTED:
        if f" {phrase} " in padded:
            return f"known hallucination ({phrase!r})"
    if norm in STOCK_PHRASES and not _confident(r, word_probability, c):
        return f"stock phrase without confidence ({norm!r})"
    if r.audio_s >= 1.0 and len(norm) / r.audio_s > c.max_chars_per_s:
        return f"too much text for the audio ({len(norm)} characters in {r.audio_s:.1f} s)"
    return None


def mean_word_probability(recognition: Recognition) -> float | None:
    if not recognition.words:
        return None
    return sum(w.probability for w in recognition.words) / len(recognition.words)


def _confident(r: Recognition, word_probability: float | None, c: FilterConfig) -> bool:
    return (
        r.no_speech_prob <= c.stock_max_no_speech
        and r.avg_logprob >= c.stock_min_avg_logprob
        and (word_probability is None or word_probability >= c.stock_min_word_probability)
    )
