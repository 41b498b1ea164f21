"""Tone end to end: a polite customer whose voice hardens, through the real mesh (ASR, chopper, scorer
subprocesses, the gateway's WebSocket, PostgreSQL).

The customer's words stay courteous all call long. The first turns are said in espeak-ng's own voice;
the last ones in the same voice made louder, faster and higher (``-a``, ``-s``, ``-p``), which is how a
voice hardens. The words alone score every turn non-negative; with the shipped fusion head (a scorer
started with ``--fusion``: tone is opt-in), the hardened turns are scored lower than their words (the
score events say both: ``text_score`` and ``score``), the review data marks them (``tone_moved``), and
nlp_events keeps the words' probabilities beside the fused ones. The calm turns stay where their words
put them.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect

from scorer_service.fusion.head import SHIPPED_HEAD
from tests.support.audio import speak_pcm16
from tests.support.mesh import RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

RATE = 16_000
FRAME_BYTES = RATE * 2 // 20  # 50 ms of mono PCM16
AUDIO = {"encoding": "pcm16", "sample_rate_hz": RATE, "channels": 1, "channel_roles": ["customer"]}
CALM_TURNS = (
    "Thanks for walking me through the renewal options today.",
    "I see, so the new plan would start in March.",
    "Okay, and the support team would stay the same?",
    "Right, that makes sense to me.",
)
HARD_TURNS = (
    # Was "I understand, but I would like to see the price again.": under the sales rubric a buyer's "I
    # understand, but" before the price is a polite objection, and the model of 2026-12-07 04:55 reads it so
    # (0.31, negative); this test needs words with no stance at all, so the voice alone can move them.
    "Could you show me the price once more?",
    "Okay, I will need to check that with my team.",
    "Please send me the details by Friday.",
)
HARD_VOICE = {"words_per_minute": 215, "pitch": 85, "amplitude": 190}
"""Louder (+5.5 dB), faster (+43 %) and higher than espeak-ng's defaults (150 wpm, pitch 50, level 100)."""


def spoken_call() -> bytes:
    gap = np.zeros(RATE, dtype=np.int16)  # a second between turns: one final each
    pieces = [gap]
    for text in CALM_TURNS:
        pieces += [speak_pcm16(text), gap]
    for text in HARD_TURNS:
        pieces += [speak_pcm16(text, **HARD_VOICE), gap]
    return np.concatenate(pieces + [gap]).astype("<i2").tobytes()


HARD_WORDS = ("price", "check", "details", "friday")
"""Words only the hardened turns say (how a score is matched to its turn, whatever Whisper's punctuation)."""


def turn_of(score: dict[str, Any]) -> str:
    return "hard" if any(w in score["text"].lower() for w in HARD_WORDS) else "calm"


async def test_a_hardening_voice_moves_the_fused_score_where_the_words_do_not(
    tone_audio_gateway: RunningGateway,
) -> None:
    if not SHIPPED_HEAD.is_file():
        pytest.skip(f"NO SHIPPED FUSION HEAD: {SHIPPED_HEAD}; callsense train-fusion writes it")
    gw, call_id = tone_audio_gateway, f"tone-{uuid.uuid4().hex[:12]}"
    audio = spoken_call()
    async with connect(gw.ws_url, additional_headers=gw.headers, max_size=None) as ws:
        await send(ws, {"type": "start", "call_id": call_id, "metadata": {"tenant": "acme"}, "audio": AUDIO})
        assert (await receive(ws))["type"] == "started"
        for offset in range(0, len(audio), FRAME_BYTES):
            await send(ws, audio[offset : offset + FRAME_BYTES])
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)

    assert not [e for e in events if e["type"] == "error"], events
    scores = [e for e in events if e["type"] == "score"]
    hard = [s for s in scores if turn_of(s) == "hard"]
    calm = [s for s in scores if turn_of(s) == "calm"]
    assert len(hard) >= 2 and len(calm) >= 3, [s["text"] for s in scores]
    shown = [
        (s["text"], s["text_label"], round(s["text_score"], 2), s["label"], round(s["score"], 2))
        for s in scores
    ]

    print("\n".join(map(str, shown)))
    # The words alone: polite throughout.
    assert all(s["text_label"] != "negative" for s in scores), shown
    assert not scores[0]["tone_fused"]  # the customer's first turn: no baseline yet
    # The hardened voice moves the score down, beyond what the calm turns move.
    assert all(s["tone_fused"] and s["fusion_version"] for s in hard), shown
    hard_shift = float(np.mean([s["score"] - s["text_score"] for s in hard]))
    calm_shift = float(np.mean([abs(s["score"] - s["text_score"]) for s in calm]))
    assert hard_shift <= -0.15 and calm_shift < 0.1, shown
    assert any(s["tone_moved"] for s in hard) and not any(s["tone_moved"] for s in calm), shown

    # Stored with the words' probabilities beside the fused ones, and shown to the review page.
    stored = {e.utterance_id: e for e in await gw.gateway.stores.default.list_events(call_id)}
    for s in hard:
        row = stored[s["utterance_id"]]
        assert row.fusion_version == s["fusion_version"] and row.text_p_negative == pytest.approx(
            s["text_p_negative"]
        )
        assert row.p_negative == pytest.approx(s["p_negative"]) and row.tone_moved == s["tone_moved"]
    async with httpx.AsyncClient(base_url=gw.http_url, headers=gw.headers) as http:
        call = (await http.get(f"/v1/calls/{call_id}")).json()
    marked = {e["utterance_id"] for e in call["events"] if e["tone_moved"]}
    assert marked == {s["utterance_id"] for s in scores if s["tone_moved"]} and marked
