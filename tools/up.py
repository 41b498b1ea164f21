"""`callsense up`: the whole mesh on one machine, on embedded defaults.

Start order: the embedded PostgreSQL (unless DATABASE_URL is set) in this process, then Envoy (it
needs no upstream to be up: it health-checks them), then the chopper, N scorer replicas, the ASR
service (Whisper; audio calls) and the post-call worker (call reports, webhooks, roll-ups; it shares the
database), then the gateway. The gateway reaches the chopper, the scorers, the ASR and the worker through
Envoy, so scorer replicas are load-balanced and Envoy's spans sit between the gateway's and the services'
in each trace.
Ctrl-C stops everything in reverse order and leaves no process or shared-memory file behind.

Envoy's public listener is the edge: rate limits per API key and per client address (``--rate-limit-*``,
``CALLSENSE_RATE_LIMIT_*``), and TLS with the user's certificate (``--tls-cert``/``--tls-key``) or a
self-signed one for local use (``--tls-self-signed``); plaintext without either. With an identity provider
(``CALLSENSE_JWT_ISSUER``, ...) it validates JWTs too, and hands their claims to the gateway next to an edge
secret made for the run (``CALLSENSE_EDGE_SECRET``, unless set) that only Envoy and the gateway are given.
With browser sign-in at the provider too (``CALLSENSE_OIDC_AUTHORIZE_URL``, ...), Envoy keeps browsers'
sessions in cookies signed with a secret made once per data directory (``data_dir/oidc/hmac-secret``, unless
``CALLSENSE_OIDC_HMAC_SECRET_FILE`` names one), so a restart signs nobody out, and the gateway is told
(``CALLSENSE_OIDC_BROWSER``) so that its sign-in page offers the provider.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from callsense.config import EDGE_SECRET_ENV, Config, ConfigError, load_config, split_host_port
from tools.envoy_config import OIDC_ENV, MeshLayout, write
from tools.supervisor import GrpcReady, HttpReady, ProcessSpec, Supervisor, envoy_spec

SCORER_PORT_STEP = 1000  # replica i of the scorer listens on the first replica's port + i * 1000


@dataclass(frozen=True)
class UpOptions:
    scorer_replicas: int = 1
    scorer_max_batch: int = 16
    scorer_max_wait_ms: float = 5.0
    envoy_config: Path | None = None  # where to write the rendered config (default: data_dir/envoy.yaml)
    # The edge (Envoy's public listener). None: CALLSENSE_RATE_LIMIT_* where set, else MeshLayout's default.
    rate_limit_per_key: float | None = None
    rate_limit_per_key_burst: int | None = None
    rate_limit_per_ip: float | None = None
    rate_limit_per_ip_burst: int | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_self_signed: bool = False
    """Make (or reuse) a certificate for localhost under the data directory."""
    asr_model: str | None = None
    """The ASR's Whisper model: a name of ``asr_service.models.PACKAGED`` or a directory (None: the
    ASR's own default, ``CALLSENSE_ASR_MODEL_DIR`` or tiny.en)."""
    asr_workers: int = 1
    """Whisper decodes the ASR runs at once (``python -m asr_service --workers``; docs/capacity.md)."""
    asr_partial_interval_s: float | None = None
    """Seconds between the ASR's partial decodes of an open segment (None: its default, 1 s; 0: none)."""
    asr_partial_batch: int = 1
    """Most partials of different calls the ASR decodes as one batch (1: each alone, its default)."""
    asr_final_beam: int | None = None
    """Beam width of the ASR's final decodes (None: its default, ``python -m asr_service --final-beam``)."""
    asr_max_streams: int | None = None
    """Calls the ASR serves at once before it refuses more (None: its default, 8,
    ``python -m asr_service --max-streams``; docs/capacity.md sizes it per CPU)."""
    asr_speculative_end_ms: int | None = None
    """Silence after which a finished sentence ends its segment (None: the ASR's default,
    ``python -m asr_service --speculative-end-ms``; 0: off)."""
    asr_commit_at_pauses: bool = True
    """The ASR commits the sentences before a pause (``python -m asr_service --no-commit-at-pauses`` when
    False)."""
    tone_fusion: bool = False
    """Start the scorers with ``--fusion``: the voice's tone fused with the words (opt-in, FUSION_CARD.md)."""


SELF_SIGNED_DAYS = 365
SELF_SIGNED_HOSTS = ("localhost", "127.0.0.1", "::1")


def self_signed_certificate(directory: Path, *, days: int = SELF_SIGNED_DAYS) -> tuple[Path, Path]:
    """A self-signed certificate for local use, ``directory/self-signed.crt`` and its key ``.key`` (0600 in a
    0700 directory), for ``SELF_SIGNED_HOSTS`` (SAN DNS:localhost, IP:127.0.0.1, IP:::1). One made earlier
    is reused while it has more than a day left, so a browser's exception for it keeps holding.

    Made by the ``openssl`` command (OpenSSL 1.1.1 or later; the ``cryptography`` package is not a
    dependency): an EC P-256 key and an X.509 v3 certificate."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError(
            "a self-signed certificate needs the openssl command; install it, or give your own "
            "certificate with --tls-cert and --tls-key"
        )
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    cert, key = directory / "self-signed.crt", directory / "self-signed.key"
    if cert.is_file() and key.is_file():
        still_valid = subprocess.run(
            [openssl, "x509", "-checkend", "86400", "-noout", "-in", str(cert)], capture_output=True
        )
        if still_valid.returncode == 0:
            return cert, key
    san = ",".join(f"IP:{h}" if _is_ip_literal(h) else f"DNS:{h}" for h in SELF_SIGNED_HOSTS)
    tmp_cert, tmp_key = cert.with_suffix(".crt.tmp"), key.with_suffix(".key.tmp")
    tmp_key.unlink(missing_ok=True)
    tmp_key.touch(mode=0o600)  # openssl writes into it: the key is never readable by others, not even briefly
    made = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-sha256",
            "-days",
            str(days),
            "-subj",
            "/CN=localhost",
            "-addext",
            f"subjectAltName={san}",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
            str(tmp_key),
            "-out",
            str(tmp_cert),
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        raise ConfigError(f"openssl could not make a self-signed certificate: {made.stderr.strip()}")
    tmp_key.chmod(0o600)
    tmp_key.replace(key)
    tmp_cert.replace(cert)
    return cert, key


OIDC_HMAC_SECRET_BYTES = 32


def oidc_hmac_secret(directory: Path) -> Path:
    """The secret Envoy signs and encrypts browsers' provider sessions with: ``directory/hmac-secret``
    (0600 in a 0700 directory), made once and reused, so sessions outlive a restart of the mesh."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / "hmac-secret"
    if path.is_file() and path.stat().st_size >= OIDC_HMAC_SECRET_BYTES:
        return path
    tmp = path.with_name(".hmac-secret.tmp")
    tmp.unlink(missing_ok=True)
    tmp.touch(mode=0o600)  # never readable by others, not even before the secret is in it
    # No trailing newline: Envoy takes the file's bytes as they are.
    tmp.write_text(secrets.token_urlsafe(OIDC_HMAC_SECRET_BYTES), encoding="ascii")
    tmp.replace(path)
    return path


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def edge_overrides(
    options: UpOptions, config: Config, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The ``MeshLayout`` fields the options set (the rest come from the environment or the defaults), and
    the HMAC secret of browser sign-in at the provider when ``env`` asks for that and names none."""
    env = os.environ if env is None else env
    overrides: dict[str, Any] = {
        name: getattr(options, name)
        for name in (
            "rate_limit_per_key",
            "rate_limit_per_key_burst",
            "rate_limit_per_ip",
            "rate_limit_per_ip_burst",
        )
        if getattr(options, name) is not None
    }
    if options.tls_self_signed:
        cert, key = self_signed_certificate(config.data_dir.resolve() / "tls")
        print(
            f"TLS on Envoy's public port with a self-signed certificate for localhost: {cert}\n"
            "(trust it in your client: curl --cacert, grpc.ssl_channel_credentials(root_certificates=...))",
            flush=True,
        )
        overrides |= {"tls_cert": str(cert), "tls_key": str(key)}
    elif options.tls_cert is not None and options.tls_key is not None:
        for path in (options.tls_cert, options.tls_key):
            if not os.access(path, os.R_OK):
                raise ConfigError(f"cannot read the TLS file {path}")
        overrides |= {"tls_cert": str(options.tls_cert.resolve()), "tls_key": str(options.tls_key.resolve())}
    wants_oidc = env.get(OIDC_ENV["oidc_authorize_url"], "").strip()
    if wants_oidc and not env.get(OIDC_ENV["oidc_hmac_secret_file"], "").strip():
        overrides["oidc_hmac_secret_file"] = str(oidc_hmac_secret(config.data_dir.resolve() / "oidc"))
    if wants_oidc and (client_secret := env.get(OIDC_ENV["oidc_client_secret_file"], "").strip()):
        _check_client_secret(Path(client_secret))
    return overrides


def _check_client_secret(path: Path) -> None:
    """Envoy sends the file's bytes as the secret, a trailing newline included (the provider then refuses
    every sign-in with a bare "OAuth flow failed."): say so before anything starts."""
    variable = OIDC_ENV["oidc_client_secret_file"]
    try:
        secret = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{variable}: cannot read {path}: {e.strerror}") from None
    if not secret.strip():
        raise ConfigError(f"{variable}: {path} is empty")
    if secret != secret.strip():
        raise ConfigError(
            f"{variable}: {path} has whitespace around the secret (a trailing newline?), which Envoy would "
            "send as part of it; write it with printf '%s' \"$SECRET\" > FILE"
        )


def embedded_data_dir(config: Config) -> Path | None:
    """Where the embedded PostgreSQL keeps its data: ``CALLSENSE_DATA_DIR/postgres`` when that directory is
    absolute (the rule the gateway follows too), else None: the per-checkout default outside the repository
    (pgserver chowns its data dir and opens up the parents, so never under the relative default ./var)."""
    return config.data_dir / "postgres" if config.data_dir.is_absolute() else None


def scorer_addresses(config: Config, replicas: int) -> list[str]:
    host, port = split_host_port(config.scorer_addr)
    return [f"{host}:{port + i * SCORER_PORT_STEP}" for i in range(replicas)]


def mesh_specs(
    config: Config,
    options: UpOptions,
    database_url: str,
    envoy_yaml: Path,
    *,
    tls: bool = False,
    edge_secret: str | None = None,
    oidc_browser: bool = False,
) -> list[ProcessSpec]:
    """The child processes of the mesh, in dependency order (``tls``: Envoy's public port speaks TLS;
    ``edge_secret``: given to Envoy and the gateway only, as ``CALLSENSE_EDGE_SECRET``; ``oidc_browser``:
    Envoy signs browsers in with the identity provider, which the gateway's sign-in page then offers)."""
    from gateway.auth.web import OIDC_BROWSER_ENV

    edge = {EDGE_SECRET_ENV: edge_secret} if edge_secret else {}
    oidc = {OIDC_BROWSER_ENV: "1"} if oidc_browser else {}
    python = sys.executable
    envoy_addr = f"127.0.0.1:{config.envoy_port}"
    public = f"{'https' if tls else 'http'}://127.0.0.1:{config.envoy_port}"
    websocket = f"{'wss' if tls else 'ws'}://127.0.0.1:{config.envoy_port}"
    # The gateway's mesh proxy is Envoy's internal listener: the public one refuses the services.
    mesh_proxy = f"127.0.0.1:{config.envoy_internal_port}"
    specs = [
        replace(
            envoy_spec(
                "envoy",
                envoy_yaml,
                admin_port=config.envoy_admin_port,
                urls=[
                    f"{public}/docs  (REST API)",
                    f"{websocket}/v1/sentiment/stream  (WebSocket)",
                    f"{envoy_addr}  (gRPC{' over TLS' if tls else ''})",
                    f"http://{mesh_proxy}/metrics  (internal listener: metrics, the services; never public)",
                ],
            ),
            env=edge,  # its public listener sends it to the gateway (only when it validates JWTs)
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
                ]
                + (["--fusion"] if options.tone_fusion else []),
                ready=GrpcReady(address),
            )
        )
    specs.append(
        ProcessSpec(
            "asr",
            [python, "-m", "asr_service", "--bind", config.asr_addr]
            + (["--model", options.asr_model] if options.asr_model else [])
            + (["--workers", str(options.asr_workers)] if options.asr_workers != 1 else [])
            + (
                ["--partial-interval", str(options.asr_partial_interval_s)]
                if options.asr_partial_interval_s is not None
                else []
            )
            + (["--partial-batch", str(options.asr_partial_batch)] if options.asr_partial_batch != 1 else [])
            + (["--final-beam", str(options.asr_final_beam)] if options.asr_final_beam is not None else [])
            + (["--max-streams", str(options.asr_max_streams)] if options.asr_max_streams is not None else [])
            + (
                ["--speculative-end-ms", str(options.asr_speculative_end_ms)]
                if options.asr_speculative_end_ms is not None
                else []
            )
            + ([] if options.asr_commit_at_pauses else ["--no-commit-at-pauses"]),
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
            env={"DATABASE_URL": database_url, "CALLSENSE_MESH_PROXY": mesh_proxy, **edge, **oidc},
            ready=HttpReady(f"http://{config.gateway_http}/readyz"),
            depends_on=[spec.name for spec in specs],
            ready_timeout_s=90.0,
        )
    )
    return specs


async def run(options: UpOptions) -> int:
    config = load_config()
    # The edge first: a bad setting or an unreadable certificate stops start-up before anything started.
    layout = MeshLayout.from_config(
        config, scorer=scorer_addresses(config, options.scorer_replicas), **edge_overrides(options, config)
    )
    embedded = None
    database_url = config.database_url
    if database_url is None:
        from callsense.database import start_embedded_postgres

        print("starting the embedded PostgreSQL (set DATABASE_URL to use your own)...", flush=True)
        embedded = await asyncio.to_thread(start_embedded_postgres, embedded_data_dir(config))
        database_url = embedded.uri
    try:
        await _first_admin_key(database_url)
        envoy_yaml = options.envoy_config or config.data_dir / "envoy.yaml"
        envoy_yaml.parent.mkdir(parents=True, exist_ok=True)
        write(layout, envoy_yaml)
        # Envoy proves to the gateway that a JWT's claims came through it with this (new each run).
        edge_secret = config.edge_secret or secrets.token_urlsafe(32)
        specs = mesh_specs(
            config,
            options,
            database_url,
            envoy_yaml,
            tls=layout.tls,
            edge_secret=edge_secret,
            oidc_browser=layout.oidc,
        )
        return await Supervisor(specs).run()
    finally:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)


async def _first_admin_key(database_url: str) -> None:
    """A fresh database has no key, so nobody could use the mesh: make an admin key of the bootstrap
    tenant and print it, once (only its hash is kept). A deployment that brings its own
    (CALLSENSE_BOOTSTRAP_KEY) has the gateway register that one instead."""
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
    except ConfigError as e:
        print(f"callsense up: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
