"""A card number said across two final segments of one channel (issue 13): both halves are masked, the first
as soon as its segment arrives; another channel, another call and a new call are not affected. Checked on the
``Segmenter`` and through Chopper.Chop on a real grpc.aio server; also that every mask kind reaches the
proto."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc.aio
import pytest

from callsense import grpc_runtime
from callsense.v1 import asr_pb2, audio_pb2, chopper_pb2, chopper_pb2_grpc
from chopper_service.pii import PiiKind
from chopper_service.segmenter import MAX_CARRIED_CHANNELS, Segmenter, TranscriptSegment, Utterance
from chopper_service.server import _PII_KINDS, SERVICE_NAME, ChopperServicer, add_chopper

CUSTOMER = audio_pb2.CUSTOMER
AGENT = audio_pb2.AGENT


def seg(text: str, channel: int = CUSTOMER, segment_id: int = 0) -> TranscriptSegment:
    return TranscriptSegment(text=text, channel=channel, start_ms=0, end_ms=2_000, segment_id=segment_id)


def texts(utterances: list[Utterance]) -> list[str]:
    return [u.text for u in utterances]


def kinds(utterances: list[Utterance]) -> list[PiiKind]:
    return [s.kind for u in utterances for s in u.pii]


# ------------------------------------------------------------------------------------------ segmenter


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (
            "My card number is 4111 1111",
            "1111 1111. That's it.",
            ["My card number is [CARD]", "[CARD]. That's it."],
        ),
        (
            "My card number is four one one one one one one one",
            "one one one one one one one one",
            ["My card number is [CARD]", "[CARD]"],
        ),
        ("Okay, the card number is", "4111 1111 1111 1111.", ["Okay, the card number is", "[CARD]."]),
    ],
)
def test_both_halves_of_a_split_card_are_masked(first: str, second: str, expected: list[str]) -> None:
    segmenter = Segmenter()
    head = segmenter.feed(seg(first, segment_id=0))
    tail = segmenter.feed(seg(second, segment_id=1))
    assert texts(head) + texts(tail) == expected
    assert PiiKind.CARD in kinds(tail)
    for u in head + tail:
        assert "4111" not in u.text and "1111" not in u.text and "one one" not in u.text


def test_the_other_channel_speaking_in_between_changes_nothing() -> None:
    segmenter = Segmenter()
    assert texts(segmenter.feed(seg("My card number is 4111 1111", CUSTOMER))) == ["My card number is [CARD]"]
    # The agent's own digits are not the rest of the customer's card, and do not end its state.
    assert texts(segmenter.feed(seg("1234 5678 is your ticket.", AGENT))) == ["1234 5678 is your ticket."]
    assert texts(segmenter.feed(seg("1111 1111", CUSTOMER))) == ["[CARD]"]


def test_another_call_and_a_later_segment_are_not_affected() -> None:
    call_a, call_b = Segmenter(), Segmenter()
    call_a.feed(seg("My card number is 4111 1111"))
    assert texts(call_b.feed(seg("1111 1111 is the order number."))) == ["1111 1111 is the order number."]
    assert texts(call_a.feed(seg("1111 1111"))) == ["[CARD]"]
    # The number is complete: the channel's next leading digits are its own.
    assert texts(call_a.feed(seg("1111 1111 is the order number."))) == ["1111 1111 is the order number."]


def test_segment_without_words_keeps_the_state_and_close_drops_it() -> None:
    segmenter = Segmenter()
    segmenter.feed(seg("My card number is 4111 1111"))
    assert segmenter.feed(seg("   ")) == []
    assert texts(segmenter.feed(seg("1111 1111"))) == ["[CARD]"]
    segmenter.feed(seg("My card number is 4111 1111"))
    segmenter.close()
    assert segmenter._card_carry == {}


def test_state_is_bounded_per_channel() -> None:
    segmenter = Segmenter()
    for channel in range(MAX_CARRIED_CHANNELS + 5):
        segmenter.feed(seg("My card number is 4111 1111", channel))
    assert len(segmenter._card_carry) == MAX_CARRIED_CHANNELS
    assert texts(segmenter.feed(seg("1111 1111", 0))) == ["1111 1111"]  # the oldest was dropped
    assert texts(segmenter.feed(seg("1111 1111", MAX_CARRIED_CHANNELS + 4))) == ["[CARD]"]


# ------------------------------------------------------------------------------------- gRPC service


def test_every_mask_kind_has_a_proto_kind() -> None:
    assert set(_PII_KINDS) == set(PiiKind)
    assert len(set(_PII_KINDS.values())) == len(PiiKind)
    assert chopper_pb2.PII_KIND_UNSPECIFIED not in _PII_KINDS.values()


@pytest.fixture
async def chopper_stub() -> AsyncIterator[chopper_pb2_grpc.ChopperStub]:
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
    call_id: str, segment_id: int, text: str, channel: audio_pb2.ChannelRole
) -> chopper_pb2.ChopRequest:
    event = asr_pb2.TranscriptEvent(
        segment_id=segment_id, is_final=True, text=text, channel=channel, start_ms=0, end_ms=1_000
    )
    return chopper_pb2.ChopRequest(call_id=call_id, transcript=event)


def end(call_id: str) -> chopper_pb2.ChopRequest:
    return chopper_pb2.ChopRequest(call_id=call_id, end=audio_pb2.CallEnd(call_id=call_id, reason="hangup"))


async def read_one(call: grpc.aio.StreamStreamCall) -> chopper_pb2.Utterance:
    message = await asyncio.wait_for(call.read(), 5.0)
    assert message is not grpc.aio.EOF
    assert isinstance(message, chopper_pb2.Utterance)
    return message


def masks(u: chopper_pb2.Utterance) -> list[tuple[int, str]]:
    return [(p.kind, u.text[p.start : p.end]) for p in u.pii]


async def test_split_card_through_the_service(chopper_stub: chopper_pb2_grpc.ChopperStub) -> None:
    call = chopper_stub.Chop()
    await call.write(final("call-a", 0, "My card number is 4111 1111", CUSTOMER))
    first = await read_one(call)  # out before the rest of the number is heard
    await call.write(final("call-a", 1, "Go on, I'm listening.", AGENT))
    agent = await read_one(call)
    await call.write(final("call-b", 0, "1111 1111 is our order number.", CUSTOMER))
    other_call = await read_one(call)
    await call.write(final("call-a", 2, "1111 1111.", CUSTOMER))
    second = await read_one(call)
    await call.write(end("call-a"))
    await call.write(end("call-b"))
    assert await asyncio.wait_for(call.read(), 5.0) is grpc.aio.EOF

    assert first.text == "My card number is [CARD]"
    assert masks(first) == [(chopper_pb2.CARD_NUMBER, "[CARD]")]
    assert agent.text == "Go on, I'm listening." and not agent.pii
    assert other_call.text == "1111 1111 is our order number." and not other_call.pii
    assert second.text == "[CARD]." and masks(second) == [(chopper_pb2.CARD_NUMBER, "[CARD]")]
    assert second.previous_text == agent.text


async def test_new_kinds_reach_the_proto(chopper_stub: chopper_pb2_grpc.ChopperStub) -> None:
    text = (
        "The CVV is four five six and my IBAN is GB82 WEST 1234 5698 7654 32, "
        "date of birth 14/03/1985, I live at 221B Baker Street."
    )
    out = [u async for u in chopper_stub.Chop(iter([final("kinds", 0, text, CUSTOMER)]))]
    found = [m for u in out for m in masks(u)]
    assert found == [
        (chopper_pb2.CARD_SECURITY_CODE, "[CARD_SECURITY_CODE]"),
        (chopper_pb2.IBAN, "[IBAN]"),
        (chopper_pb2.DATE_OF_BIRTH, "[DATE_OF_BIRTH]"),
        (chopper_pb2.POSTAL_ADDRESS, "[ADDRESS]"),
    ]
    joined = " ".join(u.text for u in out)
    for secret in ("four five six", "GB82", "14/03/1985", "221B", "Baker"):
        assert secret not in joined
