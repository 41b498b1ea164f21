"""The process supervisor: order, readiness, clear start-up errors, and nothing left behind."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

from callsense.config import Config
from postcall.__main__ import parse_args as postcall_args
from tools.ports import free_port, free_ports
from tools.supervisor import (
    Backoff,
    GrpcReady,
    HttpReady,
    ProcessSpec,
    StartupError,
    Supervisor,
    dependency_layers,
    envoy_shm_files,
)
from tools.up import UpOptions, mesh_specs

PY = sys.executable


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by a container's init) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _http_server(name: str, port: int, depends_on: tuple[str, ...] = ()) -> ProcessSpec:
    return ProcessSpec(
        name,
        [PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        ready=HttpReady(f"http://127.0.0.1:{port}/"),
        depends_on=depends_on,
        ready_timeout_s=20,
        urls=[f"http://127.0.0.1:{port}/"],
    )


# A child that starts a grandchild which ignores SIGTERM, prints the grandchild's pid, then serves HTTP:
# stopping the child must still take the grandchild down.
_WITH_STUBBORN_GRANDCHILD = textwrap.dedent(
    """
    import subprocess, sys
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"
    grandchild = subprocess.Popen([sys.executable, "-c", code])
    print(f"grandchild {grandchild.pid}", flush=True)
    import http.server, functools
    http.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=int(sys.argv[1]),
                     bind="127.0.0.1")
    """
)


@pytest.mark.slow
async def test_starts_in_dependency_order_forwards_logs_and_stops_everything() -> None:
    port_a, port_b = free_port(), free_port()
    b = ProcessSpec(
        "b",
        [PY, "-c", _WITH_STUBBORN_GRANDCHILD, str(port_b)],
        ready=HttpReady(f"http://127.0.0.1:{port_b}/"),
        depends_on=["a"],
        ready_timeout_s=20,
        stop_timeout_s=2,
    )
    out = io.StringIO()
    supervisor = Supervisor([b, _http_server("a", port_a)], out=out)
    await supervisor.start()
    try:
        pids = [child.pid for child in supervisor.children.values()]
        assert all(_alive(pid) for pid in pids)
        grandchild = int(re.search(r"^b +\| grandchild (\d+)$", out.getvalue(), re.M).group(1))  # type: ignore[union-attr]
        assert _alive(grandchild)
    finally:
        await supervisor.stop()

    log = out.getvalue()
    assert log.index("a ready in") < log.index("starting b:")
    assert re.search(r"^a +\| .*GET / HTTP/1.1\" 200", log, re.M), log  # a's own log, prefixed
    assert f"http://127.0.0.1:{port_a}/  (a)" in log
    assert "did not stop" not in log  # b exited on SIGTERM; only its stubborn grandchild needed SIGKILL
    await asyncio.sleep(0.1)  # the grandchild was SIGKILLed; give the kernel a moment to reap it
    assert not any(_alive(pid) for pid in [*pids, grandchild])


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        # Alive but never ready: the timeout names the probe and what it last saw.
        (
            "print('loading model'); print('error: no such device'); import time; time.sleep(60)",
            r"not ready after 1 s \(HTTP GET http://127\.0\.0\.1:\d+/healthz: ConnectionRefusedError",
        ),
        # Dead before ready: the exit code.
        (
            "print('loading model'); print('error: no such device'); raise SystemExit(3)",
            r"exited with code 3 before it was ready",
        ),
    ],
    ids=["timeout", "exit"],
)
async def test_reports_the_process_that_fails_with_its_log_tail(script: str, reason: str) -> None:
    port = free_port()
    broken = ProcessSpec(
        "scorer", [PY, "-c", script], ready=HttpReady(f"http://127.0.0.1:{port}/healthz"), ready_timeout_s=1
    )
    # Starts beside the broken one and would wait 60 s: the failure must cut its wait short.
    sibling = ProcessSpec(
        "chopper",
        [PY, "-c", "import time; time.sleep(60)"],
        ready=HttpReady(f"http://127.0.0.1:{free_port()}/"),
    )
    never = ProcessSpec("gateway", [PY, "-c", "print('must not start')"], depends_on=["scorer", "chopper"])
    out = io.StringIO()
    supervisor = Supervisor([broken, sibling, never], out=out)
    began = time.monotonic()
    with pytest.raises(StartupError) as caught:
        await supervisor.start()
    assert time.monotonic() - began < 5, "the sibling kept start-up waiting"

    error = caught.value
    assert error.name == "scorer"
    assert re.search(reason, str(error)), str(error)
    assert error.tail[-2:] == ["loading model", "error: no such device"]
    assert "error: no such device" in str(error)
    assert "gateway" not in supervisor.children
    assert not any(_alive(child.pid) for child in supervisor.children.values())


async def test_a_child_that_must_not_restart_ends_the_wait_when_it_dies() -> None:
    out = io.StringIO()
    code = "import time; time.sleep(0.6); print('bye'); raise SystemExit(2)"
    spec = ProcessSpec("flaky", [PY, "-c", code], restart=False)
    async with Supervisor([spec], out=out) as supervisor:
        assert await asyncio.wait_for(supervisor.wait(), 10) == 1
    assert "flaky exited with code 2; stopping everything" in out.getvalue()


QUICK = Backoff(first_s=0.05, max_s=0.2, give_up_after=3, window_s=60.0)


class _Output(io.StringIO):
    """The supervisor's output, with an event set once ``awaited`` has been written."""

    def __init__(self, awaited: str) -> None:
        super().__init__()
        self.awaited, self.seen = awaited, asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        if self.awaited in self.getvalue():
            self.seen.set()
        return written


async def test_a_child_that_dies_is_restarted_after_a_back_off_and_says_so(tmp_path: Path) -> None:
    """The first start dies after a moment; the restart finds its marker and stays up."""
    marker = tmp_path / "started-once"
    code = (
        "import pathlib, sys, time\n"
        f"m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists():\n    m.touch(); time.sleep(0.3); sys.exit(3)\n"
        "print('back', flush=True); time.sleep(60)"
    )
    out = _Output("| back")
    async with Supervisor([ProcessSpec("scorer", [PY, "-c", code])], out=out, backoff=QUICK) as supervisor:
        first = supervisor.children["scorer"].pid
        waiting = asyncio.create_task(supervisor.wait())
        await asyncio.wait_for(out.seen.wait(), 20)  # the restarted child said it is back
        assert "scorer exited with code 3; restarting it in 0.1 s (restart 1)" in out.getvalue()
        assert supervisor.children["scorer"].pid != first and not waiting.done()  # still supervising
        supervisor.request_stop()
        assert await asyncio.wait_for(waiting, 10) == 0


async def test_a_crash_looping_child_stops_everything() -> None:
    out = io.StringIO()
    spec = ProcessSpec("chopper", [PY, "-c", "import time; time.sleep(0.2); raise SystemExit(4)"])
    async with Supervisor([spec], out=out, backoff=QUICK) as supervisor:
        assert await asyncio.wait_for(supervisor.wait(), 20) == 1
    said = out.getvalue()
    assert said.count("restarting it in") == 3 and "(restart 3)" in said
    assert "its 4th death in 60 s: it is crash-looping; stopping everything" in said


def test_dependency_layers() -> None:
    def spec(name: str, *deps: str) -> ProcessSpec:
        return ProcessSpec(name, ["true"], depends_on=deps)

    layers = dependency_layers(
        [spec("envoy", "gateway"), spec("gateway", "scorer", "chopper"), spec("scorer"), spec("chopper")]
    )
    assert [[s.name for s in layer] for layer in layers] == [["scorer", "chopper"], ["gateway"], ["envoy"]]
    with pytest.raises(ValueError, match="cycle"):
        dependency_layers([spec("a", "b"), spec("b", "a")])
    with pytest.raises(ValueError, match="unknown"):
        dependency_layers([spec("a", "postgres")])


def test_callsense_up_runs_the_post_call_worker_and_waits_for_its_health(tmp_path: Path) -> None:
    """`callsense up` starts the worker on its configured address with the mesh's database, waits for its
    gRPC health like the other services', and starts the gateway only after it."""
    config = Config()
    specs = {
        s.name: s for s in mesh_specs(config, UpOptions(), "postgresql://db/mesh", tmp_path / "envoy.yaml")
    }
    worker = specs["postcall"]
    assert list(worker.argv[1:3]) == ["-m", "postcall"]
    assert postcall_args(list(worker.argv[3:])).bind == config.postcall_addr
    assert worker.env["DATABASE_URL"] == "postgresql://db/mesh"
    assert isinstance(worker.ready, GrpcReady) and worker.ready.target == config.postcall_addr
    assert "postcall" in specs["gateway"].depends_on
    assert specs["gateway"].env["CALLSENSE_MESH_PROXY"] == f"127.0.0.1:{config.envoy_internal_port}"
    assert [name for name in specs if name in ("postcall", "gateway")] == ["postcall", "gateway"]


def test_callsense_up_fuses_tone_only_when_asked(tmp_path: Path) -> None:
    """Tone fusion is opt-in: the scorers get ``--fusion`` with ``callsense up --tone`` and not otherwise."""

    def scorer_argv(options: UpOptions) -> list[str]:
        specs = mesh_specs(Config(), options, "postgresql://db/mesh", tmp_path / "envoy.yaml")
        return [a for s in specs if s.name == "scorer" for a in s.argv]

    assert "--fusion" not in scorer_argv(UpOptions())
    assert "--fusion" in scorer_argv(UpOptions(tone_fusion=True))


def test_callsense_up_passes_the_asr_capacity_settings_and_the_asr_takes_them(tmp_path: Path) -> None:
    """`--asr-workers`, `--asr-partial-interval`, `--asr-partial-batch`, `--asr-final-beam`,
    `--asr-max-streams`, `--asr-speculative-end-ms` and `--asr-no-commit-at-pauses` reach the ASR's
    command line, which its own parser takes into the channels' StreamingConfig (0: no partials); the
    defaults add nothing; a setting the channels refuse is refused by the parser."""
    from asr_service.__main__ import parse_args, streaming_config
    from asr_service.channel import StreamingConfig

    def asr_argv(options: UpOptions) -> list[str]:
        specs = mesh_specs(Config(), options, "postgresql://db/mesh", tmp_path / "envoy.yaml")
        argv = next(s.argv for s in specs if s.name == "asr")
        return argv[argv.index("asr_service") + 1 :]

    default = asr_argv(UpOptions())
    assert not {
        "--workers",
        "--partial-interval",
        "--partial-batch",
        "--final-beam",
        "--max-streams",
        "--speculative-end-ms",
        "--no-commit-at-pauses",
    } & set(default)
    assert streaming_config(parse_args(default)) == StreamingConfig()
    options = UpOptions(
        asr_workers=2,
        asr_partial_interval_s=2.0,
        asr_partial_batch=4,
        asr_final_beam=1,
        asr_max_streams=12,
        asr_speculative_end_ms=300,
        asr_commit_at_pauses=False,
    )
    args = parse_args(asr_argv(options))
    assert (args.workers, args.partial_interval, args.partial_batch, args.final_beam) == (2, 2.0, 4, 1)
    assert args.max_streams == 12 and parse_args(default).max_streams == 8
    streaming = streaming_config(args)
    assert (streaming.partial_interval_s, streaming.partial_batch) == (2.0, 4)
    assert streaming.speculative_end_ms == 300 and StreamingConfig().speculative_end_ms == 0
    assert not streaming.commit_at_pauses and StreamingConfig().commit_at_pauses
    assert streaming.decoding.final_beam_size == 1 and StreamingConfig().decoding.final_beam_size == 5
    silent = streaming_config(
        parse_args(
            asr_argv(UpOptions(asr_partial_interval_s=0.0, asr_final_beam=3, asr_speculative_end_ms=200))
        )
    )
    assert not silent.partials and silent.decoding.final_beam_size == 3
    assert silent.speculative_end_ms == 200
    for refused in (["--final-beam", "0"], ["--speculative-end-ms", "100"], ["--speculative-end-ms", "500"]):
        with pytest.raises(SystemExit):  # greedy is 1; the end comes after the speculation, before the VAD's
            parse_args(refused)


def test_callsense_up_takes_the_asr_settings_into_its_options_and_refuses_bad_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line's ASR flags reach UpOptions (what the mesh specs above are built from); a value
    under 1 is refused before anything starts, not by the ASR process once the mesh is up."""
    import tools.up
    from tools.cli import main

    started: list[UpOptions] = []
    monkeypatch.setattr(tools.up, "main", lambda options: started.append(options) or 0)
    argv = ["up", "--asr-workers", "2", "--asr-partial-batch", "4", "--asr-final-beam", "1"]
    argv += ["--asr-max-streams", "12"]
    assert main([*argv, "--asr-speculative-end-ms", "300", "--asr-no-commit-at-pauses"]) == 0
    assert [
        (
            o.asr_workers,
            o.asr_partial_batch,
            o.asr_final_beam,
            o.asr_max_streams,
            o.asr_speculative_end_ms,
            o.asr_commit_at_pauses,
        )
        for o in started
    ] == [(2, 4, 1, 12, 300, False)]
    assert main(["up"]) == 0 and started[-1].asr_final_beam is None and started[-1].asr_max_streams is None
    assert started[-1].asr_speculative_end_ms is None and started[-1].asr_commit_at_pauses
    for flag in ("--asr-workers", "--asr-partial-batch", "--asr-final-beam", "--asr-max-streams"):
        assert main(["up", flag, "0"]) == 2
        assert f"{flag} must be at least 1" in capsys.readouterr().err
    for refused in ("-1", "100", "500"):  # the ASR's own rule: after the speculation, before the VAD's end
        assert main(["up", "--asr-speculative-end-ms", refused]) == 2
        assert "--asr-speculative-end-ms: speculative_end_ms must be" in capsys.readouterr().err
    assert len(started) == 2


# `callsense up` as a user runs it: a supervisor process with an HTTP server and Envoy, stopped by Ctrl-C.
_UP_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from tools.envoy_config import MeshLayout, write
    from tools.supervisor import HttpReady, ProcessSpec, Supervisor, envoy_spec

    http_port, envoy_port, admin_port, internal_port = map(int, sys.argv[1:5])
    config = sys.argv[5]
    write(MeshLayout(listener_host="127.0.0.1", listener_port=envoy_port, admin_port=admin_port,
                     internal_port=internal_port, gateway_http=[f"127.0.0.1:{http_port}"], access_log=False),
          config)
    web = ProcessSpec("web", [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
                      ready=HttpReady(f"http://127.0.0.1:{http_port}/"))
    envoy = envoy_spec("envoy", config, admin_port=admin_port, depends_on=["web"], concurrency=1,
                       urls=[f"http://127.0.0.1:{envoy_port}/"])
    sys.exit(asyncio.run(Supervisor([web, envoy]).run()))
    """
)


@pytest.mark.slow
async def test_ctrl_c_stops_every_child_and_envoy_leaves_no_shared_memory(tmp_path: Path) -> None:
    shm_before = envoy_shm_files()
    ports = free_ports(4)
    up = await asyncio.create_subprocess_exec(
        PY,
        "-c",
        _UP_SCRIPT,
        *map(str, ports),
        str(tmp_path / "envoy.yaml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert up.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(60):
            while not lines or "press Ctrl-C to stop" not in lines[-1]:
                line = (await up.stdout.readline()).decode()
                assert line, "the supervisor exited early:\n" + "".join(lines)
                lines.append(line)
        pids = [int(p) for p in re.findall(r"ready in .* \(pid (\d+)\)", "".join(lines))]
        assert len(pids) == 2 and all(_alive(pid) for pid in pids)
        assert not envoy_shm_files() - shm_before

        up.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            rest = (await up.stdout.read()).decode()
            assert await up.wait() == 0, "".join(lines) + rest
    finally:
        if up.returncode is None:
            up.kill()
            await up.wait()
    assert "stopped" in rest
    assert not any(_alive(pid) for pid in pids)
    assert envoy_shm_files() <= shm_before


_SUPERVISE_ONE = """
import asyncio, io, sys
from tools.supervisor import ProcessSpec, Supervisor
spec = ProcessSpec("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
async def main():
    supervisor = Supervisor([spec], out=io.StringIO())
    await supervisor.start()
    print(supervisor.children["sleeper"].pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_children_end_when_the_supervisor_is_killed() -> None:
    """SIGKILL leaves the supervisor no chance to stop its children: the kernel's parent-death signal
    (set by tools/die_with_parent.py before the child's program runs) ends them."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    supervisor = subprocess.Popen([PY, "-c", _SUPERVISE_ONE], stdout=subprocess.PIPE, text=True, cwd=root)
    try:
        assert supervisor.stdout is not None
        child = int(supervisor.stdout.readline())
        assert _alive(child)
        supervisor.kill()
        supervisor.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its supervisor"
    finally:
        supervisor.kill()
