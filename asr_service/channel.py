"""One channel of a call: the VAD's segments, and when to decode them (plain synchronous logic).

The VAD cuts the channel's 16 kHz stream into segments; while a segment is open a partial decode of
everything heard so far is requested every ``partial_interval_s`` (the first once it holds
``min_partial_s``), and the final decode as soon as the VAD ends the segment (``VadConfig.min_silence_ms``
of silence, 500 ms by default). Audio outside segments is never decoded: silence and noise cost only the
front end (audio decoding, resampling and the VAD: 2-5 ms of CPU per second of audio).

A final's request also carries the pause before its segment, as far back as the end of the previous
segment and at most ``context_s``, and says how much of that the previous segment covered (see
``decoding`` for what the decoder does with it).

**Early end** (``early_end_ms``, issue 17): the 500 ms of silence the VAD waits for is most of the time
from the end of speech to the final. Once an open segment has been silent for half of ``early_end_ms``
and no partial has heard all of its speech yet, a partial is asked for (the settling partial); once it
has been silent for ``early_end_ms``, a probe (a partial of the segment so far). When the probe's text
comes back (``note_partial``) and it is stable (the same words as the partial before it: the silence
added none), ends like a finished sentence (. ? !, which Whisper writes; not an ellipsis), and the
silence still holds, the segment ends there: the VAD ends it as the long silence would have, at the
last speech plus ``VadConfig.pad_ms``, so the final hears exactly the audio it would have heard, and the
rest of the silence starts nothing. Otherwise the segment waits for the VAD as before. A segment that
is cut this way while its speaker was only pausing goes on as a new segment (a mid-sentence cut; see
bench/endpointing.py for how often). Both extra partials are greedy decodes of the segment so far;
they are sent as partials when partials are on.

**Speculative final** (``speculative_final_ms``): the final's audio is complete once the segment has
been silent for ``VadConfig.pad_ms`` (the segment ends at the last speech plus the pad); the rest of
``min_silence_ms`` only confirms the end. So once the silence has lasted ``speculative_final_ms`` (the
pad by default) the final is asked for at once, marked ``speculative``: the same request the end will
make (audio, context, segment). When the VAD then ends the segment at that sample, the final it asks for
is decoded alike (``decoding.same_decode``), and the caller answers it with the speculative decode,
done or running, instead of decoding again (``streaming``): up to ``min_silence_ms - pad_ms`` sooner,
the same text. When the speaker goes on first, the speculation is thrown away (``speculation`` no
longer names it): no event is ever sent for it, and the caller skips or replaces its decode if it has
not started (a later pause may speculate again). While a speculation stands no partial is asked for:
the silence adds no words, and the thread should be free when the final is due.

**Speculative end** (``speculative_end_ms``): the VAD's ``min_silence_ms`` sets a floor under end of
speech -> final (the final cannot come before the segment ends, however fast the speculation was
decoded). When the speculation's text comes back (``note_speculation``) and ends like a finished
sentence, the segment ends as soon as its silence has lasted ``speculative_end_ms`` (at once if it
already has), ended as the early end ends it (``StreamingVad.end_segment``: at the last speech plus the
pad), so the final is the speculation's request and takes its decode: no decode more than without it.
A speculation that does not read as a finished sentence ("We would need a discount to", "...") leaves
the segment to the VAD. A speaker who goes on after such a sentence starts a new segment, whose final
hears the end of this one as its context.

**Commits at pauses** (``commit_at_pauses``, on by default): a speaker who pauses between sentences for
more than the pad but less than ``min_silence_ms`` keeps one segment going; every such pause costs a
speculative final that is then thrown away, and each partial after it decodes the segment from its
start again, so a long turn's partials cost its length squared. When the speaker goes on after a pause
whose speculation came back (``note_speculation``, before or after the speech resumed) reading as a
finished sentence, that result becomes the segment's committed prefix: the partials after it (on the
same cadence as before) decode only the audio after it, with no context, carrying it along
(``DecodeRequest.committed``), and their results are joined to it (``decoding.join``), so they show
the whole segment, its first sentences as a final reads them. A speculation still queued when the
speaker goes on is skipped or replaced (``streaming``), not committed: under load fewer pauses commit.
Finals and speculations still decode the whole segment: splitting a final's decode at such a
pause read 16 kHz speech better but lost words at 8 kHz, where read speech pauses at its commas and
Whisper writes a full stop there (bench/endpointing.py --commits, README: Latency and capacity).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from asr_service.decoding import DecodeRequest, DecodeResult, DecodingConfig, same_decode
from asr_service.hallucination import FilterConfig, normalise
from asr_service.recognizer import MAX_AUDIO_S
from asr_service.vad import SAMPLE_RATE, SpeechEnd, SpeechStart, StreamingVad, VadConfig

FloatArray = npt.NDArray[np.float32]
MAX_AUDIO_SAMPLES = int(MAX_AUDIO_S * SAMPLE_RATE)


@dataclass(frozen=True)
class StreamingConfig:
    vad: VadConfig = field(default_factory=VadConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """How finals are decoded (beam, the channel's previous text as prompt, temperature fallback)."""
    partials: bool = True
    partial_interval_s: float = 1.0
    """Time between two partial decodes of an open segment."""
    min_partial_s: float = 1.0
    """Audio a segment must hold before its first partial (shorter ones are mostly one word)."""
    context_s: float = 2.0
    """Audio before a segment that its final's decode may hear (0: none); see the module docstring."""
    history_s: float = 1.0
    """Audio kept before an open segment (or the present, between segments), on top of ``context_s``:
    VAD padding + min speech + a window, with room."""
    gap_tolerance_ms: int = 250
    """A chunk's timestamp this far ahead of the samples counted means lost audio."""
    early_end_ms: int = 0
    """Silence after which a segment whose text is stable and ends a sentence ends without waiting for
    ``vad.min_silence_ms`` (see the module docstring); 0: off. At least ``vad.pad_ms`` (the final must
    hear the same audio as after a normal end), less than ``vad.min_silence_ms``. Off by default: on
    asr_dev at 16 kHz (bench/endpointing.py) 200 ms ended 2 of 24 turns early, one of them mid-sentence,
    WER 5.24 -> 5.47 %, and end of speech -> final got slower (p50 1103 -> 1310 ms, p95 1476 -> 2341 ms):
    the extra partials hold the one inference thread when the final is due, and a partial of a long
    segment takes longer than the 300 ms it could save."""

    speculative_end_ms: int = 0
    """Silence after which a segment whose speculative final reads as a finished sentence ends without
    waiting for ``vad.min_silence_ms`` (see the module docstring); 0: off. Needs speculative finals, and
    at least their silence, less than ``vad.min_silence_ms``; not with ``early_end_ms``. Off by default:
    on RAVDESS (short single sentences) 300 ms brought end of speech -> final p50 from 552 to 441 ms with
    no cut, and live at 2 calls p95 from 651-906 to 556-625 ms (three runs each), but read speech pauses
    at its commas and Whisper writes a full stop there: on asr_dev (24 read sentences) it ended 31
    segments early, 14 of them cuts (the reader went on within 700 ms), and at 8 kHz cost words
    (bench/endpointing.py, README: Latency and capacity). For short conversational turns:
    ``python -m asr_service --speculative-end-ms 300``."""

    speculative_final_ms: int | None = None
    """Silence after which the open segment's final is decoded already, before the VAD ends the segment
    (see the module docstring); None: at ``vad.pad_ms``, once the final's audio is complete; 0: off.
    Else within ``vad.pad_ms``..``vad.min_silence_ms`` - 1. On by default: on asr_dev at 16 kHz
    (bench/endpointing.py, one call) end of speech -> final p50 1137 -> 765 ms, p95 1658 -> 1095 ms, every
    clip sooner, the same text for all 24 clips, for 10 % more decodes (speculations made in pauses);
    at 8 kHz mu-law p50 1128 -> 772 ms, p95 1603 -> 997 ms, again the same text. 300 ms saved less."""

    commit_at_pauses: bool = True
    """A speculative final decoded in a pause that reads as a finished sentence becomes the segment's
    committed prefix when the speaker goes on (see the module docstring): later partials decode only the
    audio after it. Finals are not changed by it."""

    partial_batch: int = 1
    """Most partials of different calls decoded as one batch (``scheduler.Batch``); 1: each alone. Set by
    ``python -m asr_service --partial-batch N`` (``callsense up --asr-partial-batch N``). Off by default:
    a batch of 4 costs 0.67x the CPU per partial (bench/asr_batching.py), but live (bench/live_audio.py,
    one worker) the freed time goes to more partials while a final waits behind a longer job: at 8 calls
    end of speech -> score p50 1496-1529 ms alone against 1643-1778 ms in batches of 4 (p95 2431-3058
    against 2776-4256); only at 2 calls was it better (p95 1211 -> 1020 ms, one run each)."""

    @property
    def speculate_after_ms(self) -> int:
        """The silence that makes a speculative final due; 0: never (off, or the pad is the whole
        ``min_silence_ms``, so the end comes with the audio anyway)."""
        ms = self.vad.pad_ms if self.speculative_final_ms is None else self.speculative_final_ms
        return ms if ms < self.vad.min_silence_ms else 0

    def validate(self) -> None:
        self.vad.validate()
        ms = self.speculative_final_ms
        if ms and not self.vad.pad_ms <= ms < self.vad.min_silence_ms:
            raise ValueError(
                "speculative_final_ms must be None (at vad.pad_ms), 0 (off) or within "
                f"vad.pad_ms..vad.min_silence_ms ({self.vad.pad_ms}..{self.vad.min_silence_ms - 1} ms): "
                "before the pad the final's audio is not complete"
            )
        if self.speculative_end_ms:
            if not self.speculate_after_ms:
                raise ValueError("speculative_end_ms needs speculative finals (speculative_final_ms not 0)")
            if not self.speculate_after_ms <= self.speculative_end_ms < self.vad.min_silence_ms:
                raise ValueError(
                    "speculative_end_ms must be 0 (off) or within the speculation's silence.."
                    f"vad.min_silence_ms - 1 ({self.speculate_after_ms}..{self.vad.min_silence_ms - 1} ms)"
                )
            if self.early_end_ms:
                # The early end's probes are asked for while a speculation stands, and one of them could
                # be queued after the final that the speculation's text decides.
                raise ValueError("speculative_end_ms and early_end_ms are two ways to end early: one at most")
        if self.early_end_ms and not self.vad.pad_ms <= self.early_end_ms < self.vad.min_silence_ms:
            raise ValueError(
                "early_end_ms must be 0 (off) or within vad.pad_ms..vad.min_silence_ms "
                f"({self.vad.pad_ms}..{self.vad.min_silence_ms - 1} ms)"
            )


_CLOSING = "\"')]»”’"


def ends_sentence(text: str) -> bool:
    """``text`` ends like a finished sentence: . ? or ! (closing quotes aside), not an ellipsis."""
    t = text.strip().rstrip(_CLOSING)
    return t.endswith((".", "?", "!")) and not t.endswith("..")


def reads_finished(result: DecodeResult | None) -> bool:
    """A decode came back with words (accepted by the filter) that end like a finished sentence."""
    text = "" if result is None else result.accepted_text
    return bool(text and normalise(text) and ends_sentence(text))


class _AudioBuffer:
    """Recent samples of a channel addressed by absolute position; appends without re-copying."""

    def __init__(self) -> None:
        self._chunks: list[FloatArray] = []
        self._start = 0  # position of the first kept sample
        self._length = 0

    @property
    def start(self) -> int:
        return self._start

    @property
    def end(self) -> int:
        return self._start + self._length

    def append(self, samples: FloatArray) -> None:
        if len(samples):
            self._chunks.append(samples)
            self._length += len(samples)

    def skip(self, n: int) -> None:
        """Lost audio: forget everything, the next sample is at ``end + n``."""
        self._start = self.end + n
        self._chunks, self._length = [], 0

    def slice(self, start: int, end: int) -> FloatArray:
        start, end = max(start, self._start), min(end, self.end)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        self._compact()
        return self._chunks[0][start - self._start : end - self._start].copy()

    def trim_before(self, position: int) -> None:
        drop = min(position, self.end) - self._start
        if drop <= 0:
            return
        self._compact()
        self._chunks = [self._chunks[0][drop:]]
        self._start += drop
        self._length -= drop

    def _compact(self) -> None:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]


class ChannelDecoder:
    """One channel: VAD segments, and when to decode them (no threads, no model calls)."""

    def __init__(self, channel: int, vad: StreamingVad, config: StreamingConfig | None = None) -> None:
        self.channel = channel
        self.vad = vad
        self.config = config or StreamingConfig()
        self.config.validate()
        self._buffer = _AudioBuffer()
        self._segment = 0
        self._open_start: int | None = None
        self._previous_end = 0  # where the previous segment ended: its words are not transcribed again
        self._last_partial = 0
        self._partial_text = ""  # normalised text of the open segment's latest partial back
        self._probe: DecodeRequest | None = None  # the probe whose text is awaited
        self._probed_silence: int | None = None  # start of the silence the probe was taken in
        self.speech_s = 0.0
        """Seconds of audio sent to finals so far."""
        self.early_ends = 0
        """Segments ended early (see the module docstring)."""
        self._speculation: DecodeRequest | None = None
        self._speculated_silence: int | None = None  # start of the silence the speculation was made in
        self.speculations = 0
        """Speculative finals asked for (see the module docstring)."""
        self.speculations_matched = 0
        """Of those, the ones whose segment then ended at the same sample, by the VAD or by the speculative
        end (the rest were pauses)."""
        self._finished_speculation: DecodeRequest | None = None  # a speculation whose text ends a sentence
        self.speculative_ends = 0
        """Segments ended by their speculation's finished sentence (see the module docstring)."""
        self._speculation_result: DecodeResult | None = None  # the standing speculation's, once back
        self._dropped: DecodeRequest | None = None  # thrown away (the speaker went on), result awaited
        self._committed: DecodeResult | None = None  # the open segment's committed prefix
        self.commits = 0
        """Speculations that became their segment's committed prefix (see the module docstring)."""

    @property
    def position(self) -> int:
        """Samples of this channel so far (16 kHz), lost audio included."""
        return self._buffer.end

    @property
    def speculation(self) -> DecodeRequest | None:
        """The open segment's speculative final while it may still become the final (its silence holds);
        None once the segment has ended or the speaker went on. Read by the inference thread (one
        attribute read) to skip a speculation thrown away while its decode waited."""
        return self._speculation

    def push(self, samples: npt.ArrayLike) -> list[DecodeRequest]:
        """Take the next samples; the decodes they make due."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._buffer.append(x)
        requests = self._apply(self.vad.feed(x))
        if self._speculation is not None and self.vad.silence_start != self._speculated_silence:
            self._went_on()
        requests += self._speculative_end_due()
        requests += self._speculation_due()
        requests += self._partial_due()
        self._trim()
        return requests

    def skip(self, n_samples: int) -> list[DecodeRequest]:
        """``n_samples`` of audio were lost: an open segment ends before the gap."""
        requests = self._apply(self.vad.skip(n_samples))
        self._buffer.skip(n_samples)
        return requests

    def flush(self) -> list[DecodeRequest]:
        """End of the call: the open segment's final, if any."""
        requests = self._apply(self.vad.flush())
        self._trim()
        return requests

    def note_partial(self, request: DecodeRequest, text: str | None) -> list[DecodeRequest]:
        """The text a partial of this channel came back with ("" when the filter rejected it, None when
        it was dropped undecoded); the final of an early end when the probe's text decides one."""
        if request.is_final or request.segment != self._segment or self._open_start is None:
            return []  # that segment has ended since
        if request is not self._probe:
            if text is not None:
                self._partial_text = normalise(text)
            return []
        self._probe = None
        heard = normalise(text or "")
        before, self._partial_text = self._partial_text, heard
        if not (heard and heard == before and ends_sentence(text or "")):
            return []
        if self.vad.silence_start != self._probed_silence:
            return []  # the speaker went on while the probe was decoded
        end = self.vad.end_segment()
        if end is None:
            return []
        self.early_ends += 1
        return self._apply([end])

    def note_speculation(self, request: DecodeRequest, result: DecodeResult | None) -> list[DecodeRequest]:
        """What a speculative final of this channel came back with (None when it was skipped): the final
        of a speculative end when its text decides one; the segment's committed prefix when the speaker
        has gone on since and its text ends a sentence (see the module docstring)."""
        if request is self._dropped:
            self._dropped = None
            self._commit(request, result)
            return []
        if request is not self._speculation:
            return []  # the segment has ended since
        self._speculation_result = result
        if self.config.speculative_end_ms and reads_finished(result):
            self._finished_speculation = request
        return self._speculative_end_due()

    def _went_on(self) -> None:
        """The speaker went on after the standing speculation's silence: that silence was a pause. The
        speculation is thrown away, or committed (its result back, or when it comes)."""
        dropped, result = self._speculation, self._speculation_result
        self._speculation, self._speculation_result = None, None
        if result is not None:
            self._commit(dropped, result)
        else:
            self._dropped = dropped

    def _commit(self, request: DecodeRequest | None, result: DecodeResult | None) -> None:
        """``result`` (of ``request``, a speculation thrown away because the speaker went on) becomes the
        open segment's committed prefix if it reads as a finished sentence and the segment is still open."""
        if not (self.config.commit_at_pauses and self.config.partials) or request is None or result is None:
            return  # (without partials a prefix would serve nothing)
        if self._open_start is None or request.segment != self._segment:
            return  # that segment has ended
        if self._committed is not None and self._committed.request.end_sample >= request.end_sample:
            return  # a later pause was committed first
        if not reads_finished(result):
            return
        self._committed = result
        self.commits += 1

    def _speculative_end_due(self) -> list[DecodeRequest]:
        """The final of a speculative end, once its sentence is finished and the silence long enough."""
        silence = self.vad.silence_start
        if (
            self._speculation is None
            or self._finished_speculation is not self._speculation
            or silence is None
        ):
            return []
        if self.position - silence < self.config.speculative_end_ms * SAMPLE_RATE // 1000:
            return []
        end = self.vad.end_segment()
        if end is None:
            return []
        self.speculative_ends += 1
        return self._apply([end])

    def _apply(self, events: Sequence[SpeechStart | SpeechEnd]) -> list[DecodeRequest]:
        requests = []
        for event in events:
            self._probe, self._probed_silence, self._partial_text = None, None, ""
            self._finished_speculation = None
            speculation, self._speculation, self._speculated_silence = self._speculation, None, None
            self._speculation_result = None
            if isinstance(event, SpeechStart):
                self._open_start = event.sample
                self._last_partial = event.sample
                self._committed, self._dropped = None, None
            elif self._open_start is not None:
                final = self._request(event.sample, is_final=True)
                if speculation is not None and same_decode(speculation, final):
                    self.speculations_matched += 1
                requests.append(final)
                self.speech_s += (event.sample - self._open_start) / SAMPLE_RATE
                self._open_start = None
                self._committed, self._dropped = None, None
                self._previous_end = event.sample
                self._segment += 1
        return requests

    def _partial_due(self) -> list[DecodeRequest]:
        c = self.config
        start = self._open_start  # the cadence is the segment's, committed prefix or not
        if start is None:
            return []
        now = self.position
        if c.early_end_ms and self._probe is None:
            early = self._early_end_partial(now)
            if early is not None:
                return [early]
        # While the probe waits, no partial: a newer partial would replace it in the scheduler's queue.
        # Nor while a speculative final stands (see the module docstring).
        if not c.partials or self._probe is not None or self._speculation is not None:
            return []
        if now - start < c.min_partial_s * SAMPLE_RATE or now - self._last_partial < c.partial_interval_s * (
            SAMPLE_RATE
        ):
            return []
        self._last_partial = now
        return [self._request(now, is_final=False)]

    def _speculation_due(self) -> list[DecodeRequest]:
        """The speculative final, once the open segment's silence has lasted long enough (see the module
        docstring); one per silence."""
        after_ms = self.config.speculate_after_ms
        silence, end = self.vad.silence_start, self.vad.pending_end
        if not after_ms or self._open_start is None or silence is None or end is None:
            return []
        if silence == self._speculated_silence or self.position - silence < after_ms * SAMPLE_RATE // 1000:
            return []
        if end > self.position:  # a pad longer than the silence so far: the audio is not all here
            return []
        self._speculated_silence = silence
        self._speculation = replace(self._request(end, is_final=True), speculative=True)
        self.speculations += 1
        return [self._speculation]

    def _early_end_partial(self, now: int) -> DecodeRequest | None:
        """The settling partial or the probe, when the silence at the end of the segment makes one due."""
        silence = self.vad.silence_start
        if silence is None or silence == self._probed_silence:
            return None
        silent_ms = (now - silence) * 1000 // SAMPLE_RATE
        if silent_ms >= self.config.early_end_ms:
            self._probed_silence = silence
            self._last_partial = now
            self._probe = self._request(now, is_final=False, probe=True)
            return self._probe
        # The probe is compared with the partial before it, so that one must have heard all the
        # speech too (the cadence's last partial is up to a second old); the wait of half the early
        # end keeps the short gaps between words from asking for one.
        if silent_ms >= self.config.early_end_ms // 2 and self._last_partial < silence:
            self._last_partial = now
            return self._request(now, is_final=False, probe=True)
        return None

    def _request(self, end: int, *, is_final: bool, probe: bool = False) -> DecodeRequest:
        """The open segment's audio up to ``end``: a final's (or speculation's) all of it, a partial's
        what follows the committed prefix, if any (carried along)."""
        committed = None if is_final else self._committed
        start = self._open_start if committed is None else committed.request.end_sample
        if start is None:
            raise RuntimeError("a decode was asked for with no segment open")
        audio = self._buffer.slice(start, end)
        start = max(start, end - len(audio))  # the buffer may hold less than asked right after a gap
        if not is_final or self.config.context_s <= 0:
            return DecodeRequest(
                self.channel, self._segment, is_final, start, audio, probe=probe, committed=committed
            )
        # Context and segment together fit the recogniser's window.
        context_samples = min(int(self.config.context_s * SAMPLE_RATE), MAX_AUDIO_SAMPLES - len(audio))
        context = self._buffer.slice(start - max(context_samples, 0), start)
        transcribed = min(max(self._previous_end - (start - len(context)), 0), len(context))
        return DecodeRequest(self.channel, self._segment, is_final, start, audio, context, transcribed)

    def _trim(self) -> None:
        history = int((self.config.history_s + self.config.context_s) * SAMPLE_RATE)
        keep = (self._open_start if self._open_start is not None else self.position) - history
        # Trim only once twice the history has piled up: compacting on every 20 ms chunk would copy
        # the whole history fifty times a second.
        if keep - self._buffer.start >= history:
            self._buffer.trim_before(keep)
