"""``callsense analyze`` and ``callsense transcribe`` on a mono recording of two voices (espeak-ng's male
and female en-us, as `callsense demo` speaks them; written by sox), as a user runs them: by default the
one channel is split into agent (who speaks first) and customer; ``--speakers`` changes who opens, or
keeps one mixed channel (issue 14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scorer_service.inference import DEFAULT_MODEL
from tests.support.audio import require_speech_tools, word_error_rate
from tools.demo import VOICES, synthesize
from tools.scripted_calls import Speaker

pytestmark = pytest.mark.slow

RATE = 16_000
LINES: tuple[tuple[Speaker, str], ...] = (
    ("agent", "Good morning, this is Sam from Northwind. Do you have a minute to talk about your renewal?"),
    ("customer", "Honestly, the price is ridiculous and I am very unhappy with your service."),
    ("agent", "I am sorry to hear that. Let me see what discount I can offer you today."),
)


def callsense(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def mono_call(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_speech_tools()
    if not DEFAULT_MODEL.is_file():
        pytest.skip(f"SCORER MODEL ABSENT: {DEFAULT_MODEL}")
    gap = np.zeros(int(0.7 * RATE), dtype=np.int16)
    pieces = [gap]
    for speaker, text in LINES:
        pieces += [synthesize(text, VOICES[speaker]), gap]
    path = tmp_path_factory.mktemp("mono") / "call.flac"
    raw = ["-t", "raw", "-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed", "-"]
    subprocess.run(["sox", *raw, str(path)], input=np.concatenate(pieces).tobytes(), check=True, timeout=60)
    return path


def said(utterances: list[dict[str, str]], key: str = "channel") -> dict[str, str]:
    return {
        role: " ".join(u["text"] for u in utterances if u[key] == role)
        for role in ("agent", "customer", "mixed")
    }


def test_a_mono_call_is_split_into_agent_and_customer(mono_call: Path) -> None:
    done = callsense("analyze", str(mono_call), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["channels"] == ["agent", "customer"]
    by_role = said(out["utterances"])
    assert word_error_rate(LINES[1][1], by_role["customer"]) <= 0.2, by_role
    assert word_error_rate(f"{LINES[0][1]} {LINES[2][1]}", by_role["agent"]) <= 0.2, by_role
    assert out["stats"]["customer_count"] >= 1
    assert any(u["label"] == "negative" for u in out["utterances"] if u["channel"] == "customer")

    swapped = json.loads(
        callsense("analyze", str(mono_call), "--json", "--speakers", "customer-first").stdout
    )
    assert said(swapped["utterances"])["agent"] == by_role["customer"]
    kept = json.loads(callsense("analyze", str(mono_call), "--json", "--speakers", "none").stdout)
    assert kept["channels"] == ["mixed"] and {u["channel"] for u in kept["utterances"]} == {"mixed"}


def test_transcribe_splits_a_mono_file_too(mono_call: Path) -> None:
    done = callsense("transcribe", str(mono_call))
    assert done.returncode == 0, done.stderr
    by_role = said(json.loads(done.stdout)["segments"])
    assert word_error_rate(LINES[1][1], by_role["customer"]) <= 0.2, by_role
    refused = callsense("transcribe", str(mono_call), "--channels", "agent", "--speakers", "agent-first")
    assert refused.returncode == 2 and "role agent" in refused.stderr, refused.stderr
