"""Decoding one request on the inference thread: Whisper, the hallucination filter, and for finals the
retries that make them as good as offline decoding.

A partial is decoded once, greedy: it is replaced within a second anyway. Partials of several calls
waiting at once may be decoded as one batch (``run_partial_batch``, the scheduler's ``Batch``): each hears
silence up to the longest of the batch, a small change for a text replaced within a second; finals,
speculative ones included, are always decoded alone (their text is what is scored).

A final is what the chopper cuts and the scorer scores, so it gets what offline decoding
(``WhisperModel.transcribe``) gives every window, within the segment's own audio:

- **beam search** (``final_beam_size``, 5 as offline);
- **the channel's previous text as the prompt** (``prompt_previous``): the accepted finals of the same
  channel, Whisper reading them first as offline does with ``condition_on_previous_text``: names and
  words said before are heard again the same way, and a segment that continues a sentence continues it;
- **the pause before the segment** (``DecodeRequest.context``): speech too soft for the VAD is often
  there (a quiet "ask not", the start of a sentence on an 8 kHz line), and its words then belong to the
  segment (their times are clipped to it);
- **a retry hearing the end of the previous segment** when the filter rejects the first decode and that
  segment ended less than ``context_s`` before this one (its words left out: the recogniser's
  ``context_s``): alone, "ask not" came out as "S NOT!" and was dropped; after "And so my fellow
  Americans" it is heard right. The previous speech is not heard on the first try because Whisper
  merges a phrase said twice ("Hello? ... Hello?") into one;
- **a greedy retry** when the beam's decode is rejected: beam search now and then ends at once ("."
  for a whole turn), where the greedy path reads the words;
- **temperature fallback** (``fallback_temperatures``) when the decode went wrong rather than heard
  nothing (faster-whisper's rule: too repetitive, or a low log-probability without Whisper judging the
  audio silent): sampled again at rising temperatures, the prompt left out above 0.5 (as
  faster-whisper's ``prompt_reset_on_temperature``), until the filter accepts one.

**A committed prefix** (``DecodeRequest.committed``; ``channel``: commits at pauses): a partial of a segment
whose first sentences were already decoded as a final would decode them (a speculation in a pause)
decodes only the audio after them, and its result is joined to theirs (``join``). Finals always decode
their whole segment.

**No silent loss**: a final whose every decode is rejected although the VAD heard at least
``unheard_min_speech_s`` of speech is still sent, with empty text and the reason (``unheard_reason``),
so that a turn nobody could transcribe is visible (and counted) rather than gone.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from asr_service.hallucination import FilterConfig, judge
from asr_service.prosody import ProsodyFeatures, analyze
from asr_service.recognizer import Recognition, WhisperRecognizer, compression_ratio
from asr_service.vad import SAMPLE_RATE

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
SAMPLES_PER_MS = SAMPLE_RATE // 1000


@dataclass(frozen=True)
class DecodingConfig:
    final_beam_size: int = 5
    """Beam width of a final's decodes (partials are greedy)."""
    prompt_previous: bool = False
    """Finals read the channel's previous accepted text first (see the module docstring). Off: measured
    on tiny.en it did not help (asr_dev 5.01 % at 16 kHz against 4.78 % without) and it lost words on
    short segments at 8 kHz (JFK: "ask what you can do" became "can do" after a prompt ending "for you")."""
    prompt_max_chars: int = 1_000
    """The end of the channel's text kept for the prompt (the recogniser keeps its last 223 tokens)."""
    fallback_temperatures: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
    """Sampling temperatures tried, in order, when a final's decode went wrong; () turns it off."""
    unheard_min_speech_s: float = 1.0
    """A rejected final this long is sent empty with its reason instead of being dropped."""


@dataclass(frozen=True)
class DecodeRequest:
    """A stretch of one channel's audio to decode: a segment so far (partial) or whole (final)."""

    channel: int
    segment: int
    """Internal segment number within the channel (every VAD segment, whether it yields text or not)."""
    is_final: bool
    start_sample: int
    """Position of ``audio[0]`` in the channel, 16 kHz samples from the start of the call."""
    audio: FloatArray
    context: FloatArray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    """Audio just before ``audio`` (finals; see the module docstring)."""
    context_transcribed: int = 0
    """Samples at the start of ``context`` that the previous segment covered; after them, the pause."""
    probe: bool = False
    """A partial asked for by the early end (``channel``), not by the partial cadence: its text decides
    whether the segment ends early; shown like any partial, but not when partials are off."""
    speculative: bool = False
    """A final decoded before the VAD has ended its segment (``channel``'s speculative final): it is sent
    only as the final it turns out to be (``adopt``), or thrown away; it adds nothing to ``ChannelText``
    itself."""
    committed: DecodeResult | None = None
    """A partial's: the open segment's committed prefix (``channel``: commits at pauses), the result of its
    speech before ``start_sample``, decoded as a final would decode it. This request's audio is the rest
    of the segment, and its result is joined to that prefix (``join``)."""

    @property
    def start_ms(self) -> int:
        return self.start_sample // SAMPLES_PER_MS

    @property
    def heard_start_sample(self) -> int:
        """Position of the first sample the recogniser hears (context included)."""
        return self.start_sample - len(self.context)

    @property
    def end_sample(self) -> int:
        """The channel position just after ``audio``."""
        return self.start_sample + len(self.audio)

    @property
    def end_ms(self) -> int:
        return self.end_sample // SAMPLES_PER_MS

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE


class ChannelText:
    """The accepted finals of one channel, for the next final's prompt.

    Written and read only by the decodes of one call, which run one at a time and in order on the
    inference thread; the lock only guards against a misuse costing a torn read."""

    def __init__(self, max_chars: int = DecodingConfig.prompt_max_chars) -> None:
        self._max_chars = max_chars
        self._text = ""
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            self._text = f"{self._text} {text.strip()}".strip()[-self._max_chars :]

    def text(self) -> str:
        with self._lock:
            return self._text


@dataclass(frozen=True)
class Word:
    text: str
    start_ms: int
    end_ms: int
    probability: float


@dataclass(frozen=True)
class DecodeResult:
    """What the inference thread made of a request."""

    request: DecodeRequest
    recognition: Recognition
    rejected: str | None
    """Why the text was dropped (hallucination filter), or None."""
    words: tuple[Word, ...]
    prosody: ProsodyFeatures | None
    decode_ms: float
    """Wall time of the decode (recognition, filter, prosody) on the inference thread. (Not CPU time:
    CTranslate2 computes on a worker thread of its own.)"""
    attempts: int = 1
    """Whisper decodes it took (retries and temperature fallback included)."""
    unheard: bool = False
    """A final rejected although the VAD heard ``unheard_min_speech_s`` of speech: sent empty with
    ``rejected`` as the reason rather than dropped."""

    @property
    def accepted_text(self) -> str:
        """The text, or "" when the filter rejected it (what a channel is told of a partial or a
        speculation)."""
        return self.recognition.text if self.rejected is None else ""


def same_decode(a: DecodeRequest, b: DecodeRequest) -> bool:
    """``a`` and ``b`` are decoded alike: the same channel, segment and kind, the same audio and context
    (a speculative final and the final it stands for), whatever else marks them."""
    return (
        (a.channel, a.segment, a.is_final, a.start_sample, a.context_transcribed)
        == (b.channel, b.segment, b.is_final, b.start_sample, b.context_transcribed)
        and a.committed is b.committed
        and np.array_equal(a.audio, b.audio)
        and np.array_equal(a.context, b.context)
    )


def adopt(
    speculative: DecodeResult, final: DecodeRequest, channel_text: ChannelText | None = None
) -> DecodeResult:
    """The speculative decode's result as ``final``'s (``same_decode``): the accepted text goes to the
    channel's prompt now, as ``run_decode`` would have put it there. On the inference thread, in the
    final's turn, so that the channel's next final reads it."""
    if speculative.rejected is None and channel_text is not None:
        channel_text.add(speculative.recognition.text)
    return replace(speculative, request=final)


def join(committed: DecodeResult, rest: DecodeResult) -> DecodeResult:
    """A partial of the audio after the segment's committed prefix, joined to that prefix: a partial of the
    whole segment (its request from the segment's start, the texts one after the other). A rejected
    ``rest`` (the filter dropped what followed the pause, or nothing was said yet) stays rejected: like
    any rejected partial it is not shown, and decides no early end."""
    if rest.request.is_final:
        raise ValueError("only partials carry a committed prefix: a final decodes its whole segment")
    first, last = committed.request, rest.request
    whole = replace(
        last, start_sample=first.start_sample, audio=np.concatenate([first.audio, last.audio]), committed=None
    )
    if rest.rejected is not None:
        return replace(rest, request=whole)
    a, b = committed.recognition, rest.recognition
    text = f"{a.text} {b.text}".strip()
    n_a, n_b = len(a.text.split()), len(b.text.split())
    recognition = Recognition(
        text=text,
        words=(),
        no_speech_prob=min(a.no_speech_prob, b.no_speech_prob),
        avg_logprob=(a.avg_logprob * n_a + b.avg_logprob * n_b) / max(n_a + n_b, 1),  # by words, not tokens
        compression_ratio=compression_ratio(text),
        audio_s=whole.duration_s,
        loop_trimmed=a.loop_trimmed or b.loop_trimmed,
    )
    return DecodeResult(whole, recognition, None, (), None, rest.decode_ms, rest.attempts)


def needs_fallback(recognition: Recognition, config: FilterConfig | None = None) -> bool:
    """The decode went wrong rather than heard silence (faster-whisper's rule for temperature
    fallback): too repetitive, or a low log-probability while Whisper does not judge the audio silent."""
    c = config or FilterConfig()
    r = recognition
    if r.compression_ratio > c.max_compression_ratio:
        return True
    return r.avg_logprob < c.logprob_threshold and r.no_speech_prob <= c.no_speech_threshold


def run_decode(
    recognizer: WhisperRecognizer,
    request: DecodeRequest,
    filter_config: FilterConfig | None = None,
    decoding: DecodingConfig | None = None,
    channel_text: ChannelText | None = None,
) -> DecodeResult:
    """Recognise, judge and (for an accepted final) measure prosody; runs on the inference thread."""
    started = time.perf_counter()
    if request.is_final:
        recognition, heard_from, rejected, attempts = _decode_final(
            recognizer, request, filter_config, decoding or DecodingConfig(), channel_text
        )
    else:
        recognition, heard_from = _recognize(recognizer, request, with_previous=False)
        rejected, attempts = judge(recognition, filter_config), 1
    return _result(request, recognition, heard_from, rejected, attempts, started, decoding, channel_text)


def run_partial_batch(
    recognizer: WhisperRecognizer,
    requests: list[DecodeRequest],
    filter_config: FilterConfig | None = None,
) -> list[DecodeResult]:
    """Partials (of different calls) recognised in one batch (``WhisperRecognizer.recognize_batch``),
    each then judged and made a result as ``run_decode`` makes a partial's; in order. ``decode_ms`` is
    the batch's wall time: each waited for all of it."""
    if any(r.is_final for r in requests):
        raise ValueError("only partials are decoded in batches: a final's text must be as decoded alone")
    started = time.perf_counter()
    heard = [_heard(r, with_previous=False) for r in requests]
    recognitions = recognizer.recognize_batch([audio for audio, _ in heard])
    return [
        _result(request, recognition, heard_from, judge(recognition, filter_config), 1, started)
        for request, recognition, (_, heard_from) in zip(requests, recognitions, heard, strict=True)
    ]


def _result(
    request: DecodeRequest,
    recognition: Recognition,
    heard_from: int,
    rejected: str | None,
    attempts: int,
    started: float,
    decoding: DecodingConfig | None = None,
    channel_text: ChannelText | None = None,
) -> DecodeResult:
    """The request's result from its recognition: words in call time, prosody of an accepted final; a
    partial after a committed prefix joined to it (``join``)."""
    # Within the segment: word alignment stretches the first word over the silence heard before it.
    words = _clip_words(
        tuple(
            Word(
                w.text,
                (heard_from + int(round(w.start_s * SAMPLE_RATE))) // SAMPLES_PER_MS,
                (heard_from + int(round(w.end_s * SAMPLE_RATE))) // SAMPLES_PER_MS,
                w.probability,
            )
            for w in recognition.words
        ),
        request.start_ms,
        request.end_ms,
    )
    prosody = None
    if request.is_final and rejected is None:
        span = (words[-1].end_ms - words[0].start_ms) / 1000.0 if words else None
        prosody = analyze(request.audio, n_words=len(recognition.text.split()), speech_span_s=span)
        if channel_text is not None and not request.speculative:
            channel_text.add(recognition.text)
    unheard = bool(
        request.is_final
        and rejected
        and request.duration_s >= (decoding or DecodingConfig()).unheard_min_speech_s
    )
    if rejected:
        log.debug(
            "segment %d.%d dropped after %d decodes: %s (%r)",
            request.channel,
            request.segment,
            attempts,
            rejected,
            recognition.text,
        )
    decode_ms = (time.perf_counter() - started) * 1000.0
    result = DecodeResult(request, recognition, rejected, words, prosody, decode_ms, attempts, unheard)
    return result if request.committed is None else join(request.committed, result)


def _decode_final(
    recognizer: WhisperRecognizer,
    request: DecodeRequest,
    filter_config: FilterConfig | None,
    config: DecodingConfig,
    channel_text: ChannelText | None,
) -> tuple[Recognition, int, str | None, int]:
    """The final's recognition, where its heard audio starts, why it is rejected (or None), and the
    number of decodes (see the module docstring for the order of the tries)."""
    prompt = channel_text.text() if channel_text is not None and config.prompt_previous else ""
    beam = config.final_beam_size
    recognition, heard_from = _recognize(recognizer, request, with_previous=False, prompt=prompt, beam=beam)
    rejected, attempts = judge(recognition, filter_config), 1
    if rejected and request.context_transcribed:  # heard after the previous speech, it may be clear
        retry, retry_from = _recognize(recognizer, request, with_previous=True, prompt=prompt, beam=beam)
        attempts += 1
        if judge(retry, filter_config) is None:
            return retry, retry_from, None, attempts
    if rejected and beam > 1:
        # Beam search now and then settles on ending at once ("." for a whole 5 s turn at 8 kHz, with
        # no_speech_prob 0.17), where the greedy path reads the words: try it before sampling.
        retry, retry_from = _recognize(recognizer, request, with_previous=False, prompt=prompt, beam=1)
        attempts += 1
        if judge(retry, filter_config) is None:
            return retry, retry_from, None, attempts
    if rejected and needs_fallback(recognition, filter_config):
        for temperature in config.fallback_temperatures:
            retry, retry_from = _recognize(
                recognizer,
                request,
                with_previous=False,
                prompt=prompt if temperature <= 0.5 else "",
                temperature=temperature,
            )
            attempts += 1
            verdict = judge(retry, filter_config)
            if verdict is None:
                return retry, retry_from, None, attempts
            if not needs_fallback(retry, filter_config):
                break  # this decode heard silence or a stock phrase: hotter ones will not do better
    return recognition, heard_from, rejected, attempts


def _recognize(
    recognizer: WhisperRecognizer,
    request: DecodeRequest,
    *,
    with_previous: bool,
    prompt: str = "",
    beam: int = 1,
    temperature: float = 0.0,
) -> tuple[Recognition, int]:
    """The segment heard with the pause before it, and with the end of the previous segment too if
    ``with_previous`` (its words left out); and the channel position of the first sample heard."""
    heard, heard_from = _heard(request, with_previous=with_previous)
    recognition = recognizer.recognize(
        heard,
        word_timestamps=request.is_final,
        context_s=request.context_transcribed / SAMPLE_RATE if with_previous else 0.0,
        prompt=prompt,
        beam_size=beam,
        temperature=temperature,
    )
    return recognition, heard_from


def _heard(request: DecodeRequest, *, with_previous: bool) -> tuple[FloatArray, int]:
    """What the recogniser hears (see ``_recognize``) and the channel position of its first sample."""
    skip = 0 if with_previous else request.context_transcribed
    heard = np.concatenate([request.context[skip:], request.audio]) if len(request.context) else request.audio
    return heard, request.heard_start_sample + skip


def _clip_words(words: tuple[Word, ...], start_ms: int, end_ms: int) -> tuple[Word, ...]:
    out = []
    for w in words:
        a = min(max(w.start_ms, start_ms), end_ms)
        out.append(Word(w.text, a, min(max(w.end_ms, a), end_ms), w.probability))
    return tuple(out)
