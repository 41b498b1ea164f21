"""The gateway as a process holds it: the ``Gateway`` facade, and the batch path.

``Gateway`` bundles the stores, the stage stubs, the live calls (its SessionRegistry) and the metrics;
it answers readiness and call look-ups, and scores finished calls (``analyze_batch``: chopper then
scorer, one request each, ended like a live call through ``finish_call``). The transports (app.py,
grpc_api.py, recording.py, reports.py, web/routes.py) hold one Gateway; the live protocol itself goes
through the registry's CallDrivers (gateway/calls/registry.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callsense.config import Config
from callsense.domain import CallRow, Channel, UtteranceScore
from callsense.grpc_runtime import MODEL_VERSION_TRAILER, service_channel, service_name
from callsense.telemetry import call_context
from callsense.tenants import TenantsConfig
from callsense.v1 import (
    asr_pb2_grpc,
    audio_pb2,
    chopper_pb2,
    chopper_pb2_grpc,
    scorer_pb2,
    scorer_pb2_grpc,
)
from gateway.auth.authenticator import Authenticator
from gateway.auth.bootstrap import register_bootstrap_key
from gateway.auth.key_store import KeyStore
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.events import CallOutcome
from gateway.calls.finish import finish_call
from gateway.calls.inputs import (
    MAX_BATCH_UTTERANCES,
    CallInfo,
    UtteranceInput,
    transcript_event,
    validate_call_id,
)
from gateway.calls.registry import SessionRegistry
from gateway.calls.settings import SessionSettings
from gateway.calls.stages import Stages, utterance_score
from gateway.metrics import GatewayMetrics
from gateway.postcall_client import AfterCall
from gateway.store import Store, StoreRouter, start_embedded_database

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchResult:
    call_id: str
    events: tuple[UtteranceScore, ...]
    summary: CallOutcome


@dataclass(frozen=True)
class Readiness:
    ready: bool
    checks: Mapping[str, str]  # component -> "ok" or why not
    models: Mapping[str, str] = field(default_factory=dict)
    """Stage -> the model version it serves, where its health check says (the scorer's, during a rollout
    the version of the replica that answered)."""


@dataclass(frozen=True)
class _StageHealth:
    status: str  # "ok" or why not
    model_version: str | None


class Gateway:
    """What one gateway process holds: stores, stage channels, the live calls, metrics.

    Open it with ``await Gateway.open(config, database_url)`` (or build it from parts in tests) and
    close it with ``await gateway.close()``; the HTTP app and the gRPC servicer share one instance.
    """

    def __init__(
        self,
        registry: SessionRegistry,
        *,
        health_targets: Mapping[str, tuple[grpc.aio.Channel, str]] | None = None,
        on_close: Sequence[Callable[[], Awaitable[None]]] = (),
    ) -> None:
        """``health_targets``: name -> (channel, service) that /readyz checks; ``on_close``: clean-ups
        run by ``close()`` in reverse order (close channels, stores, an embedded database)."""
        self.registry = registry
        self.stores = registry.stores
        self.stages = registry.stages
        self.metrics = registry.metrics
        self.settings = registry.settings
        self._health_targets = dict(health_targets or {})
        self._on_close = list(on_close)
        self.client_streams: set[asyncio.Task[None]] = set()
        """The tasks forwarding calls' events to WebSocket clients (``drain`` waits for them)."""
        self.authenticator = Authenticator(KeyStore(self.stores.default.pool))
        """Who a credential is (keys and browser sessions live in the default database)."""

    @property
    def tenants(self) -> TenantsConfig:
        return self.registry.after_call.tenants

    @classmethod
    async def open(
        cls,
        config: Config,
        *,
        stores: StoreRouter | None = None,
        database_url: str | None = None,
        settings: SessionSettings | None = None,
        metrics: GatewayMetrics | None = None,
        after_call: AfterCall | None = None,
    ) -> Gateway:
        """Channels to the chopper and scorer, and the stores unless given: ``database_url``, else
        ``config.database_url``, else an embedded PostgreSQL under ``config.data_dir`` started here."""
        cleanups: list[Callable[[], Awaitable[None]]] = []
        try:
            if stores is None:
                url = database_url or config.database_url
                if url is None:
                    url = await _start_embedded_database(config, cleanups)
                stores = await StoreRouter.open(url)
                cleanups.append(stores.close)
            chopper_channel = service_channel(config.chopper_addr, "chopper", config.mesh_proxy)
            scorer_channel = service_channel(config.scorer_addr, "scorer", config.mesh_proxy)
            asr_channel = service_channel(config.asr_addr, "asr", config.mesh_proxy)  # connects when used
            cleanups += [chopper_channel.close, scorer_channel.close, asr_channel.close]
        except BaseException:
            await _run_cleanups(cleanups)
            raise
        stages = Stages(
            chopper=chopper_pb2_grpc.ChopperStub(chopper_channel),
            scorer=scorer_pb2_grpc.ScorerStub(scorer_channel),
            asr=asr_pb2_grpc.AsrStub(asr_channel),
        )
        if after_call is None:  # the post-call worker at config's address; this gateway closes its channel
            after_call = AfterCall.for_config(config)
            cleanups.append(after_call.close)
        registry = SessionRegistry(
            stores,
            stages,
            metrics=metrics,
            settings=settings,
            after_call=after_call,
            spool_dir=config.data_dir / "spool",
            instance=config.gateway_http,
        )
        targets = {
            "chopper": (chopper_channel, service_name(chopper_pb2, "Chopper")),
            "scorer": (scorer_channel, service_name(scorer_pb2, "Scorer")),
        }
        gateway = cls(registry, health_targets=targets, on_close=cleanups)
        try:
            await register_bootstrap_key(gateway.authenticator.keys)
            registry.start()
        except BaseException:
            await _run_cleanups(cleanups)
            raise
        return gateway

    async def drain(self, timeout_s: float = 10.0) -> None:
        """End every live call (reason shutdown) and wait until its clients have had its summary."""
        await self.registry.shutdown(timeout_s)
        if self.client_streams:
            await asyncio.wait(set(self.client_streams), timeout=timeout_s)

    async def close(self) -> None:
        """End the live calls (reason shutdown), then release channels and stores."""
        await self.registry.shutdown()
        await _run_cleanups(self._on_close)

    # -- look-ups

    async def get_call(self, call_id: str) -> CallRow | None:
        return await self.stores.get_call(validate_call_id(call_id))

    async def erase_call(self, call_id: str, tenant: str, actor: str) -> None:
        """Remove an ended call of ``tenant`` and all it left (callsense/privacy.py), audited as ``actor``."""
        validate_call_id(call_id)
        if self.registry.get(call_id) is not None:
            raise InputError(
                ErrorCode.CALL_ACTIVE,
                f"call {call_id} is live; erase it once it has ended",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        erasure = await self.stores.erase_call(call_id, tenant, actor)
        if erasure.outcome == "live":  # live on another replica
            raise InputError(
                ErrorCode.CALL_ACTIVE,
                f"call {call_id} is live; erase it once it has ended",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if erasure.outcome == "not_found":
            raise InputError(ErrorCode.NOT_FOUND, f"no call with id {call_id!r}", grpc.StatusCode.NOT_FOUND)

    async def readiness(self, timeout_s: float = 2.0) -> Readiness:
        """Ready when the chopper and the scorer answer (checked concurrently). The database is checked and
        reported but does not decide: live calls go on without it (their writes spool, gateway/spool.py),
        and a gateway taken out of rotation for a database outage would refuse the calls it can serve."""
        stages = [_check_grpc(ch, service, timeout_s) for ch, service in self._health_targets.values()]
        database, answers = await asyncio.gather(self._check_database(timeout_s), asyncio.gather(*stages))
        health = dict(zip(self._health_targets, answers, strict=True))
        results = {"database": database} | {name: h.status for name, h in health.items()}
        if results["database"] != "ok":
            results["database"] += " (live calls go on; their writes are spooled)"
        ready = all(result == "ok" for name, result in results.items() if name != "database")
        models = {name: h.model_version for name, h in health.items() if h.model_version}
        return Readiness(ready, results, models)

    async def _check_database(self, timeout_s: float) -> str:
        try:
            # Any read proves the pool can reach the database; a call id nobody can create (the pattern
            # forbids "/") keeps it a pure index miss.
            async with asyncio.timeout(timeout_s):
                await self.stores.get_call("/readyz")
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    # -- batch

    async def analyze_batch(
        self, call_id: str, metadata: CallInfo, utterances: Sequence[UtteranceInput]
    ) -> BatchResult:
        """Score a finished call's utterances: chopper (split, mask) then scorer; idempotent on call_id.

        The store keeps the first write of each (call_id, utterance_id), and the answer is read back from
        it: repeating a request returns the same result and stores nothing twice. A call_id that already
        holds different utterances, or that is live here, is refused with ``call_conflict``.
        """
        validate_call_id(call_id)
        if not utterances:
            raise InputError(ErrorCode.EMPTY_TEXT, "utterances is empty: a batch needs at least one")
        if len(utterances) > MAX_BATCH_UTTERANCES:
            raise InputError(
                ErrorCode.TOO_MANY_UTTERANCES,
                f"{len(utterances):,} utterances; the limit is {MAX_BATCH_UTTERANCES:,} per request",
            )
        if self.registry.get(call_id) is not None:
            raise InputError(
                ErrorCode.CALL_CONFLICT,
                f"call {call_id} is live on this gateway; analyse it after it ends",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        store = self.stores.for_region(metadata.region)
        existing = await store.get_call(call_id)
        if existing is not None and existing.tenant != metadata.tenant:
            raise InputError(
                ErrorCode.FORBIDDEN,
                f"call {call_id} belongs to another tenant; use a new call_id",
                grpc.StatusCode.PERMISSION_DENIED,
            )
        with call_context(call_id):
            chopped = await self._chop_all(call_id, sorted(utterances, key=lambda u: u.start_ms))
            scores = await self._score_all(chopped)
        events = [utterance_score(u, s) for u, s in zip(chopped, scores, strict=True)]
        store_text = self.tenants.for_tenant(metadata.tenant).store_transcripts
        to_store = events if store_text else [replace(e, text="") for e in events]
        await _check_batch_conflict(store, call_id, to_store)
        await store.upsert_call_start(call_id, metadata.for_store())
        await store.record_scores(to_store)
        stored = tuple(await store.list_events(call_id))
        # The report needs what was said (objection tags): from the scored events, not the stored rows.
        summary = await finish_call(
            call_id,
            stored if store_text else events,
            status="ended",
            reason="batch",
            store=store,
            after_call=self.registry.after_call,
            store_text=store_text,
        )
        self.metrics.count("callsense_gateway_batches_total")
        return BatchResult(call_id, stored, summary)

    async def _chop_all(
        self, call_id: str, utterances: Sequence[UtteranceInput]
    ) -> list[chopper_pb2.Utterance]:
        started = time.perf_counter()

        async def requests() -> AsyncIterator[chopper_pb2.ChopRequest]:
            segment_ids: dict[Channel, int] = {}
            for u in utterances:
                segment_id = segment_ids.get(u.channel, 0)
                segment_ids[u.channel] = segment_id + 1
                event = transcript_event(call_id, segment_id, u)
                yield chopper_pb2.ChopRequest(call_id=call_id, transcript=event)
            end = audio_pb2.CallEnd(call_id=call_id, reason="batch")
            yield chopper_pb2.ChopRequest(call_id=call_id, end=end)

        stream = self.stages.chopper.Chop(requests(), timeout=self.settings.stage_timeout_s)
        chopped = [u async for u in stream]
        self.metrics.observe_latency("chopper", (time.perf_counter() - started) * 1000)
        return chopped

    async def _score_all(
        self, utterances: Sequence[chopper_pb2.Utterance]
    ) -> list[scorer_pb2.SentimentScore]:
        scores: list[scorer_pb2.SentimentScore] = []
        chunk = 256  # chopped utterances are < 128 tokens: 256 of them stay far below the 4 MB limit
        for i in range(0, len(utterances), chunk):
            started = time.perf_counter()
            reply = await self.stages.scorer.ScoreBatch(
                scorer_pb2.ScoreBatchRequest(utterances=utterances[i : i + chunk]),
                timeout=self.settings.stage_timeout_s,
            )
            self.metrics.observe_latency("scorer", (time.perf_counter() - started) * 1000)
            scores.extend(reply.scores)
        if len(scores) != len(utterances):
            raise RuntimeError(f"the scorer answered {len(scores)} scores for {len(utterances)} utterances")
        return scores


async def _check_batch_conflict(store: Store, call_id: str, events: Sequence[UtteranceScore]) -> None:
    """Refuse a call_id that already holds other utterances (replaying the same ones is fine)."""
    stored = await store.list_events(call_id)
    mine = {e.utterance_id: _identity(e) for e in events}
    for event in stored:
        if mine.get(event.utterance_id) != _identity(event):
            raise InputError(
                ErrorCode.CALL_CONFLICT,
                f"call {call_id} already holds different utterances; use a new call_id",
                grpc.StatusCode.ALREADY_EXISTS,
            )


def _identity(event: UtteranceScore) -> tuple[object, ...]:
    """What makes two scored utterances the same utterance (scores may differ in the last float bits)."""
    return (event.channel, event.start_ms, event.end_ms, event.text)


async def _start_embedded_database(config: Config, cleanups: list[Callable[[], Awaitable[None]]]) -> str:
    embedded = await start_embedded_database(config)

    async def stop() -> None:
        await asyncio.to_thread(embedded.stop)

    cleanups.append(stop)
    return embedded.uri


async def _run_cleanups(cleanups: Sequence[Callable[[], Awaitable[None]]]) -> None:
    for cleanup in reversed(cleanups):
        try:
            await cleanup()
        except Exception:
            log.exception("clean-up %r failed", cleanup)


async def _check_grpc(channel: grpc.aio.Channel, service: str, timeout_s: float) -> _StageHealth:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        call = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        reply = await call
        # The scorer names the model version it serves in the answer's trailing metadata.
        trailers = await call.trailing_metadata()
    except grpc.aio.AioRpcError as exc:
        return _StageHealth(f"unreachable: {exc.code().name}", None)
    version = next((str(v) for k, v in trailers or () if k == MODEL_VERSION_TRAILER), None)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        return _StageHealth(str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)), version)
    return _StageHealth("ok", version)
