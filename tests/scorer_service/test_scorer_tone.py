"""The scorer service with tone fusion: a real grpc.aio server on the shipped text model and a hand-made
fusion head (tests/support/tone.py), so what moves a score is known.

- text inputs get exactly the scores of a scorer without fusion, ``tone_fused`` false, text_p_* = p_*;
- a polite customer whose voice hardens (louder, faster, higher than their own earlier turns) is scored
  more negative than the words alone, and the score says both;
- a call's baselines are its own (two calls on one stream, agent and customer within a call), go when the
  stream ends, and ScoreBatch reads each call of a request on its own: the same numbers as the stream.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from callsense import grpc_runtime
from callsense.v1 import audio_pb2, chopper_pb2, scorer_pb2, scorer_pb2_grpc
from scorer_service import inference
from scorer_service.fusion.head import SHIPPED_HEAD, FusionHead
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from scorer_service.server import ScorerServicer, add_scorer
from tests.support.tone import prosody, toy_head, utterance

POLITE = [
    "Thanks for walking me through the options.",
    "I see, so the renewal would start in March.",
    "Okay, and the price would be the same as last year?",
    "Right, I understand what you are saying.",
]
CALM = prosody(120.0, -26.0, 2.4)
HARD = prosody(150.0, -16.0, 3.6)


@pytest.fixture(scope="module")
def model() -> SentimentModel:
    if not inference.DEFAULT_MODEL.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {inference.DEFAULT_MODEL} not found; the scorer tests need it")
    return SentimentModel.load()


class Served:
    def __init__(self, servicer: ScorerServicer, stub: scorer_pb2_grpc.ScorerStub) -> None:
        self.servicer = servicer
        self.stub = stub

    async def stream(self, utterances: Sequence[chopper_pb2.Utterance]) -> list[scorer_pb2.SentimentScore]:
        async def requests() -> AsyncIterator[scorer_pb2.ScoreRequest]:
            for u in utterances:
                yield scorer_pb2.ScoreRequest(call_id=u.call_id, utterance=u)

        return [s async for s in self.stub.Score(requests())]


@pytest.fixture
async def served(model: SentimentModel) -> AsyncIterator[tuple[Served, Served]]:
    """A scorer with the toy head and one without fusion."""
    servicers = [
        ScorerServicer.create(model, max_wait_ms=5, tone=ToneFuser(toy_head())),
        ScorerServicer.create(model, max_wait_ms=5),
    ]
    servers = [
        await grpc_runtime.start_server(functools.partial(add_scorer, servicer=v), "127.0.0.1:0")
        for v in servicers
    ]
    channels = [grpc_runtime.insecure_channel(grpc_runtime.server_info(s).address) for s in servers]
    try:
        yield (
            Served(servicers[0], scorer_pb2_grpc.ScorerStub(channels[0])),
            Served(servicers[1], scorer_pb2_grpc.ScorerStub(channels[1])),
        )
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await grpc_runtime.stop_server(server, grace_s=1)
        for servicer in servicers:
            await servicer.close()


def probabilities(s: scorer_pb2.SentimentScore) -> tuple[float, float, float]:
    return (s.p_negative, s.p_neutral, s.p_positive)


def text_probabilities(s: scorer_pb2.SentimentScore) -> tuple[float, float, float]:
    return (s.text_p_negative, s.text_p_neutral, s.text_p_positive)


async def test_text_inputs_get_exactly_todays_scores(served: tuple[Served, Served]) -> None:
    fused, plain = served
    call = [utterance("t-1", i, text) for i, text in enumerate(POLITE)]
    with_head, without = await fused.stream(call), await plain.stream(call)
    assert [probabilities(s) for s in with_head] == [probabilities(s) for s in without]
    assert [s.label for s in with_head] == [s.label for s in without]
    assert all(not s.tone_fused and s.fusion_version == "" for s in with_head)
    assert all(text_probabilities(s) == probabilities(s) for s in with_head)
    assert fused.servicer.tone is not None and len(fused.servicer.tone.baselines) == 0


async def test_a_hardening_voice_moves_the_score_the_words_do_not(served: tuple[Served, Served]) -> None:
    fused, plain = served
    voices = [CALM, CALM, CALM, HARD]
    call = [
        utterance("t-2", i, text, voice) for i, (text, voice) in enumerate(zip(POLITE, voices, strict=True))
    ]
    scores = await fused.stream(call)
    text_only = await plain.stream(call)
    assert [text_probabilities(s) for s in scores] == [probabilities(s) for s in text_only]
    assert [s.tone_fused for s in scores] == [False, False, False, True]  # first turn; the same voice again
    last = scores[-1]
    assert last.fusion_version == "tone-test-1"
    assert last.p_negative > last.text_p_negative + 0.3 and last.score < text_only[-1].score - 0.2
    assert last.label == scorer_pb2.NEGATIVE and text_only[-1].label != scorer_pb2.NEGATIVE
    assert sum(probabilities(last)) == pytest.approx(1.0, abs=1e-5)
    assert fused.servicer.tone is not None and len(fused.servicer.tone.baselines) == 0  # the stream ended


async def test_calls_and_speakers_keep_their_own_baselines_and_batch_agrees(
    served: tuple[Served, Served],
) -> None:
    fused, _ = served
    a = [utterance("t-a", i, POLITE[i], v) for i, v in enumerate([CALM, CALM, HARD])]
    # Call b: the agent is loud throughout (its own baseline), the customer calm.
    b = [
        utterance("t-b", 0, POLITE[0], HARD, audio_pb2.AGENT),
        utterance("t-b", 1, POLITE[1], CALM),
        utterance("t-b", 2, POLITE[2], HARD, audio_pb2.AGENT),
        utterance("t-b", 3, POLITE[3], CALM),
    ]
    interleaved = [a[0], b[0], a[1], b[1], b[2], a[2], b[3]]
    scores = {(s.call_id, s.utterance_id): s for s in await fused.stream(interleaved)}
    assert scores[("t-a", 2)].tone_fused
    assert not any(scores[("t-b", i)].tone_fused for i in range(4))  # each speaker steady against itself
    batch = await fused.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=interleaved))
    assert [probabilities(s) for s in batch.scores] == [
        probabilities(scores[(u.call_id, u.utterance_id)]) for u in interleaved
    ]
    assert fused.servicer.tone is not None and len(fused.servicer.tone.baselines) == 0


def test_the_scorer_serves_the_head_it_is_given_or_none(tmp_path: Path) -> None:
    from scorer_service.__main__ import _load_head, _StartError, parse_args

    assert _load_head(parse_args([])) is None  # the words alone unless asked
    if SHIPPED_HEAD.is_file():
        shipped = _load_head(parse_args(["--fusion"]))
        assert shipped is not None and shipped.version == FusionHead.load(SHIPPED_HEAD).version
    path = tmp_path / "fusion.json"
    toy_head("tone-cli-1").save(path)
    head = _load_head(parse_args(["--fusion", str(path)]))
    assert head is not None and head.version == "tone-cli-1"
    path.write_text("{}")
    with pytest.raises(_StartError, match="tone fusion head"):
        _load_head(parse_args(["--fusion", str(path)]))
