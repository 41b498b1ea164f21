"""The pieces of re-opening a call's ASR stream, one at a time: every piece of audio has its place in the
call, the replay keeps exactly what the ASR has not made finals of (bounded), and the events of a new
stream reach the listeners with the gateway's segment ids, each id finished once, speech heard twice
shown once. The whole of it, with a real ASR process killed mid-call: tests/gateway/test_stage_restart.py.
"""

from __future__ import annotations

from callsense.v1 import asr_pb2, audio_pb2
from gateway.calls.asr_stream import SegmentIds
from gateway.calls.audio import AudioCutter, AudioPiece, AudioReplay
from gateway.calls.inputs import AudioInputFormat

CUSTOMER, AGENT, BOTH = audio_pb2.CUSTOMER, audio_pb2.AGENT, audio_pb2.CHANNEL_ROLE_UNSPECIFIED
STEREO_8K = AudioInputFormat("mulaw", 8000, 2, ("agent", "customer"))


def test_pieces_follow_their_source_or_the_clients_timestamp() -> None:
    cutter = AudioCutter(STEREO_8K)
    pieces = cutter.cut(bytes(2 * 8000 * 250 // 1000), None, None)  # 250 ms interleaved
    assert [(p.timestamp_ms, p.end_ms) for p in pieces] == [(0, 100), (100, 200), (200, 250)]
    assert cutter.cut(bytes(2 * 8 * 50), None, None)[0].timestamp_ms == 250  # follows on
    # One channel's own frames keep their own count; a client's timestamp (lost audio) moves it on.
    assert cutter.cut(bytes(8 * 40), "customer", None)[0].timestamp_ms == 0
    later = cutter.cut(bytes(8 * 40), "customer", 5_000)
    assert [(p.timestamp_ms, p.end_ms, p.role) for p in later] == [(5_000, 5_040, CUSTOMER)]
    assert cutter.cut(bytes(8 * 20), "customer", None)[0].timestamp_ms == 5_040


def test_a_call_taken_over_goes_on_after_what_was_heard() -> None:
    cutter = AudioCutter(STEREO_8K)
    cutter.continue_after(42_000)  # the gateway that died had stored utterances up to 42 s
    assert cutter.cut(bytes(2 * 8 * 50), None, None)[0].timestamp_ms == 42_000
    assert cutter.cut(bytes(8 * 50), "agent", 50_000)[0].timestamp_ms == 50_000  # the client's time wins


def piece(role: int, start_ms: int, end_ms: int) -> AudioPiece:
    return AudioPiece(b"\x00" * 8 * (end_ms - start_ms), role, start_ms, end_ms)


def times(pieces: list[AudioPiece]) -> list[tuple[int, int, int]]:
    return [(p.role, p.timestamp_ms, p.end_ms) for p in pieces]


def test_the_replay_keeps_what_has_no_final_yet_per_channel() -> None:
    replay = AudioReplay([AGENT, CUSTOMER], limit_ms=30_000)
    for start in range(0, 1_000, 100):
        replay.add(piece(CUSTOMER, start, start + 100))
        replay.add(piece(AGENT, start, start + 100))
    replay.finalised(CUSTOMER, 650)
    pending = times(replay.pending())
    assert [t for t in pending if t[0] == CUSTOMER] == [
        (CUSTOMER, s, s + 100) for s in range(600, 1_000, 100)
    ]
    assert [t for t in pending if t[0] == AGENT] == [(AGENT, s, s + 100) for s in range(0, 1_000, 100)]
    assert replay.finalised_ms(CUSTOMER) == 650 and replay.finalised_ms(AGENT) == 0
    replay.finalised(CUSTOMER, 400)  # an earlier end never moves it back
    assert replay.finalised_ms(CUSTOMER) == 650


def test_interleaved_audio_is_kept_until_every_channel_has_finals_past_it() -> None:
    replay = AudioReplay([AGENT, CUSTOMER], limit_ms=30_000)
    for start in range(0, 1_000, 100):
        replay.add(piece(BOTH, start, start + 100))
    replay.finalised(CUSTOMER, 900)
    assert times(replay.pending())[0] == (BOTH, 0, 100)  # the agent has no final yet
    replay.finalised(AGENT, 450)
    assert times(replay.pending())[0] == (BOTH, 400, 500)


def test_a_silent_channel_cannot_make_the_replay_grow_past_its_limit() -> None:
    replay = AudioReplay([AGENT, CUSTOMER], limit_ms=2_000)
    for start in range(0, 60_000, 100):  # a minute in which the agent never speaks
        replay.add(piece(BOTH, start, start + 100))
    pending = replay.pending()
    assert len(pending) == 21 and pending[0].timestamp_ms == 57_900 and pending[-1].end_ms == 60_000


def event(
    role: int, segment_id: int, start_ms: int, end_ms: int, text: str = "", *, final: bool
) -> asr_pb2.TranscriptEvent:
    return asr_pb2.TranscriptEvent(
        call_id="c1", segment_id=segment_id, is_final=final, text=text, start_ms=start_ms, end_ms=end_ms,
        channel=role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
    )  # fmt: skip


def seen(shown: asr_pb2.TranscriptEvent | None) -> tuple[int, int, bool, str] | None:
    return None if shown is None else (shown.channel, shown.segment_id, shown.is_final, shown.text)


def test_one_stream_keeps_the_asrs_ids() -> None:
    ids = SegmentIds()
    assert seen(ids.show(event(CUSTOMER, 0, 0, 900, "we looked", final=False), 0)) == (
        CUSTOMER,
        0,
        False,
        "we looked",
    )
    assert seen(ids.show(event(CUSTOMER, 0, 0, 1500, "we looked at it", final=True), 0)) == (
        CUSTOMER, 0, True, "we looked at it"
    )  # fmt: skip
    assert seen(ids.show(event(AGENT, 0, 800, 1200, "right", final=True), 0)) == (AGENT, 0, True, "right")
    assert seen(ids.show(event(CUSTOMER, 1, 2000, 3000, "the price", final=True), 1500)) == (
        CUSTOMER, 1, True, "the price"
    )  # fmt: skip


def test_a_new_stream_continues_the_ids_and_takes_back_unfinished_partials() -> None:
    ids = SegmentIds()
    ids.show(event(CUSTOMER, 0, 0, 1500, "we looked at it", final=True), 0)
    ids.show(event(CUSTOMER, 1, 2000, 3100, "that is well", final=False), 1500)  # the ASR dies here
    closing = ids.reopened()
    assert [seen(e) for e in closing] == [(CUSTOMER, 1, True, "")]  # listeners drop "that is well"
    assert (closing[0].start_ms, closing[0].end_ms) == (2000, 3100)
    # The new stream hears the same speech again from the end of the last final, numbering from 0.
    assert seen(ids.show(event(CUSTOMER, 0, 2000, 3100, "that is well", final=False), 1500)) == (
        CUSTOMER, 2, False, "that is well"
    )  # fmt: skip
    assert seen(ids.show(event(CUSTOMER, 0, 2000, 4200, "that is well over budget", final=True), 1500)) == (
        CUSTOMER, 2, True, "that is well over budget"
    )  # fmt: skip
    assert seen(ids.show(event(AGENT, 0, 4500, 5000, "I see", final=True), 0)) == (AGENT, 0, True, "I see")


def test_speech_heard_on_an_earlier_stream_is_not_shown_twice() -> None:
    ids = SegmentIds()
    ids.show(event(CUSTOMER, 0, 5000, 7000, "we signed last year", final=True), 0)
    ids.reopened()
    # Interleaved audio comes again from the agent's last final (0): the customer's words come again.
    assert ids.show(event(CUSTOMER, 0, 4950, 6900, "we signed last year", final=False), 7000) is None
    assert ids.show(event(CUSTOMER, 0, 4950, 7050, "we signed last year", final=True), 7000) is None
    assert seen(ids.show(event(CUSTOMER, 1, 8000, 9000, "so", final=True), 7000)) == (CUSTOMER, 1, True, "so")
    # A segment shown in partials, whose final places it before its channel's last final (the final is cut
    # shorter than its partials were), is finished with empty text.
    assert ids.show(event(AGENT, 0, 6000, 9500, "and you", final=False), 7000) is not None
    assert seen(ids.show(event(AGENT, 0, 6000, 8000, "and you", final=True), 9000)) == (AGENT, 0, True, "")
