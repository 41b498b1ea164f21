"""`callsense up`: the whole mesh on one machine, on embedded defaults.

Start order: the embedded PostgreSQL (unless DATABASE_URL is set) in this process, then Envoy (it
needs no upstream to be up: it health-checks them), then the chopper, N scorer replicas, the ASR
service (Whisper; audio calls) and the post-call worker (call reports, webhooks, roll-ups; it shares the
database), then the gateway. The gateway reaches the chopper, the scorers, the ASR and the worker through
Envoy, so scorer replicas are load-balanced and Envoy's spans sit between the gateway's and the services'
in each trace.
Ctrl-C stops everything in reverse order and leaves no process or shared-memory file behind.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from callsense.config import Config, load_config, split_host_port
from tools.envoy_config import MeshLayout, write
from tools.supervisor import GrpcReady, HttpReady, ProcessSpec, Supervisor, envoy_spec

SCORER_PORT_STEP = 1000  # replica i of the scorer listens on the first replica's port + i * 1000


@dataclass(frozen=True)
class UpOptions:
    scorer_replicas: int = 1
    scorer_max_batch: int = 16
    scorer_max_wait_ms: float = 5.0
    envoy_config: Path | None = None  # where to write the rendered config (default: data_dir/envoy.yaml)


def embedded_data_dir(config: Config) -> Path | None:
    """Where the embedded PostgreSQL keeps its data: ``CALLSENSE_DATA_DIR/postgres`` when that directory is
    absolute (the rule the gateway follows too), else None: the per-checkout default outside the repository
    (pgserver chowns its data dir and opens up the parents, so never under the relative default ./var)."""
    return config.data_dir / "postgres" if config.data_dir.is_absolute() else None


def scorer_addresses(config: Config, replicas: int) -> list[str]:
    host, port = split_host_port(config.scorer_addr)
    return [f"{host}:{port + i * SCORER_PORT_STEP}" for i in range(replicas)]


def mesh_specs(config: Config, options: UpOptions, database_url: str, envoy_yaml: Path) -> list[ProcessSpec]:
    """The child processes of the mesh, in dependency order."""
    python = sys.executable
    envoy_addr = f"127.0.0.1:{config.envoy_port}"
    public = f"http://127.0.0.1:{config.envoy_port}"
    # The gateway's mesh proxy is Envoy's internal listener: the public one refuses the services.
    mesh_proxy = f"127.0.0.1:{config.envoy_internal_port}"
    specs = [
        envoy_spec(
            "envoy",
            envoy_yaml,
            admin_port=config.envoy_admin_port,
            urls=[
                f"{public}/docs  (REST API)",
                f"{public}/v1/sentiment/stream  (WebSocket)",
                f"{envoy_addr}  (gRPC)",
                f"http://{mesh_proxy}/metrics  (internal listener: metrics, the services; never public)",
            ],
        ),
        ProcessSpec(
            "chopper",
            [python, "-m", "chopper_service", "--bind", config.chopper_addr],
            ready=GrpcReady(config.chopper_addr),
        ),
    ]
    scorers = scorer_addresses(config, options.scorer_replicas)
    for index, address in enumerate(scorers):
        specs.append(
            ProcessSpec(
                f"scorer{index + 1}" if len(scorers) > 1 else "scorer",
                [
                    python,
                    "-m",
                    "scorer_service",
                    "--bind",
                    address,
                    "--max-batch",
                    str(options.scorer_max_batch),
                    "--max-wait-ms",
                    str(options.scorer_max_wait_ms),
                ],
                ready=GrpcReady(address),
            )
        )
    specs.append(
        ProcessSpec(
            "asr",
            [python, "-m", "asr_service", "--bind", config.asr_addr],
            ready=GrpcReady(config.asr_addr),
        )
    )
    specs.append(
        ProcessSpec(
            "postcall",
            [python, "-m", "postcall", "--bind", config.postcall_addr],
            env={"DATABASE_URL": database_url},
            ready=GrpcReady(config.postcall_addr),
        )
    )
    specs.append(
        ProcessSpec(
            "gateway",
            [python, "-m", "gateway"],
            # The gateway reaches the services through Envoy: load-balanced across replicas, traced.
            env={"DATABASE_URL": database_url, "CALLSENSE_MESH_PROXY": mesh_proxy},
            ready=HttpReady(f"http://{config.gateway_http}/readyz"),
            depends_on=[spec.name for spec in specs],
            ready_timeout_s=90.0,
        )
    )
    return specs


async def run(options: UpOptions) -> int:
    config = load_config()
    embedded = None
    database_url = config.database_url
    if database_url is None:
        from callsense.database import start_embedded_postgres

        print("starting the embedded PostgreSQL (set DATABASE_URL to use your own)...", flush=True)
        embedded = await asyncio.to_thread(start_embedded_postgres, embedded_data_dir(config))
        database_url = embedded.uri
    try:
        await _first_admin_key(database_url)
        layout = MeshLayout.from_config(config, scorer=scorer_addresses(config, options.scorer_replicas))
        envoy_yaml = options.envoy_config or config.data_dir / "envoy.yaml"
        envoy_yaml.parent.mkdir(parents=True, exist_ok=True)
        write(layout, envoy_yaml)
        return await Supervisor(mesh_specs(config, options, database_url, envoy_yaml)).run()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _first_admin_key(database_url: str) -> None:
    """A fresh database has no key, so nobody could use the mesh: make an admin key of the bootstrap
    tenant and print it, once (only its hash is kept). A deployment that brings its own
    (CALLSENSE_BOOTSTRAP_KEY) has the gateway register that one instead."""
    import os

    from gateway.auth.bootstrap import BOOTSTRAP_KEY_ENV, BOOTSTRAP_TENANT_ENV, DEFAULT_TENANT
    from gateway.auth.credentials import Role
    from gateway.auth.key_store import KeyStore

    if os.environ.get(BOOTSTRAP_KEY_ENV):
        return
    keys = await KeyStore.open(database_url, max_size=1)
    try:
        if await keys.has_keys():
            return
        tenant = os.environ.get(BOOTSTRAP_TENANT_ENV, "").strip() or DEFAULT_TENANT
        minted = await keys.create_key(tenant, Role.ADMIN, name="first admin (callsense up)")
    finally:
        await keys.close()
    print(
        f"\nThe first admin key of tenant {tenant!r} (shown once; only its hash is stored):\n\n"
        f"    {minted.token}\n\n"
        "Sign in at /signin with it, send it as 'Authorization: Bearer <key>', and make more keys with\n"
        "`callsense keys create --tenant T --role agent|manager|admin|service`.\n",
        flush=True,
    )


def main(options: UpOptions) -> int:
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130
