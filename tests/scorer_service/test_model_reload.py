"""Serving the registry's versions: the batcher scores each utterance with the model that encoded it, the
reloader swaps a promoted version in while scores stream (every request answered, old version then new,
none failed), the served version in scores, health checks and the info metric; and `python -m
scorer_service` following a registry while `callsense models` promotes and rolls back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc.aio
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callsense import grpc_runtime
from callsense.grpc_runtime import MODEL_VERSION_TRAILER
from callsense.model_registry import ModelRegistry, ModelVersion
from callsense.tokenization import EncodedText
from callsense.v1 import chopper_pb2, scorer_pb2, scorer_pb2_grpc
from scorer_service.__main__ import parse_args
from scorer_service.batcher import MicroBatcher
from scorer_service.inference import Prediction, SentimentModel
from scorer_service.reload import ModelReloader, load_version
from scorer_service.server import (
    SERVICE_NAME,
    ModelVersionTrailer,
    ScorerServicer,
    add_scorer,
    observe_models,
)
from tests.support.model_versions import copy_as_version, shipped_version
from tools.cli import main as callsense
from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
V2 = "2099.01.01-reload"
TEXTS = [
    "Thank you so much, this is exactly what we needed, I love it!",
    "This is terrible, I am really angry about the hidden fees.",
    "Can you send me the contract by Friday?",
    "Okay.",
]

# ------------------------------------------------------------------------------- the batcher, two models


class GatedModel:
    """Answers p_negative = its own mark; its first forward pass waits at the gate."""

    def __init__(self, mark: float, gate: threading.Event | None = None) -> None:
        self.mark = mark
        self.gate = gate
        self.passes: list[int] = []  # sizes of its forward passes
        self.at_gate = threading.Event()

    def predict_encoded(self, batch: Sequence[EncodedText]) -> list[Prediction]:
        self.at_gate.set()
        if self.gate is not None:
            assert self.gate.wait(10), "test gate never opened"
            self.gate = None
        self.passes.append(len(batch))
        return [Prediction(self.mark, 0.0, 1 - self.mark) for _ in batch]


def tokens(length: int = 5) -> EncodedText:
    return EncodedText(np.full(length, 7, dtype=np.int64), np.zeros(length, dtype=np.int64))


async def test_a_swap_leaves_queued_and_running_requests_on_the_model_that_encoded_them() -> None:
    gate = threading.Event()
    old, new = GatedModel(0.1, gate), GatedModel(0.9)
    async with MicroBatcher(old, max_batch=8, max_wait_ms=50) as batcher:
        running = asyncio.create_task(batcher.submit(tokens(), old))
        assert await asyncio.to_thread(old.at_gate.wait, 10)  # a forward pass of the old model is under way
        queued_old = [asyncio.create_task(batcher.submit(tokens(), old)) for _ in range(3)]
        batcher.model = new  # what ScorerServicer.swap_model does
        queued_new = [asyncio.create_task(batcher.submit(tokens(), new)) for _ in range(2)]
        queued_default = asyncio.create_task(batcher.submit(tokens()))
        for _ in range(100):  # the submitters only need turns of the loop to queue behind the gated pass
            if batcher.queue_depth == 6:
                break
            await asyncio.sleep(0)
        assert batcher.queue_depth == 6
        gate.set()
        results = await asyncio.gather(running, *queued_old, *queued_new, queued_default)
    assert [r.prediction.p_negative for r in results] == [0.1] * 4 + [0.9] * 3
    assert old.passes == [1, 3] and new.passes == [3]  # no forward pass mixed the two models


# ------------------------------------------------------------------------------ in process, real models


@dataclass
class Served:
    registry: ModelRegistry
    servicer: ScorerServicer
    reloader: ModelReloader
    channel: grpc.aio.Channel

    @property
    def stub(self) -> scorer_pb2_grpc.ScorerStub:
        return scorer_pb2_grpc.ScorerStub(self.channel)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    """A scorer serving a registry (the shipped model current, another version added) in this process, its
    reloader polling every 20 ms."""
    shipped_version()
    registry = ModelRegistry(tmp_path / "registry")
    await asyncio.to_thread(registry.add, copy_as_version(tmp_path / "v2", V2))
    load = load_version(registry)
    servicer = ScorerServicer.create(await asyncio.to_thread(load, registry.current()), max_wait_ms=2)
    reloader = ModelReloader(registry, servicer, load, poll_s=0.02)
    server = await grpc_runtime.start_server(
        lambda s: add_scorer(s, servicer), "127.0.0.1:0", interceptors=[ModelVersionTrailer(servicer)]
    )
    channel = grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address)
    try:
        yield Served(registry, servicer, reloader, channel)
    finally:
        await reloader.close()
        await channel.close()
        await grpc_runtime.stop_server(server, grace_s=1)
        await servicer.close()


def score_request(n: int) -> scorer_pb2.ScoreRequest:
    utterance = chopper_pb2.Utterance(call_id="call-reload", utterance_id=n, text=TEXTS[n % len(TEXTS)])
    return scorer_pb2.ScoreRequest(call_id="call-reload", utterance=utterance)


async def health_version(channel: grpc.aio.Channel) -> str:
    call = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert (await call).status == health_pb2.HealthCheckResponse.SERVING
    return dict(await call.trailing_metadata())[MODEL_VERSION_TRAILER]  # type: ignore[no-any-return]


class ScoreStream:
    """One Score stream that keeps ``window`` requests in flight until ``stop()``, keeping every score."""

    def __init__(self, stub: scorer_pb2_grpc.ScorerStub, window: int = 8) -> None:
        self.stub = stub
        self.window = asyncio.Semaphore(window)
        self.stopping = False
        self.scores: list[scorer_pb2.SentimentScore] = []
        self.changed = asyncio.Condition()  # notified on every score, and when the stream ends
        self.task = asyncio.create_task(self._run())

    def count(self, version: str) -> int:
        return sum(s.model_version == version for s in self.scores)

    async def scores_of(self, version: str, count: int) -> None:
        """Wait until ``count`` scores of ``version`` have come; raise if the stream ends (or fails) first."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.count(version) >= count or self.task.done())
        if self.count(version) < count:
            self.task.result()  # raises the stream's error
            raise AssertionError(f"the stream ended with {self.count(version)} scores of {version}")

    async def stop(self) -> list[scorer_pb2.SentimentScore]:
        self.stopping = True
        self.window.release()  # the request generator may wait for a slot
        await self.task
        return self.scores

    async def _requests(self) -> AsyncIterator[scorer_pb2.ScoreRequest]:
        n = 0
        while True:
            await self.window.acquire()
            if self.stopping:
                return
            yield score_request(n)
            n += 1

    async def _run(self) -> None:
        try:
            async for score in self.stub.Score(self._requests()):
                self.window.release()
                self.scores.append(score)
                async with self.changed:
                    self.changed.notify_all()
        finally:
            async with self.changed:
                self.changed.notify_all()


async def test_a_promotion_is_served_while_scores_stream_and_none_fails(served: Served) -> None:
    old = shipped_version()
    assert await health_version(served.channel) == old
    served.reloader.start()
    async with asyncio.timeout(120):
        stream = ScoreStream(served.stub)
        batches: list[scorer_pb2.ScoreBatchResponse] = []
        batching = True

        async def batch_loop() -> None:
            utterances = [
                chopper_pb2.Utterance(call_id="b", utterance_id=i, text=t) for i, t in enumerate(TEXTS)
            ]
            while batching:
                batches.append(
                    await served.stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=utterances))
                )

        batcher = asyncio.create_task(batch_loop())
        await stream.scores_of(old, 20)
        await asyncio.to_thread(served.registry.promote, V2)
        await served.reloader.wait_until_serving(V2)
        await stream.scores_of(V2, 20)
        batching = False
        scores = await stream.stop()
        await batcher

    assert [s.utterance_id for s in scores] == list(range(len(scores)))  # every request answered, in order
    versions = [s.model_version for s in scores]
    switch = versions.index(V2)
    assert switch >= 20 and versions == [old] * switch + [V2] * (len(versions) - switch)
    # The same weights under another version: the new model really scores, and scores the same.
    by_text = {(s.model_version, s.utterance_id % len(TEXTS)): s.score for s in scores}
    assert all(by_text[(V2, i)] == pytest.approx(by_text[(old, i)], abs=1e-6) for i in range(len(TEXTS)))
    assert batches and all(len({s.model_version for s in b.scores}) == 1 for b in batches)
    assert batches[-1].scores[0].model_version == V2
    assert await health_version(served.channel) == V2
    # The info metric (other tests' servicers may linger in this process until collected).
    assert (1, V2) in [(o.value, dict(o.attributes or {})["model.version"]) for o in observe_models()]


async def test_a_rollback_is_served_too_and_an_unchanged_pointer_loads_nothing(served: Served) -> None:
    old = shipped_version()
    await asyncio.to_thread(served.registry.promote, V2)
    assert await served.reloader.check() is True and served.servicer.model.info.version == V2
    assert await served.reloader.check() is False  # the same pointer: not read again, nothing loaded
    await asyncio.to_thread(served.registry.rollback)
    assert await served.reloader.check() is True and served.servicer.model.info.version == old
    reply = await served.stub.ScoreBatch(
        scorer_pb2.ScoreBatchRequest(utterances=[chopper_pb2.Utterance(call_id="c", text="Sounds good.")])
    )
    assert reply.scores[0].model_version == old


async def test_a_version_that_fails_to_load_leaves_the_served_one_and_is_not_retried_every_poll(
    served: Served,
) -> None:
    old = shipped_version()
    attempts: list[str] = []

    def broken(version: ModelVersion) -> SentimentModel:
        attempts.append(version.version)
        raise RuntimeError("ONNX Runtime refused the graph")

    reloader = ModelReloader(served.registry, served.servicer, broken, poll_s=0.02)
    try:
        await asyncio.to_thread(served.registry.promote, V2)
        with pytest.raises(RuntimeError, match="refused the graph"):
            await reloader.check()
        assert await reloader.check() is False
        assert attempts == [V2] and served.servicer.model.info.version == old
        stream = ScoreStream(served.stub)
        await stream.scores_of(old, 3)
        assert {s.model_version for s in await stream.stop()} == {old}
    finally:
        await reloader.close()


def test_model_and_registry_are_exclusive_and_the_poll_must_be_positive() -> None:
    args = parse_args(["--registry", "/srv/models", "--registry-poll-s", "0.5"])
    assert (args.registry, args.registry_poll_s, args.model) == (Path("/srv/models"), 0.5, None)
    for bad in (["--model", "m.onnx", "--registry", "r"], ["--registry-poll-s", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


# ------------------------------------------------------------------------------------ the real process


@pytest.mark.slow
async def test_python_m_scorer_service_follows_promote_and_rollback(tmp_path: Path) -> None:
    old = shipped_version()
    registry = tmp_path / "registry"
    models = ["models", "--registry", str(registry)]
    assert (
        await asyncio.to_thread(callsense, [*models, "add", str(copy_as_version(tmp_path / "v2", V2))]) == 0
    )
    address = f"127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")} | {"CALLSENSE_LOG_LEVEL": "INFO"}
    command = [sys.executable, "-m", "scorer_service", "--bind", address, "--max-wait-ms", "2"]
    command += ["--registry", str(registry), "--registry-poll-s", "0.1"]
    log = tmp_path / "scorer.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        async with asyncio.timeout(180), grpc_runtime.insecure_channel(address) as channel:
            await grpc_runtime.wait_for_serving(channel, SERVICE_NAME, timeout_s=120)
            assert await health_version(channel) == old
            stream = ScoreStream(scorer_pb2_grpc.ScorerStub(channel))
            await stream.scores_of(old, 10)
            assert await asyncio.to_thread(callsense, [*models, "promote", V2]) == 0
            await stream.scores_of(V2, 10)
            assert await asyncio.to_thread(callsense, [*models, "rollback"]) == 0
            await stream.scores_of(old, stream.count(old) + 10)
            scores = await stream.stop()
            assert await health_version(channel) == old
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait()
    assert [s.utterance_id for s in scores] == list(range(len(scores))), log.read_text()[-3000:]
    runs = [
        v for i, v in enumerate(s.model_version for s in scores) if i == 0 or scores[i - 1].model_version != v
    ]
    assert runs == [old, V2, old]  # old, then new, then old again: no flapping, no request lost
    assert f"serving model {V2} (was {old})" in log.read_text()
