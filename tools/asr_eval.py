"""Word error rate of the ASR, as the field measures it: `callsense evaluate-asr`.

Three sets of real speech from ``../shared/data/speech`` (never a public test split):

- ``asr``: five clips (LJSpeech and the JFK excerpt), 91 words;
- ``asr_dev``: 24 LJSpeech clips (LJ001-0009..0032), about three minutes;
- ``ravdess``: RAVDESS actors 01-18, the clips whose index is 2 modulo 6 (90 clips, 540 words, every
  actor): emotional speech, held out from the choice of the VAD's thresholds (made on 0 and 1 modulo 3).

Each clip is transcribed at 16 kHz PCM and over a phone line (resampled to 8 kHz and G.711 mu-law encoded
by ``asr_service.audio``, as a carrier would), through

- ``streaming``: the service's own path (``transcribe_bytes``: audio decoder, resampler, Silero VAD,
  Whisper on each segment, hallucination filter), fed as fast as it goes;
- ``offline``: faster-whisper's stock ``WhisperModel.transcribe`` on the whole clip with its defaults
  (beam 5, temperature fallback, conditioned on the previous text), what a user compares against.

Both texts and the reference go through Whisper's English text normaliser (the ``whisper-normalizer``
package: "1455" and "fourteen fifty-five" agree, "Mr." and "mister" too); WER is the word-level edit
distance summed over a set's clips over its reference words.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from asr_service.audio import MULAW_TO_PCM16, AudioSpec, Encoding, mulaw_encode, resample, to_float
from asr_service.recognizer import WhisperRecognizer
from asr_service.streaming import StreamingConfig
from asr_service.transcribe_file import LoadedAudio, load_audio, transcribe_bytes

SETS = ("asr", "asr_dev", "ravdess")
RATES = ("16k", "8k-mulaw")
DECODERS = ("streaming", "offline")
RAVDESS_SENTENCES = {"01": "Kids are talking by the door", "02": "Dogs are sitting by the door"}
RAVDESS_HELD_OUT = slice(2, None, 6)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Clip:
    id: str
    audio: LoadedAudio
    reference: str


@dataclass(frozen=True)
class Heard:
    """One clip's reference and what a decoder made of it."""

    clip_id: str
    reference: str
    hypothesis: str
    errors: int
    reference_words: int


@dataclass(frozen=True)
class WerRow:
    """A set at one rate through one decoder."""

    set_name: str
    rate: str
    decoder: str
    heard: tuple[Heard, ...]

    @property
    def errors(self) -> int:
        return sum(h.errors for h in self.heard)

    @property
    def reference_words(self) -> int:
        return sum(h.reference_words for h in self.heard)

    @property
    def wer_percent(self) -> float:
        return 100.0 * self.errors / max(self.reference_words, 1)


# ------------------------------------------------------------------------------------ text


@functools.cache
def _normaliser() -> Callable[[str], str]:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError as exc:  # a dev dependency: serving never needs it
        raise RuntimeError("WER needs the whisper-normalizer package: pip install 'callsense[dev]'") from exc
    normalise: Callable[[str], str] = EnglishTextNormalizer()
    return normalise


def normalised_words(text: str) -> list[str]:
    """``text`` as Whisper's English normaliser writes it, split into words."""
    return _normaliser()(text).split()


def reference_words(reference: str) -> list[str]:
    """A human transcript's words, normalised. The normaliser drops whatever is in brackets or
    parentheses (Whisper's "(laughs)", "[Music]"); in a human transcript they are punctuation around
    words that were said ("(which also was printed at Maintz ...)"), so they become spaces first."""
    return normalised_words(re.sub(r"[()\[\]]", " ", reference))


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Substitutions + deletions + insertions between the normalised texts, and the reference's words."""
    ref = reference_words(reference)
    return _edit_distance(ref, normalised_words(hypothesis)), len(ref)


def errors_after(reference: str, hypothesis: str, first_words: int) -> int:
    """The word errors of ``hypothesis`` on ``reference`` past its first ``first_words`` words (a phrase
    measured apart, such as one only heard right with the speech after it). The hypothesis is split where
    the two parts' errors sum least, which is ``word_errors``; of equal splits, the one charging the later
    part least, so the opening's own mistakes stay with it."""
    ref, hyp = reference_words(reference), normalised_words(hypothesis)
    if first_words <= 0:  # nothing set apart: words made up before the first one are errors too
        return _edit_distance(ref, hyp)
    # Every split at once, in two passes: the opening against each prefix of the hypothesis, and the rest
    # against each suffix (both read backwards, the same table).
    opening = _distances_to_prefixes(ref[:first_words], hyp)
    rest = _distances_to_prefixes(ref[first_words:][::-1], hyp[::-1])[::-1]
    return min(zip(opening, rest, strict=True), key=lambda split: (split[0] + split[1], split[1]))[1]


def _edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Substitutions + deletions + insertions turning ``ref`` into ``hyp``."""
    return _distances_to_prefixes(ref, hyp)[-1]


def _distances_to_prefixes(ref: Sequence[str], hyp: Sequence[str]) -> list[int]:
    """The edit distance from ``ref`` to each prefix of ``hyp`` (``hyp[:0]`` to all of it): the last row of
    the table, one row kept."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row


def corpus_wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Errors over reference words across all clips, in percent."""
    counts = [word_errors(r, h) for r, h in zip(references, hypotheses, strict=True)]
    return 100.0 * sum(e for e, _ in counts) / max(sum(n for _, n in counts), 1)


# ------------------------------------------------------------------------------------ sets


class SetAbsent(LookupError):
    """The set's files are not in the shared data directory."""


def load_set(name: str, shared_data: Path) -> list[Clip]:
    """The clips of one of ``SETS``; ``SetAbsent`` if its folder is missing."""
    speech = shared_data / "speech"
    if name in ("asr", "asr_dev"):
        folder = speech / name
        manifest = folder / "manifest.tsv"
        if not manifest.is_file():
            raise SetAbsent(f"{manifest} not found")
        with manifest.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        # The two manifests name the audio column differently.
        return [
            Clip(row["id"], load_audio(folder / (row.get("file") or row["audio"])), row["reference"])
            for row in rows
        ]
    if name == "ravdess":
        folder = speech / "emotion" / "ravdess"
        files = sorted(folder.glob("*.flac"))[RAVDESS_HELD_OUT]
        if not files:
            raise SetAbsent(f"no RAVDESS clips in {folder}")
        # File names are MM-VC-EE-II-SS-RR-AA: SS is the sentence.
        return [Clip(f.stem, load_audio(f), RAVDESS_SENTENCES[f.name.split("-")[4]]) for f in files]
    raise ValueError(f"unknown set {name!r}: one of {', '.join(SETS)}")


# ------------------------------------------------------------------------------------ decoding


def telephone(audio: LoadedAudio) -> tuple[bytes, FloatArray]:
    """The clip as a phone line carries it (8 kHz G.711 mu-law bytes), and those bytes decoded back to
    16 kHz float32 (what an offline decoder of the same call would get)."""
    narrow = resample(to_float(audio.mono()), audio.sample_rate_hz, 8000)
    mulaw = mulaw_encode(np.round(np.clip(narrow, -1.0, 32767 / 32768) * 32768.0).astype(np.int16))
    return mulaw.tobytes(), resample(to_float(MULAW_TO_PCM16[mulaw]), 8000)


def streaming_text(
    audio: LoadedAudio, rate: str, recognizer: WhisperRecognizer, config: StreamingConfig | None = None
) -> str:
    """The clip (downmixed) through the service's streaming path at ``rate``."""
    if rate == "16k":
        mono = audio.mono()
        spec = AudioSpec(Encoding.PCM16, audio.sample_rate_hz, 1)
        data = mono.astype("<i2").tobytes()
    else:
        data, _ = telephone(audio)
        spec = AudioSpec(Encoding.MULAW, 8000, 1)
    return transcribe_bytes(data, spec, roles=["mixed"], recognizer=recognizer, config=config).text


def offline_text(audio: LoadedAudio, rate: str, model: Any) -> str:
    """faster-whisper's stock transcription (its defaults) of the whole clip at ``rate``."""
    samples = audio.mono_16k() if rate == "16k" else telephone(audio)[1]
    segments, _ = model.transcribe(samples, language="en")
    return " ".join(s.text.strip() for s in segments if s.text.strip())


def measure(
    clips: Sequence[Clip], set_name: str, rate: str, decoder: str, transcribe: Callable[[LoadedAudio], str]
) -> WerRow:
    heard = []
    for clip in clips:
        hypothesis = transcribe(clip.audio)
        errors, n = word_errors(clip.reference, hypothesis)
        heard.append(Heard(clip.id, clip.reference, hypothesis, errors, n))
    return WerRow(set_name, rate, decoder, tuple(heard))


def table(rows: Sequence[WerRow], model_name: str) -> str:
    """A Markdown table: one line per set and rate, streaming and offline WER side by side."""
    by_key = {(r.set_name, r.rate, r.decoder): r for r in rows}
    lines = [
        "| model | set | rate | words | streaming WER | offline WER | gap |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for set_name in SETS:
        for rate in RATES:
            s, o = by_key.get((set_name, rate, "streaming")), by_key.get((set_name, rate, "offline"))
            if s is None and o is None:
                continue
            words = (s or o).reference_words  # type: ignore[union-attr]
            cells = [f"{x.wer_percent:.2f} %" if x else "-" for x in (s, o)]
            gap = f"{s.wer_percent - o.wer_percent:+.2f}" if s and o else "-"
            lines.append(
                f"| {model_name} | {set_name} | {rate} | {words} | {cells[0]} | {cells[1]} | {gap} |"
            )
    return "\n".join(lines)


def misheard(rows: Sequence[WerRow]) -> str:
    """Every clip a decoder got wrong, reference against hypothesis."""
    out = []
    for row in rows:
        for h in row.heard:
            if h.errors:
                where = f"{row.set_name} {row.rate} {row.decoder} {h.clip_id}"
                out.append(
                    f"{where} ({h.errors} of {h.reference_words})\n"
                    f"  ref: {h.reference}\n  hyp: {h.hypothesis}"
                )
    return "\n".join(out)
