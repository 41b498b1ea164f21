"""The live calls one gateway replica holds, and one client's side of the live protocol.

``SessionRegistry`` maps call_id -> CallSession (gateway/calls/session.py): it starts a call, resumes
one whose client came back within the grace period, refuses a second driver, and stops every call at
shutdown. ``CallDriver`` is what a transport holds per connection (WebSocket in app.py, gRPC in
grpc_api.py, Twilio media streams in twilio.py): it enforces the order of start, utterances and stop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from callsense.domain import Channel
from gateway.calls.errors import ErrorCode, InputError, NotFoundError
from gateway.calls.events import CallOutcome
from gateway.calls.fanout import Subscription
from gateway.calls.inputs import AudioInputFormat, CallInfo, UtteranceInput, validate_call_id
from gateway.calls.session import CallSession
from gateway.calls.settings import SessionSettings
from gateway.calls.stages import Stages
from gateway.metrics import GatewayMetrics
from gateway.postcall_client import AfterCall
from gateway.spool import SpooledStore, spool_path
from gateway.store import UNREACHABLE, CallRow, Store, StoreRouter

log = logging.getLogger(__name__)

DEFAULT_SPOOL_DIR = Path("var") / "spool"
STORED_CALL_TIMEOUT_S = 0.5


class SessionRegistry:
    """call_id -> CallSession of the live calls held by this gateway replica."""

    def __init__(
        self,
        stores: StoreRouter,
        stages: Stages,
        *,
        metrics: GatewayMetrics | None = None,
        settings: SessionSettings | None = None,
        after_call: AfterCall | None = None,
        spool_dir: Path = DEFAULT_SPOOL_DIR,
        instance: str = "gateway",
    ) -> None:
        """``spool_dir`` / ``instance``: where this gateway keeps the live writes a database could not take
        (gateway/spool.py), one file per database; ``instance`` tells the replicas on one disk apart."""
        self.stores = stores
        self.stages = stages
        self.metrics = metrics or GatewayMetrics()
        self.settings = settings or SessionSettings()
        self.after_call = after_call or AfterCall()
        """Objection tags, the report and the CRM push when a call ends (shared by all its calls)."""
        self.spooled: dict[str, SpooledStore] = {
            region: SpooledStore(
                store, spool_path(spool_dir, instance, region), self.after_call.outbox, metrics=self.metrics
            )
            for region, store in stores.named_stores
        }
        """The live path's writes, per database (region name; "" for the default one)."""
        self._sessions: dict[str, CallSession] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, call_id: str) -> CallSession | None:
        return self._sessions.get(call_id)

    def live_calls(self) -> list[CallSession]:
        """The sessions still taking input, oldest first."""
        return [s for s in self._sessions.values() if s.state == "live"]

    def held_calls(self) -> list[CallSession]:
        """Every session this replica holds, those finishing too (still live in the database)."""
        return list(self._sessions.values())

    async def start_call(
        self, call_id: str, metadata: CallInfo, audio: AudioInputFormat | None = None
    ) -> tuple[CallSession, bool]:
        """The session of a call for a driving client; True when it resumes one (a reconnect)."""
        validate_call_id(call_id)  # transports check too; a bad id must never reach the mesh
        existing = self._sessions.get(call_id)
        if existing is not None:
            _check_same_tenant(call_id, existing.metadata.tenant, metadata.tenant)
            if existing.driver_attached or existing.state != "live":
                raise InputError(
                    ErrorCode.CALL_ACTIVE,
                    f"call {call_id} is already live and driven by another client",
                    grpc.StatusCode.ALREADY_EXISTS,
                )
            existing.attach()  # its client came back within the grace period
            return existing, True
        store = self.stores.for_region(metadata.region)
        spooled = next(s for s in self.spooled.values() if s.store is store)
        session = CallSession(
            call_id,
            metadata,
            store=spooled,
            stages=self.stages,
            metrics=self.metrics,
            settings=self.settings,
            on_closed=self._forget,
            after_call=self.after_call,
            audio=audio,
        )
        session.driver_attached = True
        self._sessions[call_id] = session  # claimed before the first await: a racing start sees it
        try:
            stored = await _stored_call(store, call_id, spooled.spooling)
            if stored is not None:
                _check_same_tenant(call_id, stored.tenant, metadata.tenant)
            if stored is not None and stored.status != "live":
                raise InputError(
                    ErrorCode.CALL_ENDED,
                    f"call {call_id} has already ended ({stored.status}); a new call needs a new call_id",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            if stored is not None:
                session.take_over(stored.events)
            await session.open()
        except BaseException:
            self._sessions.pop(call_id, None)
            raise
        # A call still 'live' in the database without a session here: its gateway died and the client came
        # back (Envoy sends it to a live replica). The session takes the stored scores over (take_over).
        return session, stored is not None

    def subscribe(self, call_id: str) -> Subscription:
        session = self._sessions.get(call_id)
        if session is None:
            raise NotFoundError(f"call {call_id} is not live on this gateway")
        return session.subscribe(replay=True)

    def _forget(self, session: CallSession) -> None:
        if self._sessions.get(session.call_id) is session:
            del self._sessions[session.call_id]

    def start(self) -> None:
        """Write back what a previous run of this instance left in its spools."""
        for spooled in self.spooled.values():
            spooled.start()

    async def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop every live call (reason shutdown); abort those that cannot finish in time. What is still
        spooled stays on disk for the next start."""
        sessions = list(self._sessions.values())
        if sessions:
            stops = [asyncio.ensure_future(s.stop("shutdown")) for s in sessions]
            _, pending = await asyncio.wait(stops, timeout=timeout_s)
            for session in sessions:
                session.abort("the gateway shut down")
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await asyncio.gather(*(spooled.close() for spooled in self.spooled.values()))


class CallDriver:
    """One client's side of the live protocol (start, utterances, stop), whatever the transport.

    It enforces the order of messages: utterance or stop before start -> ``not_started``; a second
    start while a call runs -> ``already_started``; anything after stop -> ``stopped``. A connection may
    start a new call once the previous one has ended.
    """

    def __init__(self, registry: SessionRegistry) -> None:
        self._registry = registry
        self.session: CallSession | None = None
        self._stopping = False

    @property
    def call_id(self) -> str | None:
        return self.session.call_id if self.session else None

    @property
    def live(self) -> bool:
        return self.session is not None and not self._stopping and self.session.state == "live"

    async def start(
        self, call_id: str, metadata: CallInfo, audio: AudioInputFormat | None = None
    ) -> tuple[CallSession, bool]:
        if self.session is not None and self.session.state != "closed":
            if self._stopping:
                raise InputError(
                    ErrorCode.ALREADY_STARTED,
                    f"call {self.session.call_id} is still finishing; start the next call after its summary",
                    grpc.StatusCode.FAILED_PRECONDITION,
                )
            raise InputError(
                ErrorCode.ALREADY_STARTED,
                f"call {self.session.call_id} is already running on this connection; stop it first",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        session, resumed = await self._registry.start_call(call_id, metadata, audio)
        self.session, self._stopping = session, False
        return session, resumed

    def _require_live(self) -> CallSession:
        if self.session is None:
            raise InputError(
                ErrorCode.NOT_STARTED,
                "no call is running: send start with a call_id first",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if not self._stopping and self.session.state == "closed":
            raise InputError(
                ErrorCode.CALL_ENDED,
                f"call {self.session.call_id} has ended; start a new call to go on",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        if self._stopping or self.session.state != "live":
            raise InputError(
                ErrorCode.STOPPED,
                f"call {self.session.call_id} was stopped; this message was ignored",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        return self.session

    async def utterance(self, utterance: UtteranceInput) -> None:
        await self._require_live().submit(utterance)

    async def audio(
        self, chunk: bytes, *, role: Channel | None = None, timestamp_ms: int | None = None
    ) -> None:
        if self.session is None:
            raise InputError(
                ErrorCode.AUDIO_NOT_ENABLED,
                "audio is not enabled: no call is running; send start with the audio format first, e.g. "
                '"audio": {"encoding": "pcm16", "sample_rate_hz": 16000, "channels": 1, '
                '"channel_roles": ["customer"]}',
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        await self._require_live().submit_audio(chunk, role=role, timestamp_ms=timestamp_ms)

    def stop(self, reason: str = "hangup") -> asyncio.Future[CallOutcome]:
        """Stop the call; the returned future holds its summary. Later messages get ``stopped`` at once,
        so a transport need not wait for the flush before reading on."""
        session = self._require_live()
        self._stopping = True
        return asyncio.ensure_future(session.stop(reason or "hangup"))

    def disconnect(self) -> None:
        """The client went away: a call it was still driving is left to the grace period."""
        if self.session is not None and self.session.state == "live" and not self._stopping:
            self.session.detach()


async def _stored_call(store: Store, call_id: str, database_away: bool) -> CallRow | None:
    """The stored call of a start, to refuse an ended one; None when the database cannot say within
    half a second: a call must start during an outage (its writes spool), so the check is skipped then."""
    if database_away:
        return None
    try:
        return await asyncio.wait_for(store.get_call(call_id), STORED_CALL_TIMEOUT_S)
    except UNREACHABLE as exc:
        log.warning("call %s: not checked against stored calls (%s)", call_id, type(exc).__name__)
        return None


def _check_same_tenant(call_id: str, owner: str, tenant: str) -> None:
    """A call id is its tenant's: another tenant's start can neither resume nor take it over."""
    if owner != tenant:
        raise InputError(
            ErrorCode.FORBIDDEN,
            f"call {call_id} belongs to another tenant; a new call needs a new call_id",
            grpc.StatusCode.PERMISSION_DENIED,
        )
