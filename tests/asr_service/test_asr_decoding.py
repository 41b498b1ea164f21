"""How a final is decoded: beam search, the restart guard, the prompt, temperature fallback, and a final
for every turn with speech (asr_service/decoding.py, the guards of asr_service/recognizer.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from asr_service.audio import AudioSpec, Encoding, mulaw_encode, resample
from asr_service.decoding import (
    ChannelText,
    DecodeRequest,
    DecodingConfig,
    needs_fallback,
    run_decode,
    run_partial_batch,
)
from asr_service.recognizer import Recognition, WhisperRecognizer, restart_start
from asr_service.streaming import SegmentNumbering, pcm16_spec
from asr_service.transcribe_file import transcribe_bytes
from tests.support.audio import (
    SENTENCE_A,
    SENTENCE_B,
    normalise_words,
    silence,
    speak,
    to_pcm16_bytes,
    word_error_rate,
)


def recognition(*, ratio: float = 1.2, logprob: float = -0.3, nsp: float = 0.05) -> Recognition:
    return Recognition("some words", (), nsp, logprob, ratio, audio_s=2.0)


def test_fallback_is_for_decodes_that_went_wrong_not_for_silence() -> None:
    assert needs_fallback(recognition(ratio=2.9))  # a loop
    assert needs_fallback(recognition(logprob=-1.3))  # unsure, yet Whisper hears speech
    assert not needs_fallback(recognition(logprob=-1.3, nsp=0.8))  # Whisper hears silence
    assert not needs_fallback(recognition())


@pytest.mark.parametrize(
    ("said", "cut_at"),
    [
        # Beam search starting the text over after the real audio (LJ001-0021 at 16 kHz).
        (
            "the earliest book printed with movable type is printed in letters which are an exact "
            "imitation the earliest book printed with movable type",
            16,
        ),
        ("now as all books not primarily intended as picture books now as all books not primarily", 10),
        ("i think we need to i think we need to get approval", None),  # five words again: speech
        ("no no no no no no no no no", None),  # a loop of one word is loop_start's job
        ("we cannot sign this quarter", None),
    ],
)
def test_a_decoder_starting_over_is_cut_where_it_starts(said: str, cut_at: int | None) -> None:
    assert restart_start(said.split()) == cut_at


def test_the_restart_guard_works_on_whisper_tokens(recognizer: WhisperRecognizer) -> None:
    tokens = recognizer._tokenizer.encode(
        " The earliest book printed with movable type, is printed in letters. The earliest book printed"
        " with movable type, is printed"
    )
    kept, cut = recognizer._strip_restart(tokens)
    assert cut
    assert recognizer._tokenizer.decode(kept).strip() == (
        "The earliest book printed with movable type, is printed in letters."
    )


class RecordingRecognizer:
    """The real recogniser, with each call's options written down (what decoding asked of Whisper)."""

    def __init__(self, real: WhisperRecognizer) -> None:
        self.real = real
        self.calls: list[dict[str, Any]] = []

    def recognize(self, audio: Any, **options: Any) -> Recognition:
        self.calls.append(options)
        return self.real.recognize(audio, **options)


def test_a_final_is_decoded_with_beam_search_and_a_partial_greedy(recognizer: WhisperRecognizer) -> None:
    spy = RecordingRecognizer(recognizer)
    audio = speak(SENTENCE_A)
    final = run_decode(spy, DecodeRequest(0, 0, True, 0, audio))  # type: ignore[arg-type]
    partial = run_decode(spy, DecodeRequest(0, 0, False, 0, audio))  # type: ignore[arg-type]
    assert [c["beam_size"] for c in spy.calls] == [DecodingConfig().final_beam_size, 1]
    assert final.rejected is None and final.attempts == 1
    assert word_error_rate(SENTENCE_A, final.recognition.text) <= 0.15, final.recognition.text
    assert partial.attempts == 1


def test_with_the_prompt_on_a_final_reads_its_channels_earlier_text(recognizer: WhisperRecognizer) -> None:
    spy = RecordingRecognizer(recognizer)
    config = DecodingConfig(prompt_previous=True)
    text = ChannelText()
    first = run_decode(spy, DecodeRequest(0, 0, True, 0, speak(SENTENCE_B)), None, config, text)  # type: ignore[arg-type]
    second = run_decode(spy, DecodeRequest(0, 1, True, 0, speak(SENTENCE_A)), None, config, text)  # type: ignore[arg-type]
    assert spy.calls[0]["prompt"] == ""
    assert spy.calls[1]["prompt"] == first.recognition.text.strip()
    assert text.text() == f"{first.recognition.text.strip()} {second.recognition.text.strip()}"


def test_noise_gets_no_temperature_fallback(recognizer: WhisperRecognizer) -> None:
    # Whisper judges it silent: sampling hotter would only invent words.
    spy = RecordingRecognizer(recognizer)
    result = run_decode(spy, DecodeRequest(0, 0, True, 0, silence(2.0)))  # type: ignore[arg-type]
    assert result.rejected is not None
    assert result.attempts == len(spy.calls) == 2  # the beam's decode, then the greedy one
    assert all(c["temperature"] == 0.0 for c in spy.calls)


def test_a_rejected_decode_that_went_wrong_is_sampled_again_until_one_is_accepted(
    recognizer: WhisperRecognizer,
) -> None:
    class LoopingFirst(RecordingRecognizer):
        """Whisper's real decodes, the first two made to look like loops (as a real loop looks to the
        filter: compression ratio above 2.4), to exercise the order of the retries."""

        def recognize(self, audio: Any, **options: Any) -> Recognition:
            real = super().recognize(audio, **options)
            return replace(real, compression_ratio=3.0) if len(self.calls) <= 2 else real

    spy = LoopingFirst(recognizer)
    result = run_decode(spy, DecodeRequest(0, 0, True, 0, speak(SENTENCE_A)))  # type: ignore[arg-type]
    # The beam's decode, the greedy one, then sampling from the lowest temperature up.
    assert result.rejected is None and result.attempts == 3
    assert [(c["beam_size"], c["temperature"]) for c in spy.calls] == [
        (DecodingConfig().final_beam_size, 0.0),
        (1, 0.0),
        (1, DecodingConfig().fallback_temperatures[0]),
    ]


def test_a_turn_no_decode_accepts_still_gets_a_final_that_says_why(recognizer: WhisperRecognizer) -> None:
    class AlwaysLooping(RecordingRecognizer):
        def recognize(self, audio: Any, **options: Any) -> Recognition:
            return replace(super().recognize(audio, **options), compression_ratio=3.0)

    spy = AlwaysLooping(recognizer)
    result = run_decode(spy, DecodeRequest(0, 0, True, 0, speak(SENTENCE_A)))  # type: ignore[arg-type]
    assert result.unheard and result.attempts == 2 + len(DecodingConfig().fallback_temperatures)
    event = SegmentNumbering().event(result)
    assert event is not None and event.is_final and event.text == ""
    assert event.unheard_reason == result.rejected and "repetitive" in event.unheard_reason


@pytest.mark.parametrize("line", ["pcm16-16khz", "mulaw-8khz"])
def test_every_turn_of_a_call_gets_a_final(recognizer: WhisperRecognizer, line: str) -> None:
    # Three turns of one speaker with the pauses of a conversation: three finals with their words.
    turns = [SENTENCE_B, SENTENCE_A, "Could you send the contract over by Friday so legal can review it?"]
    audio = np.concatenate([np.concatenate([speak(t), silence(1.2)]) for t in turns])
    if line == "mulaw-8khz":
        narrow = np.clip(resample(audio, 16000, 8000), -1.0, 32767 / 32768)
        data, spec = (
            mulaw_encode(np.round(narrow * 32768.0).astype(np.int16)).tobytes(),
            AudioSpec(Encoding.MULAW, 8000, 1),
        )
    else:
        data, spec = to_pcm16_bytes(audio), pcm16_spec()
    transcript = transcribe_bytes(data, spec, recognizer=recognizer)
    texts = [s.text for s in transcript.segments]
    assert len(texts) == len(turns), texts
    # espeak's robotic voice over 8 kHz mu-law is hard for tiny.en: there, half the words will do.
    for said, heard in zip(turns, texts, strict=True):
        assert word_error_rate(said, heard) <= (0.3 if line == "pcm16-16khz" else 0.5), (said, heard)


def test_a_batch_of_partials_gives_each_stream_its_own_text(recognizer: WhisperRecognizer) -> None:
    # Three calls' open segments of different lengths, one of them silence; the middle one is the longest.
    audios = [speak(SENTENCE_A)[: 3 * 16_000], speak(SENTENCE_B), silence(2.0)]
    requests = [DecodeRequest(i, 0, False, 16_000 * i, audio) for i, audio in enumerate(audios)]
    batched = run_partial_batch(recognizer, requests)
    alone = [run_decode(recognizer, request) for request in requests]
    assert [r.request for r in batched] == requests
    # Each its own words: the start of A, all of B, and nothing (rejected) for the silence.
    assert word_error_rate(SENTENCE_B, batched[1].recognition.text) <= 0.15, batched[1].recognition.text
    first = " ".join(normalise_words(batched[0].recognition.text))
    assert first.startswith("i think the price"), first
    assert "hello" not in first and "think" not in " ".join(normalise_words(batched[1].recognition.text))
    assert not batched[2].recognition.text or batched[2].rejected is not None
    # The longest hears what it hears alone (no more silence than its own pad): the same decode.
    assert batched[1].recognition == alone[1].recognition
    assert batched[1].rejected is None and batched[0].rejected is None
    assert all(r.words == () and r.prosody is None for r in batched)  # partials: no words, no prosody


def test_finals_are_never_decoded_in_a_batch(recognizer: WhisperRecognizer) -> None:
    audio = speak(SENTENCE_A)
    with pytest.raises(ValueError, match="only partials"):
        run_partial_batch(
            recognizer, [DecodeRequest(0, 0, False, 0, audio), DecodeRequest(1, 0, True, 0, audio)]
        )
