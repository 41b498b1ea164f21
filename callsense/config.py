"""Where each part of the mesh listens, read once from the environment.

Every setting has a default that runs the whole mesh on one machine; a deployment overrides them with
environment variables (the ``CALLSENSE_`` prefix, plus the conventional ``DATABASE_URL``):

variable                       default                     meaning
-----------------------------  --------------------------  -------------------------------------------
CALLSENSE_ASR_ADDR             127.0.0.1:50051             ASR gRPC server (bind address and target)
CALLSENSE_CHOPPER_ADDR         127.0.0.1:50052             chopper gRPC server
CALLSENSE_SCORER_ADDR          127.0.0.1:50053             scorer gRPC server
CALLSENSE_POSTCALL_ADDR        127.0.0.1:50054             post-call worker's gRPC server (call reports)
CALLSENSE_GATEWAY_GRPC         127.0.0.1:50050             gateway's public ``Sentiment`` gRPC server
CALLSENSE_GATEWAY_HTTP         127.0.0.1:8000              gateway's HTTP + WebSocket server
CALLSENSE_ENVOY_PORT           8080                        Envoy's public port: the public API only
CALLSENSE_ENVOY_INTERNAL_PORT  8081                        Envoy's internal port: the services (by
                                                           authority or path), /metrics; never public
CALLSENSE_ENVOY_ADMIN_PORT     9901                        Envoy's admin port
DATABASE_URL                   (unset: embedded Postgres)  PostgreSQL URL; CALLSENSE_DATABASE_URL wins
CALLSENSE_DATA_DIR             ./var                       runtime state: embedded database, logs, ...
CALLSENSE_MODEL_REGISTRY       CALLSENSE_DATA_DIR/models   the sentiment model's versions and which one
                                                           the scorers serve (callsense/model_registry.py)
CALLSENSE_MESH_PROXY           (unset: dial directly)      Envoy's internal listener, host:port; the
                                                           gateway then reaches the services (the post-call
                                                           worker too) through it (load-balanced, traced)

Envoy's edge (its public listener) has settings of its own, read by
``tools.envoy_config.MeshLayout.from_config`` (``callsense up`` flags win):
CALLSENSE_RATE_LIMIT_PER_KEY (50 requests/s per API key), CALLSENSE_RATE_LIMIT_PER_KEY_BURST (100),
CALLSENSE_RATE_LIMIT_PER_IP (20/s per address without a key), CALLSENSE_RATE_LIMIT_PER_IP_BURST (40),
CALLSENSE_TLS_CERT + CALLSENSE_TLS_KEY (unset: plaintext), and the company's identity provider whose JWTs
Envoy validates (unset: API keys only): CALLSENSE_JWT_ISSUER, CALLSENSE_JWT_AUDIENCES (comma-separated), and
CALLSENSE_JWT_JWKS_FILE or CALLSENSE_JWT_JWKS_URI (+ CALLSENSE_JWT_JWKS_CACHE_S, CALLSENSE_JWT_JWKS_CA).

CALLSENSE_EDGE_SECRET (``Config.edge_secret``) is shared by Envoy and the gateway: when it validates JWTs,
Envoy's public listener sends it with every request (``EDGE_HEADER``), and the gateway believes the claims
Envoy forwards (``JWT_PAYLOAD_HEADER``) only when it matches (gateway/auth/edge.py). ``callsense up`` makes
one per run.

An address is used both to bind a server and to reach it; in a cluster, set it to the service's name
(e.g. ``scorer:50053``) for clients and let the server bind ``0.0.0.0`` with the same port
(``Config.bind_address``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "CALLSENSE_"

EDGE_SECRET_ENV = PREFIX + "EDGE_SECRET"
EDGE_HEADER = "x-callsense-edge"
"""Envoy's public listener sets it to the edge secret on every request when it validates JWTs (a client's
own is removed first, on every listener)."""
JWT_PAYLOAD_HEADER = "x-callsense-jwt-payload"
"""The claims of a JWT Envoy validated (base64url of their JSON); a client's own is removed first."""
EDGE_SECRET_MIN_LENGTH = 16


class ConfigError(ValueError):
    """An environment variable holds a value that cannot be used; the message names the variable."""


@dataclass(frozen=True)
class Config:
    """The mesh's addresses and paths. Build it with ``load_config()``, not by hand, outside tests."""

    asr_addr: str = "127.0.0.1:50051"
    chopper_addr: str = "127.0.0.1:50052"
    scorer_addr: str = "127.0.0.1:50053"
    postcall_addr: str = "127.0.0.1:50054"
    gateway_grpc: str = "127.0.0.1:50050"
    gateway_http: str = "127.0.0.1:8000"
    envoy_port: int = 8080
    """Envoy's public listener."""
    envoy_internal_port: int = 8081
    """Envoy's internal listener: the services by authority (``mesh_proxy``), /metrics."""
    envoy_admin_port: int = 9901
    database_url: str | None = None
    """None means: start the embedded PostgreSQL under data_dir."""
    data_dir: Path = Path("var")
    model_registry: Path = Path("var/models")
    """The local model registry (``callsense models``); scorers started without ``--model`` serve its
    current version."""
    mesh_proxy: str | None = None
    """Envoy's internal listener, "host:port": internal calls go through it, naming the service as the
    authority."""
    edge_secret: str | None = field(default=None, repr=False)
    """Shared with Envoy (``EDGE_SECRET_ENV``): the gateway trusts a forwarded JWT payload only with it; None:
    never (API keys and sessions only)."""

    @staticmethod
    def bind_address(addr: str, host: str = "0.0.0.0") -> str:
        """The same port on all interfaces (or ``host``): what a server in a container binds."""
        return f"{host}:{split_host_port(addr)[1]}"


def split_host_port(addr: str) -> tuple[str, int]:
    """Split "host:port" (IPv6 as "[::1]:50051"); raise ConfigError when the port is missing or bad."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"address {addr!r} is not host:port")
    return host, _port(port, addr)


def _port(text: str, what: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{what}: port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"{what}: port {port} is out of range 0..65535")
    return port


def _addr(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(PREFIX + name, "").strip() or default
    split_host_port(value)  # validate early: a typo should stop start-up, not the first call
    return value


def edge_secret(env: Mapping[str, str]) -> str | None:
    """``CALLSENSE_EDGE_SECRET``, or None when unset; ConfigError when too short to be a secret (Envoy sends
    "-" for an unset one: that must never match)."""
    secret = env.get(EDGE_SECRET_ENV, "").strip()
    if not secret:
        return None
    if len(secret) < EDGE_SECRET_MIN_LENGTH:
        raise ConfigError(
            f"{EDGE_SECRET_ENV}: at least {EDGE_SECRET_MIN_LENGTH} characters "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return secret


def load_config(env: Mapping[str, str] | None = None) -> Config:
    """Read the configuration from ``env`` (default: ``os.environ``); raise ConfigError on bad values."""
    env = os.environ if env is None else env
    d = Config()
    data_dir = Path(env.get(PREFIX + "DATA_DIR") or d.data_dir)
    return Config(
        asr_addr=_addr(env, "ASR_ADDR", d.asr_addr),
        chopper_addr=_addr(env, "CHOPPER_ADDR", d.chopper_addr),
        scorer_addr=_addr(env, "SCORER_ADDR", d.scorer_addr),
        postcall_addr=_addr(env, "POSTCALL_ADDR", d.postcall_addr),
        gateway_grpc=_addr(env, "GATEWAY_GRPC", d.gateway_grpc),
        gateway_http=_addr(env, "GATEWAY_HTTP", d.gateway_http),
        envoy_port=_port(env.get(PREFIX + "ENVOY_PORT") or str(d.envoy_port), PREFIX + "ENVOY_PORT"),
        envoy_internal_port=_port(
            env.get(PREFIX + "ENVOY_INTERNAL_PORT") or str(d.envoy_internal_port),
            PREFIX + "ENVOY_INTERNAL_PORT",
        ),
        envoy_admin_port=_port(
            env.get(PREFIX + "ENVOY_ADMIN_PORT") or str(d.envoy_admin_port), PREFIX + "ENVOY_ADMIN_PORT"
        ),
        database_url=env.get(PREFIX + "DATABASE_URL") or env.get("DATABASE_URL") or None,
        data_dir=data_dir,
        model_registry=Path(env.get(PREFIX + "MODEL_REGISTRY") or data_dir / "models"),
        mesh_proxy=_addr(env, "MESH_PROXY", "") if env.get(PREFIX + "MESH_PROXY", "").strip() else None,
        edge_secret=edge_secret(env),
    )
