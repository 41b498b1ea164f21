"""The contracts and the shared gRPC runtime: stubs current, protos documented, servers standard, one trace.

The telemetry test runs this file as a script in a child process (``python tests/runtime/test_contracts.py
trace-demo TRACE_FILE``), because OpenTelemetry's providers are global and may be set once per process:
the pytest process stays uninstrumented for the other test files.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from callsense import grpc_runtime
from callsense.config import Config, ConfigError, load_config
from callsense.telemetry import TraceContextFilter, call_context, current_call_id
from callsense.v1 import chopper_pb2, scorer_pb2, scorer_pb2_grpc
from tools.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos" / "callsense" / "v1"
SCORER = grpc_runtime.service_name(scorer_pb2, "Scorer")


class FixedScorer(scorer_pb2_grpc.ScorerServicer):
    """Fixed-shape replies: these tests exercise the runtime, not the model.

    model_version echoes the call id the handler sees in baggage, so the trace test can tell that
    the context crossed the wire into the handler, not only onto the server span.
    """

    async def Score(
        self, request_iterator: AsyncIterator[scorer_pb2.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scorer_pb2.SentimentScore]:
        async for request in request_iterator:
            yield fixed_score(request.utterance)

    async def ScoreBatch(
        self, request: scorer_pb2.ScoreBatchRequest, context: grpc.aio.ServicerContext
    ) -> scorer_pb2.ScoreBatchResponse:
        return scorer_pb2.ScoreBatchResponse(scores=[fixed_score(u) for u in request.utterances])


def fixed_score(utterance: chopper_pb2.Utterance) -> scorer_pb2.SentimentScore:
    return scorer_pb2.SentimentScore(
        call_id=utterance.call_id,
        utterance_id=utterance.utterance_id,
        p_negative=0.2,
        p_neutral=0.5,
        p_positive=0.3,
        score=0.55,
        label=scorer_pb2.NEUTRAL,
        model_version=f"fixed/{current_call_id()}",
        batch_size=1,
    )


def add_fixed_scorer(server: grpc.aio.Server) -> list[str]:
    scorer_pb2_grpc.add_ScorerServicer_to_server(FixedScorer(), server)
    return [SCORER]


def utterance(call_id: str, utterance_id: int, text: str = "that price is too high") -> chopper_pb2.Utterance:
    return chopper_pb2.Utterance(call_id=call_id, utterance_id=utterance_id, text=text)


# ------------------------------------------------------------------------------------- (a) codegen


def test_generated_stubs_are_current() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tools.codegen", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr + result.stdout


# ------------------------------------------------------------------------------ (b) documented protos

FIELD = re.compile(
    r"^\s*(?:repeated\s+|optional\s+)?(?:map\s*<\s*\w+\s*,\s*[\w.]+\s*>|[\w.]+)\s+(\w+)\s*=\s*\d+\s*[;\[]"
)
ENUM_VALUE = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=\s*-?\d+\s*[;\[]")
DECLARATION = re.compile(r"^\s*(message|enum|service|rpc|oneof)\s+(\w+)")


def proto_files() -> list[Path]:
    files = sorted(PROTO_DIR.glob("*.proto"))
    assert {p.name for p in files} >= {
        "audio.proto",
        "asr.proto",
        "chopper.proto",
        "scorer.proto",
        "sentiment.proto",
    }
    return files


def undocumented(path: Path) -> list[str]:
    """Fields, enum values and declarations whose previous line is not a // comment."""
    lines = path.read_text().splitlines()
    problems = []
    for i, line in enumerate(lines):
        kind = "field" if FIELD.match(line) else "enum value" if ENUM_VALUE.match(line) else None
        if kind is None and DECLARATION.match(line):
            kind = DECLARATION.match(line).group(1)  # type: ignore[union-attr]
        if kind and (i == 0 or not lines[i - 1].strip().startswith("//")):
            problems.append(f"{path.name}:{i + 1}: undocumented {kind}: {line.strip()}")
    return problems


@pytest.mark.parametrize("path", proto_files(), ids=lambda p: p.name)
def test_every_proto_element_is_documented(path: Path) -> None:
    text = path.read_text()
    assert text.startswith("//"), f"{path.name} needs a header comment saying what it is"
    assert re.search(r"^package callsense\.v1;$", text, re.M)
    assert undocumented(path) == []


@pytest.mark.parametrize("path", proto_files(), ids=lambda p: p.name)
def test_field_names_are_snake_case(path: Path) -> None:
    names = [m.group(1) for line in path.read_text().splitlines() if (m := FIELD.match(line))]
    assert names, f"no fields parsed in {path.name}"
    assert [n for n in names if not re.fullmatch(r"[a-z][a-z0-9_]*", n)] == []


# --------------------------------------------------------------------------------- (c) the runtime


async def reflected_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    services: set[str] = set()
    async for reply in call:
        services |= {s.name for s in reply.list_services_response.service}
    return services


async def test_server_has_health_and_reflection() -> None:
    server = await grpc_runtime.start_server(add_fixed_scorer, "127.0.0.1:0")
    try:
        info = grpc_runtime.server_info(server)
        assert info.port > 0 and info.service_names == (SCORER,)
        async with grpc_runtime.insecure_channel(info.address) as channel:
            await grpc_runtime.wait_for_serving(channel, SCORER, timeout_s=5)
            health = health_pb2_grpc.HealthStub(channel)
            for name in ("", SCORER):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

            assert await reflected_services(channel) >= {
                SCORER,
                "grpc.health.v1.Health",
                "grpc.reflection.v1alpha.ServerReflection",
            }

            scorer = scorer_pb2_grpc.ScorerStub(channel)
            batch = await scorer.ScoreBatch(
                scorer_pb2.ScoreBatchRequest(utterances=[utterance("c-9", 0), utterance("c-9", 1)]), timeout=5
            )
            assert [s.utterance_id for s in batch.scores] == [0, 1]

            await info.health.enter_graceful_shutdown()  # what stop_server does first, so LBs drain
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SCORER), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await grpc_runtime.stop_server(server, grace_s=0)


async def test_a_request_that_does_not_decode_is_invalid_argument_on_every_server() -> None:
    """Bytes that are not the method's request message: INVALID_ARGUMENT naming the method, not UNKNOWN,
    for unary and streaming methods alike (callsense/grpc_decoding.py; here on health and reflection)."""
    server = await grpc_runtime.start_server(lambda s: [], "127.0.0.1:0")
    try:
        async with grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address) as channel:
            garbage = b"\xff\xff\xff\xff"
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await channel.unary_unary("/grpc.health.v1.Health/Check")(garbage, timeout=5)
            assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "/grpc.health.v1.Health/Check" in (unary.value.details() or "")
            reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
            good = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
            stream = channel.stream_stream(reflection)(iter([good, garbage]), timeout=5)
            answers = []
            with pytest.raises(grpc.aio.AioRpcError) as streamed:
                async for answer in stream:
                    answers.append(answer)
            assert streamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(answers) == 1  # the good message before the bad one was answered
    finally:
        await grpc_runtime.stop_server(server, 0.1)


async def test_receive_limit_is_enforced() -> None:
    server = await grpc_runtime.start_server(add_fixed_scorer, "127.0.0.1:0", max_receive_bytes=1024)
    try:
        async with grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address) as channel:
            big = scorer_pb2.ScoreBatchRequest(utterances=[utterance("c-big", 0, "x" * 4096)])
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await scorer_pb2_grpc.ScorerStub(channel).ScoreBatch(big, timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        await grpc_runtime.stop_server(server, grace_s=0)


async def test_bind_conflict_fails_loudly() -> None:
    server = await grpc_runtime.start_server(add_fixed_scorer, "127.0.0.1:0")
    try:
        with pytest.raises(RuntimeError, match="cannot bind"):
            await grpc_runtime.start_server(add_fixed_scorer, grpc_runtime.server_info(server).address)
    finally:
        await grpc_runtime.stop_server(server, grace_s=0)


async def test_serve_forever_stops_gracefully_on_sigterm() -> None:
    address = f"127.0.0.1:{free_port()}"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "serve-demo",
        address,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with grpc_runtime.insecure_channel(address) as channel:
            await grpc_runtime.wait_for_serving(channel, SCORER, timeout_s=30)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(child.communicate(), timeout=30)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0, stderr.decode()
    assert b"on_shutdown ran" in stdout


def test_log_records_carry_call_id() -> None:
    records: list[logging.LogRecord] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = ListHandler()
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger("callsense.test.logfilter")
    logger.addHandler(handler)
    try:
        with call_context("c-7"):
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    assert [(r.call_id, r.trace_id) for r in records] == [("c-7", "-"), ("-", "-")]  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------- config


def test_config_defaults_and_overrides() -> None:
    assert load_config({}) == Config()
    assert Config().scorer_addr == "127.0.0.1:50053" and Config().envoy_port == 8080
    cfg = load_config(
        {
            "CALLSENSE_SCORER_ADDR": "scorer:6000",
            "DATABASE_URL": "postgresql://db/x",
            "CALLSENSE_ENVOY_PORT": "81",
        }
    )
    assert (cfg.scorer_addr, cfg.database_url, cfg.envoy_port) == ("scorer:6000", "postgresql://db/x", 81)
    assert Config.bind_address(cfg.scorer_addr) == "0.0.0.0:6000"
    with pytest.raises(ConfigError, match="CALLSENSE_ENVOY_PORT"):
        load_config({"CALLSENSE_ENVOY_PORT": "eighty"})
    with pytest.raises(ConfigError):
        load_config({"CALLSENSE_ASR_ADDR": "no-port"})


# ------------------------------------------------------------------------------------ (d) telemetry


def test_call_id_reaches_client_and_server_spans(tmp_path: Path) -> None:
    trace_file = tmp_path / "trace.jsonl"
    result = subprocess.run(
        [sys.executable, __file__, "trace-demo", str(trace_file)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "model_version=fixed/c-1" in result.stdout, "the handler must see call.id in its context"

    from callsense.telemetry import read_trace_file

    spans = read_trace_file(trace_file)
    assert not [s for s in spans if "grpc.health" in s["name"]], "health checks must stay out of traces"
    for method in ("/callsense.v1.Scorer/ScoreBatch", "/callsense.v1.Scorer/Score"):
        by_kind = {s["kind"]: s for s in spans if s["name"] == method}
        client, server = by_kind.get("CLIENT"), by_kind.get("SERVER")
        assert client and server, f"missing spans for {method}: {spans}"
        assert client["attributes"]["call.id"] == server["attributes"]["call.id"] == "c-1"
        assert client["trace_id"] == server["trace_id"]
        assert server["parent_id"] == client["span_id"]
        assert server["service.name"] == "contract-test"
    # The root span tagged by call_context and the calls under it form one trace.
    (root,) = [s for s in spans if s["name"] == "demo-call"]
    assert root["attributes"]["call.id"] == "c-1"
    assert {s["trace_id"] for s in spans} == {root["trace_id"]}


async def trace_demo() -> None:
    """Child-process side of the telemetry test: one unary and one streaming call inside call_context."""
    from callsense.telemetry import setup_telemetry, tracer

    telemetry = setup_telemetry("contract-test", configure_logging=False)
    server = await grpc_runtime.start_server(add_fixed_scorer, "127.0.0.1:0")
    async with grpc_runtime.insecure_channel(grpc_runtime.server_info(server).address) as channel:
        await grpc_runtime.wait_for_serving(channel, SCORER, timeout_s=5)
        stub = scorer_pb2_grpc.ScorerStub(channel)
        with tracer().start_as_current_span("demo-call"), call_context("c-1"):
            batch = await stub.ScoreBatch(scorer_pb2.ScoreBatchRequest(utterances=[utterance("c-1", 0)]))
            stream: Any = stub.Score(
                iter([scorer_pb2.ScoreRequest(call_id="c-1", utterance=utterance("c-1", 1))])
            )
            streamed = [reply async for reply in stream]
        print(f"model_version={batch.scores[0].model_version}")
        assert [s.model_version for s in streamed] == ["fixed/c-1"]
    await grpc_runtime.stop_server(server, grace_s=0)
    telemetry.force_flush()


async def serve_demo(address: str) -> None:
    """Child-process side of the SIGTERM test."""

    async def on_shutdown() -> None:
        print("on_shutdown ran", flush=True)

    await grpc_runtime.serve_forever(add_fixed_scorer, address, grace_s=1, on_shutdown=on_shutdown)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-demo"]:
        asyncio.run(serve_demo(sys.argv[2]))
    elif sys.argv[1:2] == ["trace-demo"]:
        os.environ["CALLSENSE_TRACE_FILE"] = sys.argv[2]
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        asyncio.run(trace_demo())
