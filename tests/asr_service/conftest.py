"""Fixtures of the ASR tests: one Whisper model (tiny.en, int8) for the whole run."""

from __future__ import annotations

import pytest

from asr_service.recognizer import WhisperRecognizer


@pytest.fixture(scope="session")
def recognizer() -> WhisperRecognizer:
    # Used from one thread at a time (the tests and the servers they start run one after another).
    return WhisperRecognizer()
