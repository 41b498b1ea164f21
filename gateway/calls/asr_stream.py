"""A live call's stream to the ASR, opened again when the ASR process behind it goes away.

Like the chopper and the scorer (gateway/calls/stage_streams.py), an ASR that dies mid-call ends the
call's Transcribe stream with UNAVAILABLE (or, through Envoy, INTERNAL / UNKNOWN); the call does not fail
for it. The stream is opened again (any healthy replica, with back-off, for up to
``SessionSettings.stage_reopen_s``) with the same CallStart, and is sent first the audio the old stream had
not made finals of (``AudioReplay``: per channel, everything after the end of its last final, at most
``SessionSettings.asr_replay_s``), each piece at its place in the call: the new ASR skips to the first
piece's time, so its segments keep call times.

The new stream numbers its segments from 0 again; the listeners must not notice:

- **segment ids** are the gateway's own per channel: the new stream's segments take the ids after the last
  one shown, in the order they first yield text, so ids stay unique, increasing and without gaps;
- **a segment the old stream showed in partials and never finished** gets its final at the re-opening,
  with empty text (the contract's "a hallucination after all": listeners drop what the partials showed;
  the chopper cuts nothing from it); the new stream hears that speech again as a new segment;
- **speech heard twice** (interleaved audio is sent again from the channel that is furthest behind, so
  another channel's finished speech comes again) is recognised by its place: a segment whose midpoint is
  before the end of its channel's last final is not shown again (its final, if partials were shown, comes
  with empty text).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc.aio

from callsense.v1 import asr_pb2, asr_pb2_grpc, audio_pb2
from gateway.calls.audio import AudioPiece, AudioReplay
from gateway.calls.stage_streams import Reopening, stop_stream


class AsrStream:
    """The call's Transcribe stream: audio pieces in (``next_piece``; None ends the audio), transcript
    events out, with the gateway's segment ids."""

    def __init__(
        self,
        stub: asr_pb2_grpc.AsrStub,
        start: audio_pb2.CallStart,
        next_piece: Callable[[], Awaitable[AudioPiece | None]],
        stop_reason: Callable[[], str],
        reopening: Reopening,
        *,
        replay_ms: int,
    ) -> None:
        self._stub = stub
        self._start = start
        self._call_id = start.call_id
        self._next_piece = next_piece
        self._stop_reason = stop_reason
        self._reopening = reopening
        self._replay = AudioReplay(list(start.channel_roles), replay_ms)
        self._ended = False  # the end of the audio was taken
        self._segments = SegmentIds()

    async def run(
        self, first: AudioPiece, on_event: Callable[[asr_pb2.TranscriptEvent], Awaitable[None]]
    ) -> None:
        """``on_event`` for every transcript event, partials included, until the ASR has sent its last."""
        self._replay.add(first)
        while True:
            call = self._stub.Transcribe()
            writer = asyncio.create_task(self._write(call))
            try:
                async for event in call:
                    self._reopening.answered()
                    shown = self._segments.show(event, self._replay.finalised_ms(event.channel))
                    if event.is_final:  # its audio is done, whether shown or heard before
                        self._replay.finalised(event.channel, event.end_ms)
                    if shown is not None:
                        await on_event(shown)
                return
            except grpc.aio.AioRpcError as exc:
                await self._reopening.after(exc)
                for closing in self._segments.reopened():
                    await on_event(closing)
            finally:
                await stop_stream(call, writer)

    async def _write(self, call: Any) -> None:
        def chunk(piece: AudioPiece, seq: int) -> asr_pb2.TranscribeRequest:
            message = audio_pb2.AudioChunk(
                call_id=self._call_id,
                seq=seq,
                channel=piece.role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
                timestamp_ms=piece.timestamp_ms,
                audio=piece.audio,
            )
            return asr_pb2.TranscribeRequest(call_id=self._call_id, chunk=message)

        await call.write(asr_pb2.TranscribeRequest(call_id=self._call_id, start=self._start))
        seq = 0
        for piece in self._replay.pending():  # first stream: the first piece; a new one: all unfinished
            await call.write(chunk(piece, seq))
            seq += 1
        while not self._ended:
            next_piece = await self._next_piece()
            if next_piece is None:
                self._ended = True
                break
            self._replay.add(next_piece)  # before the write: a write cut short is sent again
            await call.write(chunk(next_piece, seq))
            seq += 1
        end = audio_pb2.CallEnd(call_id=self._call_id, reason=self._stop_reason())
        await call.write(asr_pb2.TranscribeRequest(call_id=self._call_id, end=end))
        await call.done_writing()


class SegmentIds:
    """The gateway's segment ids over a call's successive Transcribe streams (see the module's doc)."""

    def __init__(self) -> None:
        self._next_id: dict[int, int] = {}  # per channel role: the first id not shown yet
        self._ids: dict[tuple[int, int], int] = {}  # this stream's (role, segment id) -> the gateway's id
        self._open: dict[tuple[int, int], asr_pb2.TranscriptEvent] = {}  # shown in partials only, by our id

    def show(self, event: asr_pb2.TranscriptEvent, finalised_ms: int) -> asr_pb2.TranscriptEvent | None:
        """The event as listeners see it, or None when it is not shown; ``finalised_ms``: where the last
        final of the event's channel ended (speech before it was heard on an earlier stream)."""
        role = event.channel
        heard_before = (event.start_ms + event.end_ms) // 2 < finalised_ms
        segment_id = self._ids.get((role, event.segment_id))
        if segment_id is None:
            if heard_before:
                return None  # never shown: nothing to take back
            segment_id = self._ids[(role, event.segment_id)] = self._next_id.get(role, 0)
            self._next_id[role] = segment_id + 1
        shown = asr_pb2.TranscriptEvent()
        shown.CopyFrom(event)
        shown.segment_id = segment_id
        if not event.is_final:
            if heard_before:
                return None
            self._open[(role, segment_id)] = shown
            return shown
        self._open.pop((role, segment_id), None)
        return _emptied(shown) if heard_before else shown

    def reopened(self) -> list[asr_pb2.TranscriptEvent]:
        """A new stream begins: an empty final for each segment shown in partials only (the new stream
        hears its speech again, under a new id); the new stream's ids follow every id shown."""
        closing = [_emptied(partial) for partial in self._open.values()]
        self._open.clear()
        self._ids.clear()
        return closing


def _emptied(event: asr_pb2.TranscriptEvent) -> asr_pb2.TranscriptEvent:
    """The final of a segment that takes back what its partials showed."""
    return asr_pb2.TranscriptEvent(
        call_id=event.call_id,
        segment_id=event.segment_id,
        is_final=True,
        start_ms=event.start_ms,
        end_ms=event.end_ms,
        channel=event.channel,
    )
