"""`callsense demo`: the spoken sales call and its playback into the mesh.

The synthesis is checked on the real espeak-ng output: a stereo 16 kHz call where every turn sounds on
its speaker's channel only, in order, with natural gaps. A short run of the demo (its first turns, four
times faster than real time) goes into the real mesh (ASR, chopper, scorer, PostgreSQL; the gateway in
the test's loop) and must show finals and their scores. Without a mesh or without espeak-ng the demo
says what to do.
"""

from __future__ import annotations

import asyncio
import io
import socket
import wave
from pathlib import Path

import numpy as np
import pytest

from gateway.auth.credentials import mint_key
from tests.support.audio import normalise_words, require_speech_tools
from tests.support.mesh import RunningGateway
from tools.cli import main as cli_main
from tools.demo import (
    CHANNEL_ROLES,
    DEMO_SCRIPT,
    FRAME_MS,
    RATE_HZ,
    CallAudio,
    DemoError,
    DemoOptions,
    Event,
    espeak_path,
    open_call,
    read_events,
    run_demo,
    send_audio,
    start_message,
    synthesize_call,
    write_wav,
)


@pytest.fixture(scope="module")
def demo_call() -> CallAudio:
    require_speech_tools()
    return synthesize_call(DEMO_SCRIPT)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2))) if samples.size else 0.0


def test_the_script_is_a_two_party_call_that_turns_sour_at_the_price() -> None:
    assert 10 <= len(DEMO_SCRIPT) <= 14
    speakers = [t.speaker for t in DEMO_SCRIPT]
    assert speakers[0] == "agent" and set(speakers) == {"agent", "customer"}
    assert all(a != b for a, b in zip(speakers, speakers[1:], strict=False)), "turns alternate"
    price = next(i for i, t in enumerate(DEMO_SCRIPT) if "dollars" in t.text)
    assert DEMO_SCRIPT[price].speaker == "agent" and 0 < price < len(DEMO_SCRIPT) - 3
    sour = " ".join(t.text for t in DEMO_SCRIPT[price + 1 :] if t.speaker == "customer").lower()
    assert {"budgeted", "finance", "discount"} <= set(normalise_words(sour))  # polite, plain pushback


def test_each_turn_is_on_its_speakers_channel(demo_call: CallAudio) -> None:
    audio = demo_call
    assert audio.rate_hz == RATE_HZ and audio.samples.shape == (len(audio.samples), 2)
    assert 60 <= audio.duration_s <= 90, audio.duration_s
    assert [p.turn for p in audio.turns] == list(DEMO_SCRIPT)
    for placed in audio.turns:
        speech = audio.samples[placed.start_sample : placed.end_sample]
        own, other = CHANNEL_ROLES.index(placed.turn.speaker), 1 - CHANNEL_ROLES.index(placed.turn.speaker)
        assert placed.end_sample - placed.start_sample > audio.rate_hz, placed  # a second of speech or more
        assert rms(speech[:, own]) > 1000, (placed, rms(speech[:, own]))
        assert rms(speech[:, other]) == 0.0, placed
        # Trimmed: the turn's speech starts and ends at its bounds (first and last 20 ms are voiced).
        edge = audio.rate_hz // 50
        assert np.abs(speech[:edge, own]).max() > 200 and np.abs(speech[-edge:, own]).max() > 200, placed
    pairs = zip(audio.turns, audio.turns[1:], strict=False)
    gaps = [(b.start_sample - a.end_sample) / audio.rate_hz for a, b in pairs]
    assert all(0.6 <= g <= 1.0 for g in gaps), gaps
    silent = np.ones(len(audio.samples), dtype=bool)
    for placed in audio.turns:
        silent[placed.start_sample : placed.end_sample] = False
    assert not audio.samples[silent].any(), "sound outside the turns"


def test_frames_and_wav_hold_the_call(demo_call: CallAudio, tmp_path: Path) -> None:
    frames = demo_call.frames()
    frame_bytes = RATE_HZ * FRAME_MS // 1000 * 2 * 2
    assert all(len(f) == frame_bytes for f in frames[:-1]) and 0 < len(frames[-1]) <= frame_bytes
    interleaved = np.frombuffer(b"".join(frames), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(interleaved, demo_call.samples)

    path = tmp_path / "call.wav"
    write_wav(demo_call, path)
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, RATE_HZ, 2)
        stored = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, 2)
    assert np.array_equal(stored, demo_call.samples)


@pytest.mark.slow  # the real ASR, chopper and scorer processes
async def test_a_short_demo_shows_finals_and_scores(audio_gateway: RunningGateway) -> None:
    require_speech_tools()
    gw, out = audio_gateway, io.StringIO()
    options = DemoOptions(url=gw.ws_url, call_id="demo-test-short", speed=4.0, turns=4, key=gw.key)
    events = await run_demo(options, out, tty=False)

    assert not [e for e in events if e["type"] == "error"], events
    summary = events[-1]
    assert summary["type"] == "summary" and summary["status"] == "ended", summary
    finals = [e for e in events if e["type"] == "transcript" and e["is_final"] and e["text"].strip()]
    scores = [e for e in events if e["type"] == "score"]
    assert {f["channel"] for f in finals} == {"agent", "customer"}, finals
    assert {s["channel"] for s in scores} == {"agent", "customer"}, scores
    heard = set(normalise_words(" ".join(f["text"] for f in finals if f["channel"] == "customer")))
    assert {"demo", "great", "time"} <= heard, heard
    assert summary["utterance_count"] == len(scores)

    text = out.getvalue()
    for final in finals:
        assert f">> {final['text'].strip()}" in text, text
    for score in scores:
        assert f"score {score['score']:.2f} {score['label']}" in text, text
    assert "call demo-test-short ended (hangup)" in text
    assert f"{gw.http_url}/review/demo-test-short" in text
    stored = await gw.gateway.stores.default.list_events("demo-test-short")
    assert [(e.utterance_id, e.channel) for e in stored] == [
        (s["utterance_id"], s["channel"]) for s in scores
    ]


@pytest.mark.slow  # the real ASR, chopper and scorer processes
async def test_the_demo_stops_sending_when_its_call_ends(audio_gateway: RunningGateway) -> None:
    """A call the mesh ends (here: the gateway shutting it down; under load: an ASR replica refusing it)
    ends the playback too. Before, the demo sent the rest of its audio into a call that had ended, each
    frame answered with call_ended and none of it read, until the connection's pings timed out."""
    gw, call_id = audio_gateway, "demo-test-ended"
    frames = [bytes(RATE_HZ * 2 * 2 * FRAME_MS // 1000)] * 1500  # 30 s of stereo silence
    events: list[Event] = []

    async with open_call(gw.ws_url, call_id, start_message(call_id), gw.key) as ws:
        receiver = asyncio.create_task(read_events(ws, events.append))
        sender = asyncio.create_task(send_audio(ws, frames, FRAME_MS / 1000, until=receiver))
        session = gw.gateway.registry.get(call_id)
        assert session is not None
        await session.stop("shutdown")
        sent_at = await asyncio.wait_for(sender, 10)
        await asyncio.wait_for(receiver, 10)

    assert events[-1]["type"] == "summary" and events[-1]["reason"] == "shutdown", events[-1]
    assert len(sent_at) < len(frames) // 3, len(sent_at)  # of 30 s: it ended at the start


def test_without_a_mesh_the_demo_says_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    require_speech_tools()
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}/v1/sentiment/stream"
    code = cli_main(["demo", "--url", url, "--turns", "1", "--key", mint_key().token])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot reach the mesh" in err and "./dev.sh up" in err, err


def test_without_a_key_the_demo_says_where_to_get_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("CALLSENSE_API_KEY", raising=False)
    assert cli_main(["demo", "--turns", "1"]) == 2
    assert "--key or CALLSENSE_API_KEY" in capsys.readouterr().err


@pytest.mark.slow  # a real gateway
async def test_a_refused_key_says_what_to_do(running_gateway: RunningGateway) -> None:
    require_speech_tools()
    options = DemoOptions(url=running_gateway.ws_url, turns=1, key=mint_key().token)  # never registered
    with pytest.raises(DemoError, match="refused the key \\(401\\).*callsense up"):
        await run_demo(options, io.StringIO(), tty=False)


def test_without_espeak_the_demo_says_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no espeak-ng on the PATH
    with pytest.raises(DemoError, match="apt-get install espeak-ng"):
        espeak_path()
