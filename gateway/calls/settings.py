"""The settings of every call of a gateway: queue bounds, timeouts, limits, live rules per tenant.

One SessionSettings is given to ``Gateway.open`` (gateway/calls/service.py) and shared by the live
sessions (gateway/calls/session.py) and the batch path; a leaf module, so that what configures a gateway
(``__main__``, app.py, tests) need not import the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from callsense.tenants import BadgeSettings


@dataclass(frozen=True)
class ProvisionalSettings:
    """When a partial is worth a provisional score (gateway/calls/provisional.py)."""

    enabled: bool = True
    min_words: int = 3
    """Fewer stable words than this are not scored: "Well, I" says nothing yet."""
    max_words: int = 48
    """The tail scored at most (the scorer reads under 128 tokens)."""
    timeout_s: float = 2.0
    """Deadline of one ScoreBatch; later than that the next partial has come anyway."""


@dataclass(frozen=True)
class SessionSettings:
    """Queue bounds and timeouts of every session of a gateway."""

    inbox_size: int = 64
    """Accepted utterances not yet sent to the chopper; a full inbox makes ``submit`` wait."""
    utterance_queue_size: int = 64
    """Chopped utterances not yet sent to the scorer."""
    subscriber_queue_size: int = 1024
    """Events a subscriber may lag behind before its backlog is dropped."""
    history_size: int = 1024
    """Events kept for replay to a watcher that joins late."""
    grace_s: float = 30.0
    """How long a call whose client vanished stays open for it to come back before it is ended."""
    finish_timeout_s: float = 120.0
    """How long stop() waits for outstanding scores before the call is ended as failed."""
    stage_timeout_s: float = 60.0
    """Deadline of one batch request to the chopper or the scorer."""
    stage_reopen_s: float = 30.0
    """How long a live call waits for an ASR, chopper or scorer that went away to come back (its stream is
    opened again, to any healthy replica, and what was not answered is sent again) before it fails."""
    asr_replay_s: float = 30.0
    """Audio a live call keeps, per call, of what the ASR has not made finals of yet, to send again on a new
    stream if the ASR goes away (gateway/calls/audio.py AudioReplay); bounds the memory a call holds."""
    audio_queue_size: int = 64
    """Audio chunks (<= AUDIO_CHUNK_MS each) not yet sent to the ASR; a full queue makes audio wait."""
    audio_idle_timeout_s: float | None = 600.0
    """An audio call whose audio stops for this long (the client neither sends nor stops) is stopped with
    reason ``audio_timeout``: its speech is transcribed and scored, the summary follows. The ASR already
    ends the open segment after a 2 s stall, so nothing waits for this to be scored. None: never."""
    max_recording_bytes: int = 100 * 1024 * 1024
    """Largest recording ``POST /v1/sentiment/batch`` takes (413 past it)."""
    badge_settings: Mapping[str, BadgeSettings] = field(default_factory=dict)
    """Live-rule settings (badge and cues) per tenant id; a tenant not named gets tenants.DEFAULT_SETTINGS."""
    provisional: ProvisionalSettings = field(default_factory=ProvisionalSettings)
    """Provisional scores of the turns being spoken (audio calls)."""
