"""The chopper: cutting final segments into masked utterances under 128 scorer tokens, and Chopper.Chop
served by a real grpc.aio server over a real channel."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import grpc
import grpc.aio
import pytest

from callsense import grpc_runtime
from callsense.v1 import asr_pb2, audio_pb2, chopper_pb2, chopper_pb2_grpc, prosody_pb2
from chopper_service.pii import PiiKind
from chopper_service.segmenter import (
    Segmenter,
    SegmenterClosed,
    SegmentError,
    TranscriptSegment,
    Utterance,
    WordTiming,
    default_token_counter,
)
from chopper_service.server import SERVICE_NAME, ChopperServicer, add_chopper

CUSTOMER = audio_pb2.CUSTOMER
AGENT = audio_pb2.AGENT
count = default_token_counter()


def seg(
    text: str, *, channel: int = CUSTOMER, start_ms: int = 0, end_ms: int = 10_000, segment_id: int = 0
) -> TranscriptSegment:
    return TranscriptSegment(
        text=text, channel=channel, start_ms=start_ms, end_ms=end_ms, segment_id=segment_id
    )


def texts(utterances: list[Utterance]) -> list[str]:
    return [u.text for u in utterances]


def words(text: str) -> list[str]:
    return text.split()


def clause(n_words: int, seed: str) -> str:
    """A clause of ``n_words`` ordinary words with no punctuation and no conjunction in it."""
    vocabulary = [seed, "the", "finance", "team", "reviewed", "every", "line", "of", "the", "proposal"]
    return " ".join(vocabulary[i % len(vocabulary)] for i in range(n_words))


def assert_fits_and_keeps_words(utterances: list[Utterance], original: str, limit: int = 128) -> None:
    for u in utterances:
        assert u.token_count == count(u.text) < limit, u.text
    # Never mid-word: the utterances' words, in order, are exactly the original's words.
    assert [w for u in utterances for w in words(u.text)] == words(original)


# ------------------------------------------------------------------------------------------ sentences


def test_each_sentence_is_an_utterance_and_short_fragments_merge() -> None:
    text = (
        "Yes. Okay. I think the price is way too high for us. We would need a discount to move forward. Sure."
    )
    out = Segmenter().feed(seg(text))
    assert texts(out) == [
        "Yes. Okay. I think the price is way too high for us.",
        "We would need a discount to move forward. Sure.",
    ]


def test_abbreviations_do_not_end_a_sentence() -> None:
    text = "Dr. Smith went over it with Mrs. Jones on Monday. It looks fine to both of them!"
    assert texts(Segmenter().feed(seg(text))) == [
        "Dr. Smith went over it with Mrs. Jones on Monday.",
        "It looks fine to both of them!",
    ]


def test_short_fragment_is_not_merged_past_the_budget() -> None:
    long_sentence = clause(123, "pricing") + "."
    assert count(long_sentence) < 128 <= count(f"{long_sentence} Okay.")
    out = Segmenter().feed(seg(f"{long_sentence} Okay. Right."))
    assert texts(out) == [long_sentence, "Okay. Right."]


def test_long_sentence_is_cut_at_a_comma_not_mid_clause() -> None:
    first, second = clause(70, "alpha") + ",", clause(70, "omega") + "."
    sentence = f"{first} {second}"
    assert count(sentence) >= 128 and count(first) < 128 and count(second) < 128
    out = Segmenter().feed(seg(sentence))
    assert texts(out) == [first, second]
    assert_fits_and_keeps_words(out, sentence)


def test_semicolons_are_preferred_to_commas() -> None:
    a1, a2, b1, b2 = (clause(35, s) for s in ("one", "two", "three", "four"))
    sentence = f"{a1}, {a2}; {b1}, {b2}."
    assert count(sentence) >= 128
    out = Segmenter().feed(seg(sentence))
    # Greedy comma packing alone would give "a1, a2; b1," + "b2.".
    assert texts(out) == [f"{a1}, {a2};", f"{b1}, {b2}."]


def test_unpunctuated_asr_text_is_cut_before_conjunctions() -> None:
    parts = [
        clause(45, "budget"),
        "but " + clause(45, "timing"),
        "because " + clause(45, "legal"),
        "so " + clause(45, "next"),
    ]
    text = " ".join(parts)
    out = Segmenter().feed(seg(text))
    assert len(out) > 1
    assert_fits_and_keeps_words(out, text)
    for u in out[1:]:
        assert u.text.split()[0] in {"but", "because", "so"}, u.text


def test_text_without_any_boundary_is_cut_between_words_near_the_budget() -> None:
    text = clause(400, "relentless")
    out = Segmenter().feed(seg(text))
    assert len(out) >= 3
    assert_fits_and_keeps_words(out, text)
    assert all(u.token_count > 100 for u in out[:-1])  # packed greedily, not word by word


@pytest.mark.parametrize("max_tokens", [12, 20, 40])
def test_every_budget_is_respected(max_tokens: int) -> None:
    text = (
        "Honestly, I was hoping for a better offer; the last renewal went up twelve percent, nobody told us. "
        "My manager, who signs off on this, wants a clear answer by Friday, but I can't promise anything. "
        "Okay. So what can you do for us"
    )
    out = Segmenter(max_tokens=max_tokens).feed(seg(text))
    assert_fits_and_keeps_words(out, text, limit=max_tokens)


def test_a_single_giant_word_is_the_only_thing_cut_inside() -> None:
    giant = "-".join(["token"] * 200)  # one whitespace-free "word" far over the budget
    out = Segmenter().feed(seg(f"Look at this {giant} thing."))
    assert all(u.token_count < 128 for u in out)
    assert "".join(u.text.replace(" ", "") for u in out) == f"Lookatthis{giant}thing."


def test_segments_without_words_yield_nothing() -> None:
    segmenter = Segmenter()
    assert segmenter.feed(seg("")) == []
    assert segmenter.feed(seg("   ")) == []
    assert segmenter.feed(seg("...")) == []
    assert segmenter.next_utterance_id == 0


# ------------------------------------------------------------------------------- ids, context, channel


def test_ids_are_ordered_across_channels_and_segments_and_previous_text_follows() -> None:
    segments = [
        seg("Hi, this is Dana from Acme. Is now a good time?", channel=AGENT, segment_id=0),
        seg("Not really. I'm driving right now.", channel=CUSTOMER, segment_id=0),
        seg("No problem. When should I call back?", channel=AGENT, segment_id=1),
    ]
    segmenter = Segmenter()
    out = [u for s in segments for u in segmenter.feed(s)]
    assert [u.utterance_id for u in out] == list(range(len(out)))
    assert [(u.channel, u.segment_id) for u in out] == [(AGENT, 0), (AGENT, 0), (CUSTOMER, 0), (AGENT, 1)]
    assert [u.previous_text for u in out] == ["", *texts(out)[:-1]]
    # Deterministic: the same finals on a fresh segmenter give the same utterances and ids.
    again = Segmenter()
    assert [u for s in segments for u in again.feed(s)] == out


def test_closed_segmenter_refuses_more_and_bad_times_are_rejected() -> None:
    segmenter = Segmenter()
    with pytest.raises(SegmentError, match="segment 3"):
        segmenter.feed(seg("backwards", start_ms=500, end_ms=100, segment_id=3))
    with pytest.raises(SegmentError, match="word 'late'"):
        segmenter.feed(TranscriptSegment("late", CUSTOMER, 0, 100, (WordTiming("late", 90, 10),)))
    assert segmenter.close() == []
    with pytest.raises(SegmenterClosed):
        segmenter.feed(seg("after the end"))


# ---------------------------------------------------------------------------------------------- times


def timed(text: str, start_ms: int = 20_000, step_ms: int = 300) -> TranscriptSegment:
    """A segment whose words are spoken one every ``step_ms``, each lasting 250 ms, as Whisper gives them."""
    timings = tuple(
        WordTiming(" " + w, start_ms + i * step_ms, start_ms + i * step_ms + 250)
        for i, w in enumerate(text.split())
    )
    return TranscriptSegment(text, CUSTOMER, start_ms, timings[-1].end_ms + 100, timings, segment_id=7)


def test_times_come_from_word_timings() -> None:
    text = (
        "That is too expensive for us. Call me on four one five five five five one two three four tomorrow."
    )
    out = Segmenter().feed(timed(text))
    assert texts(out) == ["That is too expensive for us.", "Call me on [PHONE] tomorrow."]
    # Word i starts at 20000 + 300 i: the first utterance holds words 0-5, the second words 6-19.
    assert (out[0].start_ms, out[0].end_ms) == (20_000, 20_000 + 5 * 300 + 250)
    assert (out[1].start_ms, out[1].end_ms) == (20_000 + 6 * 300, 20_000 + 19 * 300 + 250)


def test_times_are_apportioned_by_characters_without_word_timings() -> None:
    first, second = "The renewal price went up again.", "We cannot accept that at all."
    out = Segmenter().feed(seg(f"{first} {second}", start_ms=1_000, end_ms=7_000))
    assert [u.text for u in out] == [first, second]
    total = len(first) + 1 + len(second)
    assert out[0].start_ms == 1_000 and out[1].end_ms == 7_000
    assert out[0].end_ms == 1_000 + round(6_000 * len(first) / total)
    assert out[0].start_ms <= out[0].end_ms <= out[1].start_ms <= out[1].end_ms


def test_word_timings_that_do_not_match_the_text_fall_back_to_characters() -> None:
    words = (WordTiming("something", 0, 400), WordTiming("else", 400, 900))
    out = Segmenter().feed(TranscriptSegment("Fine by me. Send the contract.", CUSTOMER, 1_000, 4_000, words))
    assert texts(out) == ["Fine by me.", "Send the contract."]
    # 30 characters over 3,000 ms: "Fine by me." is characters 0-11, "Send the contract." 12-30.
    assert [(u.start_ms, u.end_ms) for u in out] == [(1_000, 2_100), (2_200, 4_000)]


def test_pii_is_masked_before_cutting() -> None:
    text = "My card is 4111 1111 1111 1111, and my email is jo dot lee at example dot com. Thanks a lot."
    out = Segmenter().feed(seg(text))
    assert texts(out) == ["My card is [CARD], and my email is [EMAIL].", "Thanks a lot."]
    first = out[0]
    assert [(s.kind, first.text[s.start : s.end]) for s in first.pii] == [
        (PiiKind.CARD, "[CARD]"),
        (PiiKind.EMAIL, "[EMAIL]"),
    ]
    assert out[1].pii == () and out[1].previous_text == first.text


def test_text_is_rebuilt_from_words_when_missing() -> None:
    segment = timed("Sounds good to me.")
    out = Segmenter().feed(TranscriptSegment("", CUSTOMER, segment.start_ms, segment.end_ms, segment.words))
    assert texts(out) == ["Sounds good to me."]
    assert out[0].start_ms == 20_000


# ------------------------------------------------------------------------------------- gRPC service


@pytest.fixture
async def chopper() -> AsyncIterator[chopper_pb2_grpc.ChopperStub]:
    servicer = ChopperServicer()
    server = await grpc_runtime.start_server(lambda s: add_chopper(s, servicer), "127.0.0.1:0")
    channel = grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address)
    try:
        await grpc_runtime.wait_for_serving(channel, SERVICE_NAME)
        yield chopper_pb2_grpc.ChopperStub(channel)
    finally:
        await channel.close()
        await grpc_runtime.stop_server(server, grace_s=0.5)


def final(
    call_id: str,
    segment_id: int,
    text: str,
    channel: audio_pb2.ChannelRole,
    start_ms: int,
    end_ms: int,
    *,
    words: list[asr_pb2.Word] | None = None,
    prosody: prosody_pb2.Prosody | None = None,
) -> chopper_pb2.ChopRequest:
    event = asr_pb2.TranscriptEvent(
        segment_id=segment_id,
        is_final=True,
        text=text,
        channel=channel,
        start_ms=start_ms,
        end_ms=end_ms,
        words=words,
        prosody=prosody,
    )
    return chopper_pb2.ChopRequest(call_id=call_id, transcript=event)


def partial(call_id: str, segment_id: int, text: str) -> chopper_pb2.ChopRequest:
    event = asr_pb2.TranscriptEvent(call_id=call_id, segment_id=segment_id, is_final=False, text=text)
    return chopper_pb2.ChopRequest(call_id=call_id, transcript=event)


def end(call_id: str) -> chopper_pb2.ChopRequest:
    return chopper_pb2.ChopRequest(call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id, reason="hangup"))


async def read(call: grpc.aio.StreamStreamCall, n: int) -> list[chopper_pb2.Utterance]:
    """The next ``n`` utterances; fails if they do not come within 5 s (so none waits for later input)."""
    out = []
    for _ in range(n):
        message = await asyncio.wait_for(call.read(), 5.0)
        assert message is not grpc.aio.EOF
        out.append(message)
    return out


async def test_two_interleaved_calls_on_one_stream(chopper: chopper_pb2_grpc.ChopperStub) -> None:
    call = chopper.Chop()
    prosody = prosody_pb2.Prosody(rms_dbfs=-21.5, pitch_mean_hz=180.0, speaking_rate_wps=2.5)
    words = [
        asr_pb2.Word(text=" Hi,", start_ms=1_000, end_ms=1_300),
        asr_pb2.Word(text=" it's", start_ms=1_300, end_ms=1_500),
    ]
    words += [
        asr_pb2.Word(text=" " + w, start_ms=1_500 + 200 * i, end_ms=1_700 + 200 * i)
        for i, w in enumerate(["Dana", "from", "Acme.", "Is", "now", "a", "good", "time?"])
    ]

    await call.write(partial("call-a", 0, "Hi it's"))
    await call.write(
        final("call-a", 0, "Hi, it's Dana from Acme. Is now a good time?", AGENT, 1_000, 3_200, words=words)
    )
    a0, a1 = await read(call, 2)  # out as soon as the final is in, before anything else is sent

    await call.write(partial("call-b", 0, "I"))
    await call.write(final("call-b", 0, "I want to cancel my plan.", CUSTOMER, 500, 2_000, prosody=prosody))
    (b0,) = await read(call, 1)

    await call.write(
        final("call-a", 0, "Not really, call me on 415-555-1234 tomorrow.", CUSTOMER, 3_500, 6_000)
    )
    (a2,) = await read(call, 1)
    await call.write(final("call-b", 1, "It's too expensive. My card ends in 1111.", CUSTOMER, 2_500, 5_000))
    b1, b2 = await read(call, 2)
    await call.write(end("call-b"))
    await call.write(end("call-a"))
    # Every call on the stream has ended: the server closes it without the client half-closing.
    assert await asyncio.wait_for(call.read(), 5.0) is grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK

    assert [(u.call_id, u.utterance_id) for u in (a0, a1, a2)] == [
        ("call-a", 0),
        ("call-a", 1),
        ("call-a", 2),
    ]
    assert [(u.call_id, u.utterance_id) for u in (b0, b1, b2)] == [
        ("call-b", 0),
        ("call-b", 1),
        ("call-b", 2),
    ]
    assert [a0.text, a1.text] == ["Hi, it's Dana from Acme.", "Is now a good time?"]
    assert (a0.start_ms, a0.end_ms, a1.start_ms, a1.end_ms) == (1_000, 2_100, 2_100, 3_100)
    assert a0.channel == a1.channel == AGENT and a2.channel == CUSTOMER
    assert a2.text == "Not really, call me on [PHONE] tomorrow."
    assert [(p.kind, a2.text[p.start : p.end]) for p in a2.pii] == [(chopper_pb2.PHONE, "[PHONE]")]
    assert a2.previous_text == a1.text and a1.previous_text == a0.text and a0.previous_text == ""
    assert b0.text == "I want to cancel my plan." and b0.previous_text == ""
    assert b0.prosody == prosody and not a0.HasField("prosody")
    assert [b1.text, b2.text] == ["It's too expensive.", "My card ends in 1111."]
    assert b2.previous_text == b1.text and b1.source_segment_id == 1
    for u in (a0, a1, a2, b0, b1, b2):
        assert 0 < u.token_count < 128 and u.start_ms <= u.end_ms


async def test_a_resumed_call_goes_on_with_its_ids_and_context(chopper: chopper_pb2_grpc.ChopperStub) -> None:
    """A stream that takes a call over from a chopper that went away: ids go on, never reused."""
    first = final("c-resume", 7, "We can sign this week.", audio_pb2.CUSTOMER, 0, 2_000)
    first.resume.CopyFrom(chopper_pb2.ChopResume(next_utterance_id=12, previous_text="What about price?"))
    later = final("c-resume", 8, "Send the contract over.", audio_pb2.CUSTOMER, 2_000, 4_000)
    later.resume.CopyFrom(chopper_pb2.ChopResume(next_utterance_id=99))  # only the first one counts
    out = [u async for u in chopper.Chop(iter([first, later, end("c-resume")]))]
    assert [(u.utterance_id, u.previous_text) for u in out] == [
        (12, "What about price?"),
        (13, "We can sign this week."),
    ]


async def test_half_close_flushes_open_calls(chopper: chopper_pb2_grpc.ChopperStub) -> None:
    requests = [final("solo", 0, "Great, thanks. That works for us.", CUSTOMER, 0, 2_000)]
    out = [u async for u in chopper.Chop(iter(requests))]
    assert [(u.utterance_id, u.text) for u in out] == [(0, "Great, thanks. That works for us.")]


async def expect_rejection(
    chopper: chopper_pb2_grpc.ChopperStub,
    requests: list[chopper_pb2.ChopRequest],
    code: grpc.StatusCode,
    pattern: str,
) -> list[chopper_pb2.Utterance]:
    received: list[chopper_pb2.Utterance] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for u in chopper.Chop(iter(requests)):
            received.append(u)
    assert caught.value.code() == code
    assert re.search(pattern, caught.value.details() or ""), caught.value.details()
    return received


async def test_missing_call_id_ends_the_stream_after_earlier_utterances(
    chopper: chopper_pb2_grpc.ChopperStub,
) -> None:
    good = final("call-ok", 0, "This part is fine.", CUSTOMER, 0, 1_000)
    bad = chopper_pb2.ChopRequest(transcript=asr_pb2.TranscriptEvent(is_final=True, text="who am I"))
    received = await expect_rejection(
        chopper, [good, bad], grpc.StatusCode.INVALID_ARGUMENT, "call_id is empty"
    )
    assert [u.text for u in received] == ["This part is fine."]


@pytest.mark.parametrize(
    ("request_", "pattern"),
    [
        (chopper_pb2.ChopRequest(call_id="call/1", end=audio_pb2.CallEnd()), r"not 1\.\.128 characters"),
        (chopper_pb2.ChopRequest(call_id="call-1"), "neither transcript nor end"),
        (
            chopper_pb2.ChopRequest(
                call_id="call-1", transcript=asr_pb2.TranscriptEvent(call_id="call-2", is_final=True)
            ),
            "transcript.call_id is 'call-2'",
        ),
        (
            final("call-1", 4, "backwards in time", CUSTOMER, 900, 100),
            r"call call-1: segment 4: times 900\.\.100",
        ),
        (final("call-1", 5, "word " * 2_000, CUSTOMER, 0, 100), "at most 8192 and 2000 are accepted"),
    ],
)
async def test_bad_messages_are_invalid_argument(
    chopper: chopper_pb2_grpc.ChopperStub, request_: chopper_pb2.ChopRequest, pattern: str
) -> None:
    await expect_rejection(chopper, [request_], grpc.StatusCode.INVALID_ARGUMENT, pattern)


async def test_final_after_its_call_ended_is_failed_precondition(
    chopper: chopper_pb2_grpc.ChopperStub,
) -> None:
    requests = [
        final("call-a", 0, "First call, first words.", CUSTOMER, 0, 1_000),
        final("call-b", 0, "Second call keeps the stream open.", AGENT, 0, 1_000),
        end("call-a"),
        final("call-a", 1, "Too late for this one.", CUSTOMER, 1_000, 2_000),
    ]
    received = await expect_rejection(
        chopper,
        requests,
        grpc.StatusCode.FAILED_PRECONDITION,
        "call call-a: segment 1 arrived after the call ended",
    )
    assert [u.call_id for u in received] == ["call-a", "call-b"]
