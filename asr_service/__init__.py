"""The ASR service: streaming Whisper (faster-whisper / CTranslate2) per call channel.

CTranslate2's int8 matrix products run on oneDNN, which picks its kernels by CPU. On a 2-core AMD EPYC
with AVX-512 VNNI (2026-12-05), its VNNI int8 kernels made tiny.en stream asr_dev at 5.24 % / 7.06 % WER
(16 kHz / 8 kHz mu-law; a 4-word tail lost, a 3-word tail repeated) where the same box with oneDNN capped
at AVX-512 without VNNI streams it at 5.01 % / 5.69 %, the figures of the AVX2-only machines the goals and
benches were measured on (README, "Word error rate"), for about 15 % more ASR CPU. So every process that
runs Whisper (the service, `callsense analyze`, the benches and tests, which all import this package
first) caps oneDNN there unless ``ONEDNN_MAX_CPU_ISA`` is already set: set it to ``ALL`` to take the
VNNI kernels. oneDNN reads it once, at its first kernel, so it must be set before any Whisper model runs.
"""

import os

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE")
