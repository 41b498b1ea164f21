"""`callsense demo`: a spoken two-party sales call, played into a running mesh in real time.

The call is one of the scripted calls of tools/scripted_calls.py (``--script NAME``, ``--list``); by default
``DEMO_SCRIPT``, which opens friendly, goes through discovery, then the price lands and the customer cools,
politely (over budget, hard to justify to finance, even with the discount) while the agent tries to recover.
Each turn is spoken by espeak-ng (the agent in a male en-us voice, the customer in a female variant),
trimmed of espeak's own leading and trailing silence and laid on a timeline with natural gaps. The result
is one stereo PCM16 16 kHz stream, the agent on the left channel and the customer on the right, sent over
the live WebSocket (through Envoy by default) in 50 ms frames at the pace of a real call, or ``speed`` times
faster. The events that come back are printed as they arrive: partial transcripts updating in place,
finals, scores with their label, badge changes, coaching cues and the summary.

Synthesis and layout (``synthesize_call``), the sending loop (``send_audio``) and the terminal view
(``CallView``) are separate pieces: bench/live_audio.py and the tests reuse them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import shutil
import subprocess
import sys
import time
import uuid
import wave
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from asr_service.audio import resample
from tools.scripted_calls import DEFAULT_SCRIPT, SCRIPTS, UnknownScript, script_named, verdict
from tools.scripted_calls import Speaker as Speaker
from tools.scripted_calls import Turn as Turn

Pcm16 = npt.NDArray[np.int16]
Event = dict[str, Any]

DEMO_SCRIPT: tuple[Turn, ...] = SCRIPTS[DEFAULT_SCRIPT].turns
"""The call `callsense demo` plays by default: it turns sour at the price (tools/scripted_calls.py)."""

RATE_HZ = 16_000
FRAME_MS = 50
CHANNEL_ROLES: tuple[Speaker, Speaker] = ("agent", "customer")
"""Left channel, right channel."""
VOICES: Mapping[Speaker, str] = {"agent": "en-us", "customer": "en-us+f3"}
WORDS_PER_MINUTE = 150
SILENCE_THRESHOLD = 200
"""A PCM16 sample louder than this (about -44 dBFS) is speech; espeak-ng pads with near-zero samples."""
DEFAULT_URL = "ws://127.0.0.1:8080/v1/sentiment/stream"
KEY_ENV = "CALLSENSE_API_KEY"
"""Where `callsense demo` finds its API key when --key is not given."""
SUMMARY_TIMEOUT_S = 60.0
"""After the last frame: the ASR flushes its last segment, the chopper and scorer finish, the call ends."""


class DemoError(Exception):
    """A problem the person running the demo can fix; the message says how."""


# --------------------------------------------------------------------------------------------- speech


def espeak_path() -> str:
    path = shutil.which("espeak-ng")
    if path is None:
        raise DemoError("espeak-ng is not installed: install it with `apt-get install espeak-ng`")
    return path


def speech_bounds(samples: npt.ArrayLike, threshold: int = SILENCE_THRESHOLD) -> tuple[int, int]:
    """First speech sample and one past the last (0, 0 for silence): where a clip's speech really is."""
    loud = np.flatnonzero(np.abs(np.asarray(samples, dtype=np.int32)) > threshold)
    if loud.size == 0:
        return 0, 0
    return int(loud[0]), int(loud[-1]) + 1


def synthesize(
    text: str, voice: str, *, rate_hz: int = RATE_HZ, words_per_minute: int = WORDS_PER_MINUTE
) -> Pcm16:
    """``text`` spoken by espeak-ng in ``voice``: mono PCM16 at ``rate_hz``, silence trimmed at both ends."""
    result = subprocess.run(
        [espeak_path(), "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        capture_output=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0 or len(result.stdout) <= 44:
        message = result.stderr.decode(errors="replace").strip()
        raise DemoError(f"espeak-ng could not speak with voice {voice!r}: {message or 'no audio'}")
    # espeak-ng streams its WAV with a placeholder length; reading "all frames" takes what is there.
    with wave.open(io.BytesIO(result.stdout)) as wav:
        espeak_rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(2**31 - 1), dtype="<i2")
    start, end = speech_bounds(pcm)
    speech = resample(pcm[start:end].astype(np.float32), espeak_rate, rate_hz)
    return np.clip(np.round(speech), -32768, 32767).astype(np.int16)


# --------------------------------------------------------------------------------------------- the call


@dataclass(frozen=True)
class PlacedTurn:
    """A turn where it lies in the call's audio: its speech spans [start_sample, end_sample)."""

    turn: Turn
    start_sample: int
    end_sample: int
    rate_hz: int

    @property
    def start_ms(self) -> int:
        return self.start_sample * 1000 // self.rate_hz

    @property
    def end_ms(self) -> int:
        return self.end_sample * 1000 // self.rate_hz

    @property
    def channel(self) -> int:
        return CHANNEL_ROLES.index(self.turn.speaker)


@dataclass(frozen=True)
class CallAudio:
    """A stereo call: ``samples`` has shape (n, 2), the agent in column 0, the customer in column 1."""

    samples: Pcm16
    rate_hz: int
    turns: tuple[PlacedTurn, ...]

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.rate_hz

    def frame_samples(self, frame_ms: int = FRAME_MS) -> int:
        return self.rate_hz * frame_ms // 1000

    def frames(self, frame_ms: int = FRAME_MS) -> list[bytes]:
        """The call as the WebSocket takes it: little-endian PCM16, channels interleaved, frame_ms each."""
        data = self.samples.astype("<i2").tobytes()
        step = self.frame_samples(frame_ms) * 4  # two channels of two bytes
        return [data[offset : offset + step] for offset in range(0, len(data), step)]


def natural_gaps(count: int, *, seed: int = 7, low_s: float = 0.6, high_s: float = 1.0) -> list[float]:
    """Pauses between turns, as people leave them: between ``low_s`` and ``high_s``, reproducible."""
    rng = random.Random(seed)
    return [round(rng.uniform(low_s, high_s), 3) for _ in range(count)]


def lay_out(
    spoken: Sequence[tuple[Turn, Pcm16]],
    gaps_s: Sequence[float],
    *,
    rate_hz: int = RATE_HZ,
    lead_in_s: float = 0.5,
    tail_s: float = 1.5,
) -> CallAudio:
    """Each turn's speech on its speaker's channel, one after another with ``gaps_s`` between them."""
    if len(gaps_s) < len(spoken) - 1:
        raise ValueError(f"{len(spoken)} turns need {len(spoken) - 1} gaps, got {len(gaps_s)}")
    placed: list[PlacedTurn] = []
    cursor = int(lead_in_s * rate_hz)
    for index, (turn, speech) in enumerate(spoken):
        if index:
            cursor += int(gaps_s[index - 1] * rate_hz)
        placed.append(PlacedTurn(turn, cursor, cursor + len(speech), rate_hz))
        cursor += len(speech)
    samples = np.zeros((cursor + int(tail_s * rate_hz), 2), dtype=np.int16)
    for where, (_, speech) in zip(placed, spoken, strict=True):
        samples[where.start_sample : where.end_sample, where.channel] = speech
    return CallAudio(samples, rate_hz, tuple(placed))


def synthesize_call(
    script: Sequence[Turn] = DEMO_SCRIPT,
    *,
    rate_hz: int = RATE_HZ,
    words_per_minute: int = WORDS_PER_MINUTE,
    seed: int = 7,
) -> CallAudio:
    """The script spoken (one voice per speaker) and laid out as a stereo call."""
    spoken = [
        (
            turn,
            synthesize(turn.text, VOICES[turn.speaker], rate_hz=rate_hz, words_per_minute=words_per_minute),
        )
        for turn in script
    ]
    return lay_out(spoken, natural_gaps(max(len(script) - 1, 0), seed=seed), rate_hz=rate_hz)


def write_wav(audio: CallAudio, path: Path) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(audio.rate_hz)
        wav.writeframes(audio.samples.astype("<i2").tobytes())


# --------------------------------------------------------------------------------------------- the socket


def start_message(call_id: str, rate_hz: int = RATE_HZ) -> Event:
    # No tenant: the call belongs to the key's tenant (a start that named another would be refused).
    return {
        "type": "start",
        "call_id": call_id,
        "metadata": {"agent": "sam"},
        "audio": {
            "encoding": "pcm16",
            "sample_rate_hz": rate_hz,
            "channels": 2,
            "channel_roles": list(CHANNEL_ROLES),
        },
    }


async def send_audio(
    ws: ClientConnection,
    frames: Sequence[bytes],
    frame_s: float,
    *,
    speed: float = 1.0,
    until: asyncio.Future[Any] | None = None,
) -> list[float]:
    """Send ``frames`` at the pace of a live call (``speed`` times faster); each frame's send time
    (``time.perf_counter``), for measuring from the moment a piece of speech was out. Stops early once
    ``until`` (the task reading the call's events) is done: the call has ended (its summary came, after
    a fatal error such as an ASR that refused it), and every further frame would only be answered with
    ``call_ended``, answers nobody reads, until the connection's buffers fill and its pings time out."""
    sent_at: list[float] = []
    begin = time.perf_counter()
    for index, frame in enumerate(frames):
        delay = begin + index * frame_s / speed - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if until is not None and until.done():
            break
        await ws.send(frame)
        sent_at.append(time.perf_counter())
    return sent_at


async def read_events(ws: ClientConnection, on_event: Callable[[Event], None]) -> None:
    """Hand each event of the call on ``ws`` to ``on_event``, in arrival order, up to its summary."""
    async for raw in ws:
        event: Event = json.loads(raw)
        on_event(event)
        if event.get("type") == "summary":
            return


@contextlib.asynccontextmanager
async def open_call(url: str, call_id: str, start: Event, key: str) -> AsyncIterator[ClientConnection]:
    """A WebSocket with the call started on it; a DemoError saying what to do when that fails."""
    # x-call-id: Envoy pins the call to one gateway replica by it.
    headers = {"x-call-id": call_id, "authorization": f"Bearer {key}"}
    try:
        ws = await ws_connect(url, additional_headers=headers, open_timeout=10, max_size=None)
    except InvalidStatus as exc:
        if exc.response.status_code in (401, 403):
            raise DemoError(
                f"the mesh refused the key ({exc.response.status_code}): pass --key or set {KEY_ENV} "
                "(`callsense up` prints the first admin key; `callsense keys create` makes more)"
            ) from None
        raise DemoError(f"the mesh at {url} refused the connection: {exc}") from None
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI) as exc:
        raise DemoError(
            f"cannot reach the mesh at {url} ({type(exc).__name__}: {exc}): start it with ./dev.sh up"
        ) from None
    async with ws:
        await ws.send(json.dumps(start))
        try:
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
        except (TimeoutError, ConnectionClosed) as exc:
            raise DemoError(f"the mesh at {url} did not start the call: {exc!r}") from None
        if reply.get("type") != "started":
            raise DemoError(f"the mesh refused the call: {reply.get('code')}: {reply.get('message')}")
        yield ws


async def play(
    url: str,
    call_id: str,
    audio: CallAudio,
    *,
    key: str,
    speed: float = 1.0,
    on_event: Callable[[Event], None],
) -> list[Event]:
    """Play ``audio`` as call ``call_id`` into the mesh; every event up to the summary, in arrival order,
    each also handed to ``on_event`` as it arrives."""
    events: list[Event] = []

    def take(event: Event) -> None:
        events.append(event)
        on_event(event)

    async with open_call(url, call_id, start_message(call_id, audio.rate_hz), key) as ws:
        receiver = asyncio.create_task(read_events(ws, take))
        try:
            await send_audio(ws, audio.frames(), FRAME_MS / 1000, speed=speed, until=receiver)
            if not receiver.done():
                await ws.send(json.dumps({"type": "stop"}))
            await asyncio.wait_for(receiver, SUMMARY_TIMEOUT_S)
        except ConnectionClosed as exc:
            raise DemoError(f"the mesh closed the connection mid-call: {exc}") from None
        except TimeoutError:
            raise DemoError(f"no summary {SUMMARY_TIMEOUT_S:g} s after the call ended") from None
        finally:
            receiver.cancel()
    if not events or events[-1].get("type") != "summary":
        raise DemoError("the mesh closed the connection before the call's summary")
    return events


def review_url(ws_url: str, call_id: str) -> str:
    """The call's review page on the same host as the WebSocket."""
    parts = urlsplit(ws_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return f"{scheme}://{parts.netloc}/review/{quote(call_id, safe='')}"


# --------------------------------------------------------------------------------------------- the view


_COLOURS = {"negative": "31", "neutral": "33", "positive": "32", "red": "31", "amber": "33", "green": "32"}


class CallView:
    """A live call's events, readable in a terminal: time (call time), channel, what happened.

    On a terminal a segment's partial transcript is one line rewritten in place until its final
    replaces it; elsewhere (a pipe, a file) every partial is its own line."""

    def __init__(self, out: TextIO, *, tty: bool = False, speed: float = 1.0) -> None:
        self._out = out
        self._tty = tty
        self._speed = speed
        self._begin = time.perf_counter()
        self._partial = ""
        """The partial line on screen (tty only): kept as the last line while other events print."""
        self._partial_key: tuple[str, int] | None = None
        # A partial longer than the terminal would wrap, and "\r" would then rewrite only its last row.
        self._width = shutil.get_terminal_size().columns

    def begin(self) -> None:
        self._begin = time.perf_counter()

    def _clock(self) -> str:
        seconds = (time.perf_counter() - self._begin) * self._speed
        return f"{int(seconds // 60):02d}:{seconds % 60:04.1f}"

    def _paint(self, text: str, key: str) -> str:
        return f"\033[{_COLOURS[key]}m{text}\033[0m" if self._tty and key in _COLOURS else text

    def _line(self, text: str) -> None:
        if self._tty:
            self._out.write(f"\r\033[K{text}\n{self._partial}")  # the partial line stays last
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def _show_partial(self, key: tuple[str, int], text: str) -> None:
        if not self._tty:
            self._line(text)
            return
        self._partial, self._partial_key = text[: self._width - 1], key
        self._out.write(f"\r\033[K{self._partial}")
        self._out.flush()

    def _drop_partial(self, key: tuple[str, int]) -> None:
        if self._partial_key == key:
            self._partial, self._partial_key = "", None
            if self._tty:
                self._out.write("\r\033[K")

    def show(self, event: Event) -> None:
        kind = event.get("type")
        at = self._clock()
        if kind == "transcript":
            self._transcript(at, event)
        elif kind == "provisional":
            self._provisional(at, event)
        elif kind == "score":
            bar = "#" * round(event["score"] * 10)
            label = self._paint(f"{event['label']:<8}", event["label"])
            self._line(f"{at}  {event['channel']:<8}    score {event['score']:.2f} {label} |{bar:<10}|")
        elif kind == "badge":
            state = self._paint(event["state"].upper(), event["state"])
            self._line(f"{at}  BADGE      {state} (customer's rolling score {event['rolling_score']:.2f})")
        elif kind == "cue":
            self._line(f"{at}  CUE        [{event['topic']}] {event['text']}")
        elif kind == "error":
            self._line(f"{at}  ERROR      {event.get('code')}: {event.get('message')}")
        elif kind == "summary":
            self.summary(event)

    def _provisional(self, at: str, event: Event) -> None:
        """The mood so far of a turn being spoken: on a terminal, added to its partial line."""
        mood = f"~{event['score']:.2f} {event['label']} so far"
        key = (str(event["channel"]), int(event["segment_id"]))
        if not self._tty:
            self._line(f"{at}  {event['channel']:<8} ~  {mood}")
        elif self._partial_key == key:
            base = self._partial.split("  [~", 1)[0]
            self._show_partial(key, f"{base}  [{mood}]")

    def _transcript(self, at: str, event: Event) -> None:
        key = (str(event["channel"]), int(event["segment_id"]))
        text = event["text"].strip()
        if not event["is_final"]:
            self._show_partial(key, f"{at}  {event['channel']:<8} .. {text}")
            return
        self._drop_partial(key)  # the final replaces it; an empty final: nothing was said after all
        if text:
            self._line(f"{at}  {event['channel']:<8} >> {text}")

    def summary(self, event: Event) -> None:
        def number(key: str) -> str:
            value = event.get(key)
            return "-" if value is None else f"{value:.2f}"

        badge = event.get("badge")
        lines = [
            "",
            f"call {event['call_id']} {event['status']} ({event['reason']}): "
            f"{event['utterance_count']} utterances scored",
            f"  sentiment: average {number('avg_sentiment')}, lowest {number('min_sentiment')}; "
            f"customer average {number('customer_avg_sentiment')}, lowest {number('customer_min_sentiment')}",
            f"  badge at the end: {self._paint(badge, badge) if badge else '-'}",
        ]
        if event.get("objection_tags"):
            lines.append(f"  objections: {', '.join(event['objection_tags'])}")
        lines += [f"  - {line}" for line in event.get("lines", [])]
        for line in lines:
            self._line(line)


# --------------------------------------------------------------------------------------------- the command


@dataclass(frozen=True)
class DemoOptions:
    url: str = DEFAULT_URL
    call_id: str = ""
    speed: float = 1.0
    turns: int | None = None
    """Play only the first N turns."""
    save_wav: Path | None = None
    script: str = DEFAULT_SCRIPT
    """The scripted call to play (tools/scripted_calls.py)."""
    key: str = ""
    """An API key of the tenant the call belongs to (``--key``, else CALLSENSE_API_KEY)."""


def list_scripts(out: TextIO | None = None) -> None:
    """The scripted calls, each with what happens in it and the badge timeline it expects."""
    out = out or sys.stdout
    width = max(len(name) for name in SCRIPTS)
    for name, call in SCRIPTS.items():
        default = " (default)" if name == DEFAULT_SCRIPT else ""
        out.write(f"{name:<{width}}  {call.about}{default}\n{'':<{width}}  badge: {call.badge_timeline()}")
        cues = ", ".join(c.topic for c in call.expect.cues)
        out.write(f"; cue: {cues}\n" if cues else "\n")


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout, *, tty: bool | None = None) -> list[Event]:
    """Synthesise the call, play it into the mesh, print its events; the events, summary last."""
    if options.speed <= 0:
        raise DemoError("--speed must be above 0")
    try:
        scripted = script_named(options.script)
    except UnknownScript as exc:
        raise DemoError(str(exc)) from None
    if not options.key:
        raise DemoError(f"a key is needed: --key or {KEY_ENV} (`callsense up` prints one)")
    script = scripted.turns[: options.turns] if options.turns else scripted.turns
    call_id = options.call_id or f"demo-{uuid.uuid4().hex[:8]}"
    out.write(f"{scripted.name}: {scripted.about}\nspeaking {len(script)} turns with espeak-ng...\n")
    out.flush()
    audio = await asyncio.to_thread(synthesize_call, script)
    if options.save_wav is not None:
        write_wav(audio, options.save_wav)
        out.write(f"wrote the call's audio to {options.save_wav} (agent left, customer right)\n")
    out.write(
        f"playing call {call_id} ({audio.duration_s:.0f} s of audio, {options.speed:g}x) into {options.url}\n"
        f"agent on the left channel, customer on the right; '..' partial, '>>' final transcript\n\n"
    )
    view = CallView(out, tty=out.isatty() if tty is None else tty, speed=options.speed)
    view.begin()
    events = await play(options.url, call_id, audio, key=options.key, speed=options.speed, on_event=view.show)
    out.write(f"\nreview the call: {review_url(options.url, call_id)}\n")
    if len(script) == len(scripted.lines):  # the whole call: did the mesh hear it as the script expects?
        out.write(verdict(scripted, [(p.start_ms, p.end_ms) for p in audio.turns], events) + "\n")
    out.flush()
    return events


def main(options: DemoOptions) -> int:
    try:
        events = asyncio.run(run_demo(options))
    except DemoError as exc:
        print(f"callsense demo: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if events[-1].get("status") == "ended" else 1
