"""RAVDESS for tone fusion: which clips, which valence, which split, and each clip heard by the ASR.

RAVDESS (../shared/data/speech/emotion/ravdess, actors 01-18 here; 19-24 are the public test and are
refused) has two emotionally neutral sentences spoken in eight emotions: the words carry nothing, only the
voice does. Valence, the common three-way mapping: neutral and calm -> neutral, happy -> positive, sad,
angry, fearful and disgust -> negative; surprised is left out. Split by actor (a voice is never on both
sides): the head is chosen on actors 01-12 and reported on 13-18 once.

Each clip is heard as a recording through the ASR's recording path (``asr_service.recording``: FFmpeg
decode, offline Whisper with its VAD filter, the hallucination filter, prosody per final segment), as a
customer channel, exactly as ``callsense analyze`` or ``POST /v1/sentiment/batch`` with a file hears it.
That takes about half a second a clip on one core, so clips are heard in one process per core
(``hear_all``: each its own Whisper on one thread, as the service runs it) and what was heard is cached
(``HeardCache``: a JSON file keyed by the Whisper model and by the source of the ASR code that shapes it, so
a change there is heard again, never mixed with old results).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from callsense.v1 import asr_pb2, audio_pb2, prosody_pb2

RAVDESS_DIR = Path("speech/emotion/ravdess")
EMOTIONS = {
    1: "neutral",
    2: "calm",
    3: "happy",
    4: "sad",
    5: "angry",
    6: "fearful",
    7: "disgust",
    8: "surprised",
}
VALENCE = {
    1: "neutral",
    2: "neutral",
    3: "positive",
    4: "negative",
    5: "negative",
    6: "negative",
    7: "negative",
}
"""Emotion code -> valence; 8 (surprised) is ambiguous and left out."""
CHOOSE_ACTORS = tuple(range(1, 13))
REPORT_ACTORS = tuple(range(13, 19))
PUBLIC_TEST_ACTORS = frozenset(range(19, 25))
_NAME = re.compile(r"(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)\.(flac|wav)")


class DataAbsent(FileNotFoundError):
    """The corpus is not where it should be; the message says where it was looked for."""


@dataclass(frozen=True)
class EmotionClip:
    path: Path
    actor: int
    emotion: int
    intensity: int
    statement: int
    repetition: int

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        return VALENCE[self.emotion]


def ravdess_clips(shared_data: Path, actors: Sequence[int]) -> list[EmotionClip]:
    """The clips of ``actors`` with a valence (surprised left out), by actor then name."""
    refused = sorted(set(actors) & PUBLIC_TEST_ACTORS)
    if refused:
        raise ValueError(f"RAVDESS actors {refused} are the public test split: never train or tune on them")
    root = shared_data / RAVDESS_DIR
    if not root.is_dir():
        raise DataAbsent(f"{root} not found (RAVDESS, see ../shared/data/README.md)")
    clips = []
    for path in sorted(root.iterdir()):
        match = _NAME.fullmatch(path.name)
        if match is None:
            continue
        _modality, _channel, emotion, intensity, statement, repetition, actor = map(int, match.groups()[:7])
        if actor in actors and emotion in VALENCE:
            clips.append(EmotionClip(path, actor, emotion, intensity, statement, repetition))
    missing = sorted(set(actors) - {c.actor for c in clips})
    if missing:
        raise DataAbsent(f"{root} has no clips of actors {missing}")
    return sorted(clips, key=lambda c: (c.actor, c.name))


# ------------------------------------------------------------------------------------------ heard


@dataclass(frozen=True)
class HeardSegment:
    """One final segment of a clip as the ASR's recording path gave it (times within the clip)."""

    text: str
    start_ms: int
    end_ms: int
    words: tuple[tuple[str, int, int], ...]
    prosody: dict[str, Any]
    """The Prosody message's fields (``prosody_pb2.Prosody(**prosody)``)."""

    def event(
        self, segment_id: int, offset_ms: int, role: int = audio_pb2.CUSTOMER
    ) -> asr_pb2.TranscriptEvent:
        """As the final TranscriptEvent a client sends, placed ``offset_ms`` into a call."""
        return asr_pb2.TranscriptEvent(
            segment_id=segment_id,
            is_final=True,
            text=self.text,
            words=[
                asr_pb2.Word(text=w, start_ms=s + offset_ms, end_ms=e + offset_ms) for w, s, e in self.words
            ],
            start_ms=self.start_ms + offset_ms,
            end_ms=self.end_ms + offset_ms,
            channel=role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
            prosody=prosody_pb2.Prosody(**self.prosody),
        )


def hear_file(whisper: Any, path: Path, role: str = "customer") -> list[HeardSegment]:
    """``path`` through the ASR's recording path as one ``role`` channel."""
    from asr_service.recording import OfflineOptions, read_recording, transcribe_recording
    from asr_service.server import prosody_message

    with path.open("rb") as source:
        recording = read_recording(source, path.name, (role,))
    segments = []
    for t in transcribe_recording(whisper, recording, OfflineOptions()):
        if not t.text.strip() or t.prosody is None:
            continue
        message = prosody_message(t.prosody)  # as the ASR service sends it (float32 fields)
        prosody: dict[str, Any] = {}
        for field in message.DESCRIPTOR.fields:
            value = getattr(message, field.name)
            # A float32 field as a Python float is exact, so the cache gives the message back bit for bit.
            prosody[field.name] = [float(v) for v in value] if isinstance(value, Iterable) else float(value)
        words = tuple((w.text, w.start_ms, w.end_ms) for w in t.words)
        segments.append(HeardSegment(t.text.strip(), t.start_ms, t.end_ms, words, prosody))
    return segments


CACHE_VERSION = "1"
"""Raise it when the recording path changes what a single-channel clip is heard as (its decode settings):
the cache is keyed by it, the Whisper model and the prosody code, not by every edit of the ASR."""


def asr_signature(whisper_dir: Path) -> str:
    """What the cached results depend on: the Whisper model, the prosody and filter code, CACHE_VERSION."""
    import asr_service

    digest = hashlib.sha256(f"{CACHE_VERSION}:{whisper_dir.resolve()}".encode())
    package = Path(asr_service.__file__).parent
    for name in ("prosody.py", "hallucination.py"):
        digest.update((package / name).read_bytes())
    return digest.hexdigest()[:16]


class HeardCache:
    """Clip name -> its heard segments, in a JSON file; a file of another signature is started afresh."""

    def __init__(self, path: Path, signature: str) -> None:
        self.path = path
        self.signature = signature
        self._clips: dict[str, list[HeardSegment]] = {}
        if path.is_file():
            data = json.loads(path.read_text())
            if data.get("signature") == signature:
                self._clips = {
                    name: [
                        HeardSegment(
                            s["text"], s["start_ms"], s["end_ms"], tuple(map(tuple, s["words"])), s["prosody"]
                        )
                        for s in segments
                    ]
                    for name, segments in data["clips"].items()
                }

    def get(self, name: str) -> list[HeardSegment] | None:
        return self._clips.get(name)

    def put(self, name: str, segments: list[HeardSegment]) -> None:
        self._clips[name] = segments

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "signature": self.signature,
            "clips": {name: [asdict(s) for s in segments] for name, segments in sorted(self._clips.items())},
        }
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(data))
        temporary.replace(self.path)


@dataclass(frozen=True)
class Hearing:
    """One thing to hear as a ``role`` channel: the recording at ``path``, or else ``text`` spoken by
    espeak-ng in ``voice`` (a flat synthetic voice) first."""

    key: str
    """Its name in the cache."""
    role: str = "customer"
    path: Path | None = None
    text: str = ""
    voice: str = ""


def speak_to(path: Path, text: str, voice: str) -> None:
    """``text`` as a WAV file spoken by espeak-ng in ``voice`` at its default speed, pitch and level."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "--stdout", text], check=True, capture_output=True, timeout=60
    ).stdout
    path.write_bytes(wav)


HEARINGS_PER_TASK = 50
"""A worker hears this many, then the cache is saved: a long run interrupted keeps what it heard."""


def _hear_task(whisper_dir: Path, hearings: Sequence[Hearing]) -> list[tuple[str, list[HeardSegment]]]:
    """Runs in a worker process: its own Whisper (int8, one thread), each hearing in turn."""
    from asr_service.transcribe_file import load_offline_model

    whisper = load_offline_model(whisper_dir)
    heard = []
    with tempfile.TemporaryDirectory() as tmp:
        spoken = Path(tmp) / "spoken.wav"
        for hearing in hearings:
            if hearing.path is None:
                speak_to(spoken, hearing.text, hearing.voice)
            heard.append((hearing.key, hear_file(whisper, hearing.path or spoken, hearing.role)))
    return heard


def hear_all(
    hearings: Sequence[Hearing],
    whisper_dir: Path,
    cache: HeardCache,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> None:
    """Hears every one of ``hearings`` that ``cache`` lacks and saves it there.

    ``workers`` processes (default: one per core) each run one Whisper on one thread. One at a time, the
    test fixture that hears the 741 spoken sales lines took 909 s of a 52-minute suite on a 2-vCPU box;
    with two workers, 583 s. Each hearing is heard alone, so the result does not depend on the number of
    workers."""
    todo = [hearing for hearing in hearings if cache.get(hearing.key) is None]
    if not todo:
        return
    tasks = [todo[i : i + HEARINGS_PER_TASK] for i in range(0, len(todo), HEARINGS_PER_TASK)]
    count = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    done = 0

    def keep(result: list[tuple[str, list[HeardSegment]]]) -> None:
        nonlocal done
        for key, segments in result:
            cache.put(key, segments)
        done += len(result)
        cache.save()
        if log is not None:
            log(f"heard {done}/{len(todo)}")

    if count == 1:
        for task in tasks:
            keep(_hear_task(whisper_dir, task))
        return
    # spawn, not fork: the caller may hold threads (gRPC, ONNX Runtime) that a forked child would inherit.
    with ProcessPoolExecutor(count, mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(_hear_task, [whisper_dir] * len(tasks), tasks):
            keep(result)


def hear_clips(
    clips: Sequence[EmotionClip],
    whisper_dir: Path,
    cache_path: Path,
    *,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, list[HeardSegment]]:
    """Each clip's heard segments, from the cache where it holds them, else through the ASR."""
    cache = HeardCache(cache_path, asr_signature(whisper_dir))
    hear_all([Hearing(c.name, path=c.path) for c in clips], whisper_dir, cache, workers=workers, log=log)
    return {clip.name: cache.get(clip.name) or [] for clip in clips}
