"""The scorer: the MicroBatcher on a fake model, then a real grpc.aio Scorer server on the shipped model.

The server tests use the shipped model (``SentimentModel.load()``) and skip, saying so, where it is
absent. The pytest process stays uninstrumented (OpenTelemetry providers are global, see
test_contracts.py), so metrics and spans go to the no-op providers here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import grpc
import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callsense import grpc_runtime
from callsense.telemetry import read_trace_file
from callsense.tokenization import EncodedText
from callsense.v1 import audio_pb2, chopper_pb2, scorer_pb2, scorer_pb2_grpc
from scorer_service import inference
from scorer_service.__main__ import parse_args
from scorer_service.batcher import BatcherClosed, BatchReport, MicroBatcher, plan_buckets
from scorer_service.inference import Prediction, SentimentModel
from scorer_service.server import SERVICE_NAME, ScorerServicer, add_scorer
from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ MicroBatcher, fake model


def enc(tag: int, length: int = 5) -> EncodedText:
    """An encoded text whose first token id identifies it, so results can be matched to requests."""
    ids = np.full(length, 7, dtype=np.int64)
    ids[0] = tag
    return EncodedText(ids, np.zeros(length, dtype=np.int64))


class FakeModel:
    """Records every forward pass; its prediction echoes the request's tag. Runs on the batcher's thread."""

    def __init__(self, delay_s: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay_s = delay_s
        self.gate = gate
        self.batches: list[list[int]] = []  # tags per forward pass
        self.threads: set[str] = set()
        self.fail_tag: int | None = None
        self.at_gate = threading.Event()  # set when a forward pass has started (and waits at the gate)

    def predict_encoded(self, batch: Sequence[EncodedText]) -> list[Prediction]:
        self.threads.add(threading.current_thread().name)
        self.at_gate.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
        if self.delay_s:
            time.sleep(self.delay_s)
        tags = [int(e.input_ids[0]) for e in batch]
        self.batches.append(tags)
        if self.fail_tag in tags:
            raise RuntimeError("forward pass exploded")
        return [Prediction(tag / 1000, 0.0, 1 - tag / 1000) for tag in tags]


def tag_of(prediction: Prediction) -> int:
    return round(prediction.p_negative * 1000)


async def reached_gate(model: FakeModel) -> None:
    assert await asyncio.to_thread(model.at_gate.wait, 10), "no forward pass started"


async def settled(condition: Callable[[], bool], what: str) -> None:
    """Run the event loop until `condition` holds: the submitters only need turns, not time."""
    for _ in range(1_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never true: {what}")


def test_plan_buckets_groups_similar_lengths_within_max_batch() -> None:
    lengths = [10, 60, 12, 14, 62, 11, 120, 13]
    groups = plan_buckets(lengths, max_batch=3)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    assert all(1 <= len(g) <= 3 for g in groups)
    for group in groups:
        longest, shortest = max(lengths[i] for i in group), min(lengths[i] for i in group)
        assert longest - shortest <= max(8, 0.25 * shortest)
    assert [sorted(lengths[i] for i in g) for g in groups] == [[10, 11, 12], [13, 14], [60, 62], [120]]
    assert plan_buckets([], 4) == []


async def test_max_batch_respected_and_results_matched() -> None:
    model = FakeModel()
    reports: list[BatchReport] = []
    async with MicroBatcher(model, max_batch=4, max_wait_ms=200, on_batch=reports.append) as batcher:
        results = await asyncio.gather(*(batcher.submit(enc(tag)) for tag in range(1, 11)))
    assert [tag_of(r.prediction) for r in results] == list(range(1, 11))
    assert all(len(b) <= 4 for b in model.batches)
    assert sorted(len(b) for b in model.batches) == [2, 4, 4]
    assert {r.batch_size for r in results} == {2, 4}
    assert batcher.stats.requests == 10 and batcher.stats.max_batch_size == 4
    assert [r.size for r in reports] == [len(b) for b in model.batches]
    assert len(model.threads) == 1 and next(iter(model.threads)).startswith("scorer-inference")


async def test_a_lone_request_goes_at_once_and_a_burst_waits_for_company() -> None:
    model = FakeModel()
    async with MicroBatcher(model, max_batch=32, max_wait_ms=150) as batcher:
        loop = asyncio.get_running_loop()
        started = loop.time()
        alone = await batcher.submit(enc(1))
        assert alone.batch_size == 1
        assert loop.time() - started < 0.1  # no max_wait for a request that finds no company

        # A burst: two requests queued together make the collector wait for more, up to max_wait
        # counted from the FIRST of them; a third arriving within that joins their batch.
        started = loop.time()
        burst = [asyncio.create_task(batcher.submit(enc(tag))) for tag in (2, 3)]
        await asyncio.sleep(0.03)
        late = asyncio.create_task(batcher.submit(enc(4)))
        results = await asyncio.gather(*burst, late)
        waited = loop.time() - started
        assert {r.batch_size for r in results} == {3}
        assert 0.14 <= waited < 0.14 + 1.0, waited
    assert model.batches == [[1], [2, 3, 4]]


@pytest.mark.parametrize(("max_batch", "max_wait_ms"), [(1, 50.0), (32, 0.0)])
async def test_batching_off(max_batch: int, max_wait_ms: float) -> None:
    model = FakeModel(delay_s=0.005)
    async with MicroBatcher(model, max_batch=max_batch, max_wait_ms=max_wait_ms) as batcher:
        started = time.perf_counter()
        results = await asyncio.gather(*(batcher.submit(enc(tag)) for tag in range(1, 9)))
    assert {r.batch_size for r in results} == {1}
    assert len(model.batches) == 8
    assert time.perf_counter() - started < 2.0  # never waits max_wait_ms for batch-mates


async def test_back_pressure_with_tiny_queue() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    batcher = MicroBatcher(model, max_batch=2, max_wait_ms=0.5, max_queue=2)
    tasks = [asyncio.create_task(batcher.submit(enc(tag))) for tag in range(1, 9)]
    try:
        await reached_gate(model)
        await settled(lambda: batcher.queue_depth == 2, "two requests queued behind the gated batch")
        for _ in range(100):
            await asyncio.sleep(0)  # turns enough for a submitter that could still get in to do so
        # One batch of 2 is held at the gate; 2 wait in the queue; the other 4 submitters are blocked.
        assert batcher.queue_depth == 2
        assert sum(len(b) for b in model.batches) == 0 and not any(t.done() for t in tasks)
        gate.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert sorted(tag_of(r.prediction) for r in results) == list(range(1, 9))
    finally:
        gate.set()
        await batcher.close()


async def test_close_drains_queued_work_then_refuses() -> None:
    model = FakeModel(delay_s=0.01)
    batcher = MicroBatcher(model, max_batch=3, max_wait_ms=20, max_queue=4)
    tasks = [asyncio.create_task(batcher.submit(enc(tag))) for tag in range(1, 11)]
    await asyncio.sleep(0)  # let every submitter reach the queue (or block on it)
    await batcher.close()
    assert all(t.done() for t in tasks)
    assert sorted(tag_of(t.result().prediction) for t in tasks) == list(range(1, 11))
    with pytest.raises(BatcherClosed):
        await batcher.submit(enc(99))


async def test_buckets_split_a_collected_batch_by_length() -> None:
    model = FakeModel()
    async with MicroBatcher(model, max_batch=8, max_wait_ms=50) as batcher:
        short = [batcher.submit(enc(tag, length=8)) for tag in (1, 2, 3)]
        long = [batcher.submit(enc(tag, length=100)) for tag in (4, 5)]
        results = await asyncio.gather(*short, *long)
    assert sorted(map(sorted, model.batches)) == [[1, 2, 3], [4, 5]]
    assert [r.batch_size for r in results] == [3, 3, 3, 2, 2]
    assert batcher.stats.padding_fraction == 0.0


async def test_failed_pass_fails_only_its_requests_and_cancelled_are_skipped() -> None:
    gate = threading.Event()
    model = FakeModel(gate=gate)
    model.fail_tag = 2
    async with MicroBatcher(model, max_batch=2, max_wait_ms=30) as batcher:
        first = asyncio.create_task(batcher.submit(enc(1)))
        await reached_gate(model)  # batch [1] is at the gate
        failing = asyncio.create_task(batcher.submit(enc(2)))
        dropped = asyncio.create_task(batcher.submit(enc(3, length=100)))  # its own bucket
        await settled(lambda: batcher.queue_depth == 2, "both requests queued")
        dropped.cancel()
        gate.set()
        assert tag_of((await first).prediction) == 1
        with pytest.raises(RuntimeError, match="exploded"):
            await failing
        assert tag_of((await batcher.submit(enc(4))).prediction) == 4  # the collector goes on
    assert [3] not in model.batches
    assert batcher.stats.failed_batches == 1


# ---------------------------------------------------------------------------------- the gRPC server


@pytest.fixture(scope="module")
def model() -> SentimentModel:
    path = inference.DEFAULT_MODEL
    if not path.is_file():
        pytest.skip(f"SHIPPED MODEL ABSENT: {path} not found; the scorer server tests need it")
    return SentimentModel.load()


SALES_LINES = [
    "Sounds good.",
    "No.",
    "Honestly the price you quoted is a lot higher than what we budgeted for this year.",
    "I really like what you showed us in the demo, the team was impressed.",
    "That is way too expensive for a company of our size, I'm not sure this works.",
    "We are also talking to one of your competitors at the moment, and they came in cheaper.",
    "Who else would need to sign off on this on your side?",
    "The onboarding last year was a disaster and nobody answered our tickets for weeks, so before we talk "
    "about a renewal I need to know who will actually support us after go-live.",
    "Perfect, send it over and I'll get it signed this week.",
    "I guess that could work, maybe.",
]


def test_a_score_is_the_same_alone_and_among_batch_mates(model: SentimentModel) -> None:
    """Dynamic INT8 takes its activation scale over the whole pass (padding included), so a padded
    batch once moved a score by up to 0.13; a score must depend on the utterance alone."""
    items = [inference.SentimentInput(t) for t in SALES_LINES]
    alone = [model.predict([item])[0] for item in items]
    together = model.predict(items, max_batch=32)
    mixed = model.predict(items[::-1] + items[:3], max_batch=4)
    assert together == alone
    assert mixed[: len(items)][::-1] == alone
    encoded = [model.encode(item) for item in items]
    assert model.predict_encoded(encoded) == alone  # what the batcher calls with a collected group


# The same customer's praise, then an objection in plain words: a context model leans on the line before
# and reads some of these as positive. The model of 2026-12-05 03:17 scored them 0.75 and 0.82 (alone: 0.32
# and 0.21); the one of 06:37, trained with mismatched context (`callsense train --context-swap`), 0.62
# and 0.30 (alone: 0.28 and 0.15): better, not there. Strict: the model that fixes them fails this mark.
PRAISE_THEN_OBJECTION = [
    ("This looks fantastic.", "Unfortunately it's too expensive for us right now."),
    (
        "Great to meet you too, the demo last week looked really good.",
        "That price is ridiculous and way too expensive for us.",
    ),
]


@pytest.mark.xfail(
    strict=True, reason="issue 12: the context model reads an objection after praise as praise"
)
def test_an_objection_right_after_praise_scores_under_the_red_line(model: SentimentModel) -> None:
    if not model.info.uses_context:
        pytest.skip("the shipped model reads no context")
    scores = model.predict([inference.SentimentInput(text, before) for before, text in PRAISE_THEN_OBJECTION])
    assert all(s.score < 0.30 for s in scores), [round(s.score, 2) for s in scores]


class Scorer:
    """A started server and a channel to it."""

    def __init__(self, servicer: ScorerServicer, server: grpc.aio.Server, channel: grpc.aio.Channel) -> None:
        self.servicer = servicer
        self.server = server
        self.channel = channel
        self.stub = scorer_pb2_grpc.ScorerStub(channel)


@pytest.fixture
async def scorer(model: SentimentModel) -> AsyncIterator[Scorer]:
    servicer = ScorerServicer.create(model, max_batch=32, max_wait_ms=10)
    server = await grpc_runtime.start_server(lambda s: add_scorer(s, servicer), "127.0.0.1:0")
    channel = grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address)
    try:
        yield Scorer(servicer, server, channel)
    finally:
        await channel.close()
        await grpc_runtime.stop_server(server, grace_s=1)
        await servicer.close()


def request(call_id: str, utterance_id: int, text: str) -> scorer_pb2.ScoreRequest:
    return scorer_pb2.ScoreRequest(
        call_id=call_id,
        utterance=chopper_pb2.Utterance(call_id=call_id, utterance_id=utterance_id, text=text),
    )


async def stream_of(requests: Sequence[scorer_pb2.ScoreRequest]) -> AsyncIterator[scorer_pb2.ScoreRequest]:
    for item in requests:
        yield item


TEXTS = [
    "Thank you so much, this is exactly what we needed, I love it!",
    "This is terrible, I am really angry about the hidden fees.",
    "Can you send me the contract by Friday?",
    "Okay.",
    "We are very happy with the support team, great job.",
]


async def test_stream_scores_each_utterance_in_order(scorer: Scorer) -> None:
    requests = [request("call-1", 10 + i, text) for i, text in enumerate(TEXTS)]
    scores = [s async for s in scorer.stub.Score(stream_of(requests))]
    assert [s.utterance_id for s in scores] == [10, 11, 12, 13, 14]
    version = scorer.servicer.model.info.version
    for s in scores:
        assert s.call_id == "call-1" and s.model_version == version
        assert abs(s.p_negative + s.p_neutral + s.p_positive - 1) < 1e-4
        assert abs(s.score - (s.p_positive + 0.5 * s.p_neutral)) < 1e-5
        probs = {
            scorer_pb2.NEGATIVE: s.p_negative,
            scorer_pb2.NEUTRAL: s.p_neutral,
            scorer_pb2.POSITIVE: s.p_positive,
        }
        assert s.label == max(probs, key=lambda k: probs[k])
        assert s.batch_size >= 1 and s.inference_ms > 0
    assert scores[0].score > scores[1].score + 0.2  # "love it" against "really angry"
    assert scores[0].label == scorer_pb2.POSITIVE and scores[1].label == scorer_pb2.NEGATIVE


async def test_concurrent_streams_are_batched(scorer: Scorer) -> None:
    async def one_call(n: int) -> list[scorer_pb2.SentimentScore]:
        requests = [request(f"call-{n}", i, TEXTS[(n + i) % len(TEXTS)]) for i in range(3)]
        return [s async for s in scorer.stub.Score(stream_of(requests))]

    results = await asyncio.gather(*(one_call(n) for n in range(20)))
    for n, scores in enumerate(results):
        assert [(s.call_id, s.utterance_id) for s in scores] == [(f"call-{n}", i) for i in range(3)]
    sizes = [s.batch_size for scores in results for s in scores]
    assert max(sizes) > 1, sizes
    assert scorer.servicer.batcher.stats.batches < 60  # fewer forward passes than utterances


async def test_score_batch(scorer: Scorer) -> None:
    utterances = [
        chopper_pb2.Utterance(call_id=f"c{i % 2}", utterance_id=i, text=t) for i, t in enumerate(TEXTS)
    ]
    reply = await scorer.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=utterances))
    assert [(s.call_id, s.utterance_id) for s in reply.scores] == [
        (u.call_id, u.utterance_id) for u in utterances
    ]
    assert reply.scores[0].score > reply.scores[1].score
    streamed = [s async for s in scorer.stub.Score(stream_of([request("c0", 0, TEXTS[0])]))]
    assert streamed[0].score == reply.scores[0].score  # alone or among batch-mates, the same score
    empty = await scorer.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest())
    assert list(empty.scores) == []


# Lines a rep and a buyer say on real calls; the same words scored as either speaker, and with no speaker.
ROLE_LINES = [
    "Wonderful, I'll get the paperwork over to you this afternoon.",
    "Hmm. That's quite a bit more than we had pencilled in for this.",
    "Okay. Can you walk me through how the rollout would work?",
]


async def test_the_channel_chooses_the_models_role_prior(scorer: Scorer, model: SentimentModel) -> None:
    """The scorer reads an utterance as the model reads that speaker's lines, by its channel: an AGENT's or
    a CUSTOMER's line is marked with its role (the shipped card says uses_roles) and gets that role's prior,
    a MIXED or unset channel the words alone; streamed and batched alike."""
    assert set(model.info.role_priors) == {"agent", "customer"}  # the shipped card carries them
    assert model.info.uses_roles
    channels = {"": audio_pb2.MIXED, "agent": audio_pb2.AGENT, "customer": audio_pb2.CUSTOMER}
    utterances = [
        chopper_pb2.Utterance(call_id="roles", utterance_id=i, text=text, channel=channel)
        for i, (text, channel) in enumerate((t, c) for t in ROLE_LINES for c in channels.values())
    ]
    batched = (await scorer.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=utterances))).scores
    streamed = [
        s
        async for s in scorer.stub.Score(
            stream_of([scorer_pb2.ScoreRequest(call_id="roles", utterance=u) for u in utterances])
        )
    ]
    for u, one, other in zip(utterances, batched, streamed, strict=True):
        role = next(r for r, c in channels.items() if c == u.channel)
        expected = model.predict([inference.SentimentInput(u.text, role=role)])[0]  # marked, then its prior
        for s in (one, other):
            got = (s.p_negative, s.p_neutral, s.p_positive)
            want = (expected.p_negative, expected.p_neutral, expected.p_positive)
            assert got == pytest.approx(want, abs=1e-5), (u.text, role)
            assert (s.text_p_negative, s.text_p_neutral, s.text_p_positive) == pytest.approx(want, abs=1e-5)
    by_role = {
        next(r for r, c in channels.items() if c == u.channel): s
        for u, s in zip(utterances, batched, strict=True)
        if u.text == ROLE_LINES[0]
    }
    # a rep's warm sign-off is the rep doing the job (neutral in the rubric); from no one, it reads warm
    assert by_role["agent"].p_neutral > by_role[""].p_neutral + 0.2


def test_role_priors_shift_log_probabilities_and_refuse_what_they_cannot_read() -> None:
    p = inference.Prediction(0.2, 0.5, 0.3)
    assert inference.with_role_prior(p, None) is p
    shifted = inference.with_role_prior(p, (np.log(2.0), 0.0, 0.0))  # twice the negative odds
    assert shifted.p_negative / shifted.p_neutral == pytest.approx(2 * 0.2 / 0.5)
    assert shifted.p_positive / shifted.p_neutral == pytest.approx(0.3 / 0.5)
    assert sum((shifted.p_negative, shifted.p_neutral, shifted.p_positive)) == pytest.approx(1.0)
    assert inference.parse_role_priors({"agent": [-3, 0, -2.5]}) == {"agent": (-3.0, 0.0, -2.5)}
    with pytest.raises(ValueError, match="unknown role 'boss'"):
        inference.parse_role_priors({"boss": [0, 0, 0]})
    with pytest.raises(ValueError, match="needs 3 numbers"):
        inference.parse_role_priors({"agent": [0, 0]})
    with pytest.raises(ValueError, match="not finite"):
        inference.parse_role_priors({"customer": [float("nan"), 0, 0]})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (request("", 7, "hello there"), "call_id is required"),
        (request("call-bad", 7, "   "), "empty text"),
        (request("call-bad", 7, "word " * 200_000), "split it into utterances"),  # 1 MB
        (request("call-bad", 7, "word " * 300), "at most 128"),
    ],
    ids=["missing-call-id", "empty-text", "1MB-text", "over-128-tokens"],
)
async def test_bad_utterance_ends_only_its_stream(
    scorer: Scorer, bad: scorer_pb2.ScoreRequest, message: str
) -> None:
    good = [request("call-ok", i, TEXTS[i % len(TEXTS)]) for i in range(8)]
    received: list[scorer_pb2.SentimentScore] = []

    async def bad_stream() -> None:
        requests = [
            request("call-bad", 5, TEXTS[0]),
            request("call-bad", 6, TEXTS[1]),
            bad,
            request("call-bad", 8, "hi"),
        ]
        async for score in scorer.stub.Score(stream_of(requests)):
            received.append(score)

    async def good_stream() -> list[scorer_pb2.SentimentScore]:
        return [s async for s in scorer.stub.Score(stream_of(good))]

    outcome, good_scores = await asyncio.gather(bad_stream(), good_stream(), return_exceptions=True)
    assert isinstance(outcome, grpc.aio.AioRpcError), outcome
    assert outcome.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = outcome.details() or ""
    assert message in details and "utterance_id 7" in details, details
    assert [s.utterance_id for s in received] == [5, 6]  # what came before the bad one was scored
    assert isinstance(good_scores, list) and [s.utterance_id for s in good_scores] == list(range(8))
    # The server and the channel go on.
    again = [s async for s in scorer.stub.Score(stream_of([request("call-after", 1, TEXTS[2])]))]
    assert len(again) == 1


async def test_score_batch_bad_item_names_its_index(scorer: Scorer) -> None:
    utterances = [
        chopper_pb2.Utterance(call_id="c", utterance_id=1, text="fine"),
        chopper_pb2.Utterance(call_id="c", utterance_id=2, text=""),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scorer.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=utterances))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "utterances[1]" in (info.value.details() or "") and "empty text" in (info.value.details() or "")
    no_call = [chopper_pb2.Utterance(utterance_id=1, text="fine")]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scorer.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=no_call))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "utterances[0]: call_id is required" in (info.value.details() or "")


async def test_health_serving(scorer: Scorer) -> None:
    health = health_pb2_grpc.HealthStub(scorer.channel)
    for name in ("", SERVICE_NAME):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------------------------ the command


def test_parse_args_rejects_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_args(
        ["--bind", "127.0.0.1:1", "--max-batch", "8", "--max-wait-ms", "0", "--backend", "onnx"]
    )
    assert (args.bind, args.max_batch, args.max_wait_ms, args.backend) == ("127.0.0.1:1", 8, 0.0, "onnx")
    for bad in (["--max-batch", "0"], ["--max-wait-ms", "-1"], ["--backend", "gpu"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "must" in capsys.readouterr().err


async def test_python_m_scorer_service_serves_traces_and_stops_on_sigterm(
    model: SentimentModel, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    trace_file = tmp_path / "trace.jsonl"
    env = {**os.environ, "CALLSENSE_LOG_LEVEL": "WARNING", "CALLSENSE_TRACE_FILE": str(trace_file)}
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    command = [sys.executable, "-m", "scorer_service", "--bind", address, "--max-wait-ms", "2"]
    command += ["--model", str(inference.DEFAULT_MODEL)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        async with grpc_runtime.insecure_channel(address) as channel:
            await grpc_runtime.wait_for_serving(channel, SERVICE_NAME, timeout_s=60)
            stub = scorer_pb2_grpc.ScorerStub(channel)
            requests = [request("call-main", 1, TEXTS[0]), request("call-main", 2, TEXTS[1])]
            scores = [s async for s in stub.Score(stream_of(requests))]
        assert [s.utterance_id for s in scores] == [1, 2]
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.to_thread(process.communicate, timeout=30)
        assert process.returncode == 0, stderr
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    spans = read_trace_file(trace_file)
    utterance_spans = [s for s in spans if s["name"] == "scorer.score_utterance"]
    assert len(utterance_spans) == 2
    assert all(s["attributes"]["call.id"] == "call-main" for s in utterance_spans)
    server_spans = [s for s in spans if s["name"].endswith("Scorer/Score")]
    assert server_spans and server_spans[0]["attributes"].get("call.id") == "call-main"
