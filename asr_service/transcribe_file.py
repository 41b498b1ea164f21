"""Transcribing an audio file through the streaming path, and offline for comparison.

``transcribe_file`` decodes a file (wav, flac, mp3, ogg, anything PyAV reads; any sample rate; mono or
stereo) and feeds it to a ``streaming.CallTranscriber`` in ``chunk_ms`` pieces of PCM16 (50 ms), as fast
as the CPU goes (no real-time pacing): the same audio decoder, resampler, Silero VAD, Whisper decoder and
hallucination filter a live call goes through. Partials are off by default (nobody watches them), and
so is the early end (``StreamingConfig.early_end_ms``): fed faster than real time, the probes come
back when the audio has moved on, so whether a segment ended early would depend on the thread timing.

Channels: a mono file is one ``mixed`` channel; a stereo file is ``agent`` (channel 0) and ``customer``
(channel 1) unless ``channels`` says otherwise (``("customer", "agent")`` swaps them, ``("mixed",)``
downmixes the file to one channel).

``offline_transcribe`` runs faster-whisper's stock ``WhisperModel.transcribe`` on the whole (downmixed)
file: same model directory, int8, greedy, temperature 0, no conditioning on earlier text. It is the
reference the streaming path is measured against (tests/asr_service/test_asr_wer.py).

A file that cannot be used raises ``ValueError`` saying what to fix: missing, not audio, truncated
(a WAV whose header promises more data than the file holds, or a stream that breaks off), or silent of
samples altogether. ``decode_audio`` does the same for a file object (an upload: see ``recording.py``),
optionally resampling to one rate and refusing audio past a duration before decoding all of it.
"""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from asr_service.audio import MAX_RATE_HZ, MIN_RATE_HZ, TARGET_RATE_HZ, AudioSpec, Encoding, resample
from asr_service.recognizer import RecognizerConfig, WhisperRecognizer, default_model_dir
from asr_service.scheduler import InferenceScheduler
from asr_service.streaming import CallTranscriber, StreamingConfig, Transcript, Word
from asr_service.vad import SileroModel, shared_model

ROLES = ("agent", "customer", "mixed")
DEFAULT_CHUNK_MS = 50
SUPPORTED = "wav, flac, mp3 or ogg"

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FileSegment:
    start_ms: int
    end_ms: int
    text: str
    channel: str
    """The channel's role: 'agent', 'customer' or 'mixed'."""
    words: tuple[Word, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms, "text": self.text, "channel": self.channel}


@dataclass(frozen=True)
class FileTranscript:
    text: str
    """Every segment's text in time order, separated by spaces."""
    segments: tuple[FileSegment, ...]
    duration_s: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "segments": [s.as_json() for s in self.segments]}

    def channel_text(self, channel: str) -> str:
        return " ".join(s.text for s in self.segments if s.channel == channel)


@dataclass(frozen=True)
class LoadedAudio:
    """A decoded file: 16-bit samples (frames, channels) at ``sample_rate_hz``."""

    samples: Int16Array
    sample_rate_hz: int

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate_hz

    def mono(self) -> Int16Array:
        if self.channels == 1:
            return self.samples[:, 0].copy()
        mean = self.samples.astype(np.float64).mean(axis=1)
        downmix: Int16Array = np.round(mean).astype(np.int16)
        return downmix

    def mono_16k(self) -> FloatArray:
        """Downmixed float32 at 16 kHz (what Whisper takes)."""
        x = self.mono().astype(np.float32) / 32768.0
        return x if self.sample_rate_hz == TARGET_RATE_HZ else resample(x, self.sample_rate_hz)


# ------------------------------------------------------------------------------------- reading


def load_audio(
    path: str | Path, *, sample_rate_hz: int | None = None, max_duration_s: float | None = None
) -> LoadedAudio:
    """Decode ``path`` with PyAV to 16-bit samples; ValueError, saying what to fix, when it cannot."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file; check the path")
    if not p.is_file():
        raise ValueError(f"{p}: not a file; give the path of a {SUPPORTED} file")
    with p.open("rb") as source:
        return decode_audio(source, str(p), sample_rate_hz=sample_rate_hz, max_duration_s=max_duration_s)


def decode_audio(
    source: IO[bytes],
    name: str,
    *,
    sample_rate_hz: int | None = None,
    max_duration_s: float | None = None,
) -> LoadedAudio:
    """Decode a seekable file object holding an audio file; ``name`` stands for it in messages.

    ``sample_rate_hz``: the rate to resample to (None: the file's own, or 16 kHz outside 8-48 kHz).
    ``max_duration_s``: longer audio raises ValueError before it is all decoded (memory stays bounded).
    """
    import av

    size = source.seek(0, io.SEEK_END)
    if size == 0:
        raise ValueError(f"{name}: the file is empty; give a {SUPPORTED} file with audio in it")
    _check_wav_length(source, name, size)
    source.seek(0)
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.audio:
                raise ValueError(f"{name}: the file holds no audio stream; give a {SUPPORTED} file")
            if container.duration:  # in FFmpeg's microseconds
                _check_duration(name, container.duration / 1_000_000, max_duration_s)
            stream = container.streams.audio[0]
            rate = int(stream.rate or 0)
            if rate <= 0:
                raise ValueError(f"{name}: the audio stream has no sample rate; re-encode the file")
            out_rate = sample_rate_hz or (rate if MIN_RATE_HZ <= rate <= MAX_RATE_HZ else TARGET_RATE_HZ)
            expected = _expected_frames(stream)
            parts = _decode_stream(container, stream, out_rate, name, max_duration_s)
    except av.error.FFmpegError as exc:  # some are ValueErrors too: caught first
        raise _bad_file(name, exc) from exc
    if not parts or not sum(part.shape[1] for part in parts):
        raise ValueError(f"{name}: the file holds no audio samples; give a {SUPPORTED} file with audio in it")
    samples = np.ascontiguousarray(np.concatenate(parts, axis=1).T.astype(np.int16))
    if expected and len(samples) * rate < 0.98 * expected * out_rate - 0.1 * rate * out_rate:
        got, want = len(samples) / out_rate, expected / rate
        raise ValueError(
            f"{name}: the file is truncated: its header promises {want:.2f} s of audio but only {got:.2f} s "
            "could be decoded; copy or export it again"
        )
    return LoadedAudio(samples, out_rate)


def _decode_stream(
    container: Any, stream: Any, out_rate: int, name: str, max_duration_s: float | None
) -> list[npt.NDArray[Any]]:
    """The stream's samples as planar int16 arrays (channels, n) at ``out_rate``."""
    import av

    channels = int(stream.codec_context.channels or 0) or 1
    layout = "mono" if channels == 1 else "stereo" if channels == 2 else None
    resampler = av.AudioResampler(format="s16p", layout=layout, rate=out_rate)
    parts: list[npt.NDArray[Any]] = []
    decoded = 0
    for frame in container.decode(stream):
        for out in resampler.resample(frame):
            parts.append(out.to_ndarray())
            decoded += parts[-1].shape[1]
        _check_duration(name, decoded / out_rate, max_duration_s)  # a header may not say, or lie
    for out in resampler.resample(None):
        parts.append(out.to_ndarray())
    return parts


def _check_duration(name: str, seconds: float, max_duration_s: float | None) -> None:
    """Refuse audio longer than ``max_duration_s`` (None: any length)."""
    if max_duration_s is not None and seconds > max_duration_s:
        raise ValueError(
            f"{name}: the recording is {_clock(seconds)} long; the limit is {_clock(max_duration_s)}: "
            "split it into shorter files"
        )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _bad_file(name: str, exc: Exception) -> ValueError:
    reason = getattr(exc, "strerror", None) or str(exc)  # FFmpeg's words, without a file name
    return ValueError(
        f"{name}: not a readable audio file, or truncated or corrupt ({reason}); "
        f"give a complete {SUPPORTED} file"
    )


def _expected_frames(stream: Any) -> int:
    """Samples the container says the stream holds (0 where it does not say)."""
    if stream.frames:
        return 0  # counts packets for some formats, not samples: not comparable
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * stream.rate)
    return 0


_WAV_SIZE_PLACEHOLDERS = 0x7F000000
"""Writers that stream (espeak-ng --stdout, sox to a pipe) put 0 or about 2**31-1 in the size fields."""


def _check_wav_length(source: IO[bytes], name: str, size: int) -> None:
    """A RIFF/WAVE file whose ``data`` chunk is declared longer than the file: truncated.

    FFmpeg decodes such a file to the bytes that are there without a word, so this is checked here.
    """
    source.seek(0)
    head = source.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    position = 12
    while position + 8 <= size:
        source.seek(position)
        chunk_id, chunk_size = struct.unpack("<4sI", source.read(8))
        if chunk_id == b"data":
            available = size - position - 8
            if 0 < chunk_size < _WAV_SIZE_PLACEHOLDERS and chunk_size > available:
                raise ValueError(
                    f"{name}: the WAV file is truncated: its header declares {chunk_size} bytes of audio "
                    f"but only {available} are there; copy or export it again"
                )
            return
        position += 8 + chunk_size + (chunk_size & 1)
    raise ValueError(f"{name}: the WAV file has no data chunk (truncated header); copy or export it again")


# ------------------------------------------------------------------------------------ roles


def channel_roles(channels: int, roles: Sequence[str] | None = None) -> tuple[str, ...]:
    """The role of each channel the streaming path gets; ``("mixed",)`` downmixes."""
    if roles is None:
        roles = ("mixed",) if channels == 1 else ("agent", "customer") if channels == 2 else ("mixed",)
    roles = tuple(r.strip().lower() for r in roles)
    unknown = [r for r in roles if r not in ROLES]
    if unknown:
        raise ValueError(f"channel role {unknown[0]!r} is not one of {', '.join(ROLES)}")
    if roles == ("mixed",):
        return roles
    if "mixed" in roles:
        raise ValueError("'mixed' stands alone: it downmixes every channel into one")
    if len(set(roles)) != len(roles):
        raise ValueError(f"channel roles {','.join(roles)} repeat a role")
    if len(roles) != channels:
        raise ValueError(
            f"{len(roles)} channel role(s) given ({','.join(roles)}) for audio of {channels} channel(s); "
            f"give one role per channel, or 'mixed'"
        )
    return roles


# ---------------------------------------------------------------------------------- streaming


def transcribe_file(
    path: str | Path,
    *,
    channels: Sequence[str] | None = None,
    recognizer: WhisperRecognizer | None = None,
    model_dir: str | Path | None = None,
    partials: bool = False,
    chunk_ms: int = DEFAULT_CHUNK_MS,
) -> FileTranscript:
    """Transcribe a file through the streaming path (see the module docstring)."""
    return transcribe_audio(
        load_audio(path),
        channels=channels,
        recognizer=recognizer,
        model_dir=model_dir,
        partials=partials,
        chunk_ms=chunk_ms,
    )


def transcribe_audio(
    audio: LoadedAudio,
    *,
    channels: Sequence[str] | None = None,
    recognizer: WhisperRecognizer | None = None,
    model_dir: str | Path | None = None,
    partials: bool = False,
    chunk_ms: int = DEFAULT_CHUNK_MS,
) -> FileTranscript:
    """Transcribe decoded audio (``load_audio``) through the streaming path, as PCM16."""
    roles = channel_roles(audio.channels, channels)
    samples = audio.samples if len(roles) == audio.channels else audio.mono()[:, None]
    spec = AudioSpec(Encoding.PCM16, audio.sample_rate_hz, samples.shape[1])
    return transcribe_bytes(
        samples.astype("<i2").tobytes(),
        spec,
        roles=roles,
        recognizer=recognizer,
        model_dir=model_dir,
        partials=partials,
        chunk_ms=chunk_ms,
    )


def transcribe_bytes(
    data: bytes,
    spec: AudioSpec,
    *,
    roles: Sequence[str] | None = None,
    recognizer: WhisperRecognizer | None = None,
    model_dir: str | Path | None = None,
    vad_model: SileroModel | None = None,
    partials: bool = False,
    chunk_ms: int = DEFAULT_CHUNK_MS,
    config: StreamingConfig | None = None,
) -> FileTranscript:
    """Transcribe encoded audio (any ``AudioSpec`` the service takes, interleaved) through the
    streaming path, fed ``chunk_ms`` at a time as fast as it is taken. ``config`` replaces the
    default streaming settings (``partials`` is then ignored)."""
    spec.validate()
    role_names = channel_roles(spec.channels, roles)
    if len(role_names) != spec.channels:
        raise ValueError("encoded audio cannot be downmixed here; give one role per channel")
    if recognizer is None:
        recognizer = WhisperRecognizer(RecognizerConfig(model_dir=str(model_dir) if model_dir else None))
    if config is None:
        # See the module docstring; speculative finals only add decodes when audio comes faster than live.
        config = StreamingConfig(partials=partials, early_end_ms=0, speculative_final_ms=0)
    events = asyncio.run(
        _stream(data, spec, recognizer, vad_model or shared_model(), config, max(1, chunk_ms))
    )
    segments = sorted(
        (
            FileSegment(e.start_ms, e.end_ms, e.text, role_names[e.channel], e.words)
            for e in events
            if e.is_final and e.text.strip()
        ),
        key=lambda s: (s.start_ms, s.channel),
    )
    duration_s = len(data) / spec.frame_bytes / spec.sample_rate_hz
    return FileTranscript(" ".join(s.text.strip() for s in segments), tuple(segments), duration_s)


async def _stream(
    data: bytes,
    spec: AudioSpec,
    recognizer: WhisperRecognizer,
    vad_model: SileroModel,
    config: StreamingConfig,
    chunk_ms: int,
) -> list[Transcript]:
    scheduler = InferenceScheduler(max_streams=1, name="file-inference")
    frontend = ThreadPoolExecutor(1, thread_name_prefix="file-frontend")
    call = CallTranscriber(
        recognizer=recognizer,
        stream=scheduler.open_stream(),
        spec=spec,
        vad_model=vad_model,
        config=config,
        frontend=frontend,
    )
    events: list[Transcript] = []

    async def collect() -> None:
        async for event in call.events():
            events.append(event)

    collector = asyncio.create_task(collect())
    try:
        step = max(spec.frame_bytes, spec.bytes_for(chunk_ms / 1000.0))
        for i in range(0, len(data), step):
            await call.feed(data[i : i + step])
        await call.finish()
        await collector
    finally:
        if not collector.done():
            collector.cancel()
        call.close()
        scheduler.shutdown()
        frontend.shutdown(wait=True)
    return events


# ------------------------------------------------------------------------------------ offline


def load_offline_model(model_dir: str | Path | None = None) -> Any:
    """faster-whisper's ``WhisperModel`` on the same directory, int8, one thread."""
    from faster_whisper import WhisperModel

    directory = Path(model_dir) if model_dir else default_model_dir()
    if not (directory / "model.bin").is_file():
        raise FileNotFoundError(f"no CTranslate2 Whisper model (model.bin) in {directory}")
    return WhisperModel(str(directory), device="cpu", compute_type="int8", cpu_threads=1)


def offline_transcribe(
    source: str | Path | npt.ArrayLike, *, model: Any = None, model_dir: str | Path | None = None
) -> FileTranscript:
    """Stock ``WhisperModel.transcribe`` on a whole file (downmixed), or on 16 kHz float32 samples."""
    if isinstance(source, str | Path):
        loaded = load_audio(source)
        audio = loaded.mono_16k()
    else:
        audio = np.asarray(source, dtype=np.float32).reshape(-1)
    if model is None:
        model = load_offline_model(model_dir)
    pieces, _info = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        best_of=1,
        temperature=0.0,
        condition_on_previous_text=False,
    )
    segments = tuple(
        FileSegment(int(round(s.start * 1000)), int(round(s.end * 1000)), s.text.strip(), "mixed")
        for s in pieces
        if s.text.strip()
    )
    return FileTranscript(" ".join(s.text for s in segments), segments, len(audio) / TARGET_RATE_HZ)
