"""The Envoy bootstrap for the mesh, built in Python and checked against Envoy's own schema.

Two listeners, each ``codec_type: AUTO`` (HTTP/1.1 and h2c on one port):

**public** (``listener_port``, default 0.0.0.0:8080): the public API, and nothing else, whatever
``:authority`` a client sends (one virtual host, ``*``). First match wins:

    /callsense.v1.Sentiment/          -> gateway_grpc   (public gRPC API, also gRPC-Web from browsers)
    /callsense.v1.*  (any other)      -> 404 from Envoy (the internal services; never reaches an upstream;
                                         a gRPC client sees UNIMPLEMENTED)
    /grpc.health.v1.Health/, /grpc.reflection.*  -> gateway_grpc
    /metrics, /metrics/...            -> 404 from Envoy (operator-only: the internal listener has it)
    /healthz, /readyz                 -> gateway_http, never rate limited
    everything else (REST, WebSocket /v1/sentiment/stream, /docs, UI) -> gateway_http

**internal** (``internal_port``, default 127.0.0.1:8081; 0.0.0.0 inside a cluster network, never behind
a public load balancer): what the gateway (``CALLSENSE_MESH_PROXY``) and operators use.

    :authority chopper | scorer | asr | postcall (any port) -> that service, every path (health checks
                                      and reflection included): how the gateway's internal calls go
    any other authority: the public routes above, plus
    /callsense.v1.{Scorer,Chopper,Asr,PostCall}/ -> scorer, chopper, asr, postcall
    /metrics                          -> gateway_http (through the catch-all)

The public listener is the edge, and only it (the internal one is trusted and unlimited):

- **Rate limits** (Envoy's ``local_ratelimit`` filter, one token bucket per Envoy process): each API key, i.e.
  each distinct ``authorization`` header value, has its own bucket (``rate_limit_per_key`` requests/s, bursts
  of ``rate_limit_per_key_burst``); a request without one counts against its client address
  (``rate_limit_per_ip``: sign-in, pages, Twilio streams). A WebSocket call or a gRPC stream is one request,
  whatever it carries. ``/healthz`` and ``/readyz`` are never limited. Over the limit: 429 (gRPC:
  ``RESOURCE_EXHAUSTED``) from Envoy itself, with ``x-ratelimit-*`` headers; no upstream sees it.
- **Security headers** on every answer (nosniff, no referrer, no framing, same-origin opener; HSTS with
  TLS), each only where the gateway set none of its own.
- **TLS** when ``tls_cert`` and ``tls_key`` are set (TLS 1.2+, ALPN h2 and http/1.1: gRPC, browsers and
  WebSockets on one port); Envoy then tells the gateway ``x-forwarded-proto: https``.
- **JWTs of the company's identity provider** when ``jwt_issuer`` is set (``jwt_authn``, after the rate
  limit so a flood of tokens is limited before any signature is checked): a valid ``Authorization: Bearer
  <JWT>`` (signature by the provider's JWKS, ``jwt_issuer``, one of ``jwt_audiences``, ``exp`` required and
  not past) reaches the gateway as ``JWT_PAYLOAD_HEADER`` (base64url of the claims) instead of the token,
  with ``EDGE_HEADER`` set to the secret Envoy and the gateway share
  (``%ENVIRONMENT(CALLSENSE_EDGE_SECRET)%``: the secret is in Envoy's environment, never in this file).
  Anything else (an API key, no credential, an expired or foreign token) passes untouched and without the
  payload: the gateway decides (a key is checked, a token that is not a key is a 401).
- **Browser sign-in with the identity provider** (OIDC, Envoy's ``oauth2`` filter, before ``jwt_authn``)
  when ``oidc_authorize_url`` and the rest are set (``OIDC_ENV``; the JWT settings too): a browser's page
  navigation (``Sec-Fetch-Mode: navigate``) without a session is redirected to the provider's login; its
  code comes back to ``OIDC_CALLBACK_PATH``, Envoy fetches the tokens (``OIDC_TOKEN_CLUSTER``), keeps them
  in HttpOnly cookies (encrypted and signed with the HMAC secret) and sends the browser on to the page it
  asked for; ``OIDC_SIGNOUT_PATH`` clears them. On every later request of that browser Envoy forwards the
  provider's ID token as ``ID_TOKEN_HEADER``, which ``jwt_authn`` validates like a Bearer JWT: the gateway
  gets its claims. API clients never see a redirect: a request with an ``Authorization`` header, the key
  sign-in page and its assets, a key session's cookie and the health checks pass untouched, and every other
  request that is not a navigation (``/v1/`` calls, gRPC, WebSocket upgrades) goes on without an identity
  when it has no valid session (the gateway answers 401) and with one when it has.

Both listeners remove a client's own ``JWT_PAYLOAD_HEADER`` and ``EDGE_HEADER`` before anything else looks
at the request (``early_header_mutation_extensions``: before routing and every filter, ``jwt_authn``
included), so neither can be forged through Envoy.

Both listeners normalise the path before routing (RFC 3986 dot segments and unreserved percent-escapes,
merged slashes, ``%2F``/``%5C`` unescaped) so that the path Envoy matches is the path the gateway acts on:
``/%6Detrics`` or ``//metrics`` is ``/metrics`` to both. Cross-origin calls (CORS) are refused unless
``cors_allow_origins`` names the origins (the bundled UI is same-origin and needs none).

Long calls must never be cut by a timeout: every route has ``timeout: 0s`` (Envoy's default of 15 s
would end a server stream 15 s after its request), and idle timeouts are long (an hour by default): a
live call moves audio every 50 ms, so they only reap streams whose peer vanished without closing.
HTTP/2 keepalive pings find those sooner on both sides.

The gateway clusters use ring-hash load balancing on the ``x-call-id`` header (or the ``call_id``
query parameter, which a browser WebSocket can set where it cannot set headers), so every request of
one call reaches the gateway replica that holds its CallSession.

The config is built as plain data shaped like Envoy's YAML (easier to read next to Envoy's docs than
the generated dataclasses) and parsed back into ``envoy-data-plane``'s ``Bootstrap`` before it is
written: a misspelt field or an unknown ``@type`` fails here, not when Envoy starts. ``envoy --mode
validate`` (the tests run it) checks what the schema cannot: values, required fields, filter order.

``python -m tools.envoy_config [PATH]`` writes the default layout to ``envoy/envoy.yaml``.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

from callsense.config import (
    EDGE_HEADER,
    EDGE_SECRET_ENV,
    JWT_PAYLOAD_HEADER,
    PREFIX,
    Config,
    ConfigError,
    split_host_port,
)

if TYPE_CHECKING:
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PATH = REPO_ROOT / "envoy" / "envoy.yaml"

Json = dict[str, Any]

_TYPE_PREFIX = "type.googleapis.com/"
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
_HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_HEALTH_EVENT_SINK = "envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink"
_LOCAL_RATE_LIMIT = "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
_RATE_LIMIT_FILTER = "envoy.filters.http.local_ratelimit"
_DOWNSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
_UPSTREAM_TLS = "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_JWT_AUTHN = "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
_JWT_FILTER = "envoy.filters.http.jwt_authn"
_EARLY_HEADER_MUTATION = "envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"
JWT_PROVIDER = "idp"
"""The name of the identity provider in ``jwt_authn``'s config (and its stats)."""
JWKS_CLUSTER = "jwt_jwks"
"""The cluster Envoy fetches a remote JWKS (``jwt_jwks_uri``) through."""
OIDC_TOKEN_CLUSTER = "oidc_token"
"""The cluster Envoy reaches the identity provider's token endpoint (``oidc_token_url``) through."""
OIDC_FILTER = "envoy.filters.http.oauth2"
_OAUTH2 = "envoy.extensions.filters.http.oauth2.v3.OAuth2"
OIDC_CALLBACK_PATH = "/oauth2/callback"
"""Where the provider sends a browser back with its code: register ``https://<host>/oauth2/callback``."""
OIDC_SIGNOUT_PATH = "/oauth2/signout"
"""Clears the browser's provider session cookies (Envoy's), then redirects to ``/``."""
ID_TOKEN_HEADER = "x-callsense-id-token"
"""The provider's ID token, forwarded by the oauth2 filter from a browser's session to ``jwt_authn``."""
OIDC_CLIENT_SECRET = "oidc_client_secret"
OIDC_HMAC_SECRET = "oidc_hmac_secret"
"""Names of the static generic secrets (read from their files) the oauth2 filter refers to."""
SESSION_COOKIE = "callsense_session"
"""The gateway's own session cookie of a key sign-in (gateway.auth.authenticator.SESSION_COOKIE)."""
PUBLIC_PAGE_PATHS = ("/signin", "/static/", "/docs", "/openapi.json")
"""The key sign-in page, the pages' assets and the API docs (public): never a redirect to the provider."""
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
"""Debian's (and the python:slim image's) CA bundle: what the JWKS host's certificate is checked against."""
IDENTITY_HEADERS = (JWT_PAYLOAD_HEADER, EDGE_HEADER)
"""Only Envoy may set them: a client's own are removed on every listener before any filter runs."""

CALL_ID_HEADER = "x-call-id"
CALL_ID_QUERY = "call_id"

# Headers a browser's gRPC-Web or REST client may send / read across origins.
_CORS_ALLOW_HEADERS = (
    "content-type,authorization,x-grpc-web,x-user-agent,grpc-timeout,x-call-id,x-request-id,"
    "traceparent,tracestate,baggage"
)
_CORS_EXPOSE_HEADERS = "grpc-status,grpc-message,grpc-status-details-bin,x-request-id,traceparent"

# On every answer of the public listener unless the gateway set the header itself (its pages' stricter
# Content-Security-Policy and the like win).
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
HSTS = ("strict-transport-security", "max-age=31536000")
"""Only with TLS: a browser that saw it over https never tries plain http on this host for a year."""

HEALTH_PATHS = ("/healthz", "/readyz")
"""Never rate limited: load balancers and `callsense up` poll them."""

# Environment variables MeshLayout.from_config reads (callsense.config's naming).
RATE_LIMIT_ENV = {
    "rate_limit_per_key": PREFIX + "RATE_LIMIT_PER_KEY",
    "rate_limit_per_key_burst": PREFIX + "RATE_LIMIT_PER_KEY_BURST",
    "rate_limit_per_ip": PREFIX + "RATE_LIMIT_PER_IP",
    "rate_limit_per_ip_burst": PREFIX + "RATE_LIMIT_PER_IP_BURST",
}
TLS_ENV = {"tls_cert": PREFIX + "TLS_CERT", "tls_key": PREFIX + "TLS_KEY"}
JWT_ENV = {
    "jwt_issuer": PREFIX + "JWT_ISSUER",
    "jwt_audiences": PREFIX + "JWT_AUDIENCES",
    "jwt_jwks_file": PREFIX + "JWT_JWKS_FILE",
    "jwt_jwks_uri": PREFIX + "JWT_JWKS_URI",
    "jwt_jwks_cache_s": PREFIX + "JWT_JWKS_CACHE_S",
    "jwt_jwks_ca": PREFIX + "JWT_JWKS_CA",
}
OIDC_ENV = {
    "oidc_authorize_url": PREFIX + "OIDC_AUTHORIZE_URL",
    "oidc_token_url": PREFIX + "OIDC_TOKEN_URL",
    "oidc_client_id": PREFIX + "OIDC_CLIENT_ID",
    "oidc_client_secret_file": PREFIX + "OIDC_CLIENT_SECRET_FILE",
    "oidc_hmac_secret_file": PREFIX + "OIDC_HMAC_SECRET_FILE",
    "oidc_scopes": PREFIX + "OIDC_SCOPES",
}
OIDC_DEFAULT_SCOPES = ("openid", "email", "profile")

_ACCESS_LOG_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    "%RESPONSE_FLAGS% grpc=%GRPC_STATUS% %DURATION%ms upstream=%UPSTREAM_HOST% "
    "call=%REQ(X-CALL-ID)% request=%REQ(X-REQUEST-ID)%\n"
)


@dataclass(frozen=True)
class MeshLayout:
    """Where Envoy listens and the replicas ("host:port") behind each upstream cluster."""

    listener_port: int = 8080
    """The public listener: the public API only."""
    admin_port: int = 9901
    listener_host: str = "0.0.0.0"
    internal_port: int = 8081
    """The internal listener: the services by authority or path, /metrics, and the public routes."""
    internal_host: str = "127.0.0.1"
    """Loopback by default (the gateway runs on the same host under ``callsense up``); in a cluster
    "0.0.0.0", reachable inside the cluster network only (a ClusterIP Service, never the public one)."""
    admin_host: str = "127.0.0.1"
    """The admin API can stop Envoy and dump its config: never expose it beyond the host by default."""
    gateway_http: Sequence[str] = ("127.0.0.1:8000",)
    gateway_grpc: Sequence[str] = ("127.0.0.1:50050",)
    asr: Sequence[str] = ("127.0.0.1:50051",)
    chopper: Sequence[str] = ("127.0.0.1:50052",)
    scorer: Sequence[str] = ("127.0.0.1:50053",)
    postcall: Sequence[str] = ("127.0.0.1:50054",)
    otlp_endpoint: str | None = None
    """An OpenTelemetry collector's OTLP/gRPC "host:port" (an http:// prefix is dropped); None: no tracing.
    Plaintext HTTP/2 only: a TLS collector needs a transport_socket on its cluster."""
    trace_sampling_percent: float = 100.0
    """Share of requests without a caller's trace decision that Envoy traces (a caller's traceparent wins)."""
    stream_idle_timeout_s: int = 3600
    """How long a stream may move no bytes at all before Envoy resets it (0 disables the timeout)."""
    health_check_interval_s: float = 5.0
    cors_allow_origins: Sequence[str] = ()
    """Origins allowed to call across origins (gRPC-Web, REST), e.g. "https://app.example"; "*" any (only
    when asked for). Empty, the default: same-origin only, which is all the bundled UI needs."""
    access_log: bool = True
    max_concurrent_streams: int = 10_000
    """Per-cluster circuit-breaker limits; Envoy's default of 1024 would cap live calls at about 1000."""
    max_downstream_connections: int = 50_000
    """Beyond this Envoy refuses new connections instead of running out of file descriptors."""
    service_name: str = "envoy"
    rate_limit_per_key: float = 50.0
    """Requests per second one API key (one ``authorization`` header value) may send to the public listener,
    on average; 0: no per-key limit. A WebSocket call or a gRPC stream is one request, its messages none."""
    rate_limit_per_key_burst: int = 100
    """How many requests a key may send at once before the average applies (the bucket's size)."""
    rate_limit_per_ip: float = 20.0
    """Requests per second of one client address without a key (sign-in, pages, Twilio streams); 0: none."""
    rate_limit_per_ip_burst: int = 40
    rate_limit_tracked: int = 10_000
    """Buckets Envoy keeps of each kind (keys; addresses), the least recently used dropped beyond it (a
    dropped one starts full again): memory stays bounded however many keys or addresses come."""
    tls_cert: str | None = None
    """PEM certificate chain of the public listener (with ``tls_key``); None: plaintext."""
    tls_key: str | None = None
    """PEM private key of ``tls_cert``."""
    jwt_issuer: str | None = None
    """The identity provider's ``iss`` (e.g. "https://login.example.com/"); None: no JWT validation, API keys
    only. With it: ``jwt_audiences`` and one of ``jwt_jwks_file`` / ``jwt_jwks_uri``."""
    jwt_audiences: Sequence[str] = ()
    """The ``aud`` values accepted (callsense's client id at the provider): a token the provider issued for
    another application does not open callsense."""
    jwt_jwks_file: str | None = None
    """A local JWKS (JSON) file of the provider's public keys, read when Envoy starts."""
    jwt_jwks_uri: str | None = None
    """The provider's JWKS URL (``jwks_uri`` of its OIDC discovery document), https (http only to a
    loopback host: a local test provider); fetched when Envoy starts and every ``jwt_jwks_cache_s``."""
    jwt_jwks_cache_s: int = 600
    jwt_jwks_ca: str = SYSTEM_CA_BUNDLE
    """PEM CA bundle the JWKS host's certificate must chain to (its name is checked too); the token
    endpoint's (``oidc_token_url``) as well: both are the identity provider's."""
    oidc_authorize_url: str | None = None
    """The provider's ``authorization_endpoint`` (OIDC discovery): where a browser without a session is
    sent to sign in; None: browsers sign in with a key only. With it: every ``oidc_*`` setting, and the JWT
    settings, with ``oidc_client_id`` among ``jwt_audiences``."""
    oidc_token_url: str | None = None
    """The provider's ``token_endpoint``; https (http only to a loopback host), like ``jwt_jwks_uri``."""
    oidc_client_id: str | None = None
    """callsense's client id at the provider (the ``aud`` of the ID tokens it issues for callsense)."""
    oidc_client_secret_file: str | None = None
    """A file holding the client's secret (its bytes as they are: no trailing newline), read when Envoy
    starts; sent to the token endpoint with HTTP Basic authentication."""
    oidc_hmac_secret_file: str | None = None
    """A file holding the secret Envoy signs and encrypts its session cookies with (``callsense up`` makes
    one per data directory); a new one ends every browser's session."""
    oidc_scopes: Sequence[str] = OIDC_DEFAULT_SCOPES
    """The scopes asked for; "openid" among them (without it there is no ID token)."""

    def __post_init__(self) -> None:
        # Lists are accepted for convenience; tuples keep the layout hashable and immutable.
        for name in _CLUSTER_FIELDS:
            endpoints = tuple(getattr(self, name))
            if not endpoints:
                raise ValueError(f"MeshLayout.{name}: at least one endpoint is needed")
            for endpoint in endpoints:
                split_host_port(endpoint)
            object.__setattr__(self, name, endpoints)
        object.__setattr__(self, "cors_allow_origins", tuple(self.cors_allow_origins))
        ports = {"listener_port": self.listener_port, "internal_port": self.internal_port}
        ports["admin_port"] = self.admin_port
        if len(set(ports.values())) < len(ports):
            raise ValueError(f"MeshLayout: the public, internal and admin ports must differ: {ports}")
        for kind in ("key", "ip"):
            rate, burst = (
                getattr(self, f"rate_limit_per_{kind}"),
                getattr(self, f"rate_limit_per_{kind}_burst"),
            )
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"MeshLayout.rate_limit_per_{kind}: {rate} is not a rate >= 0 (0: no limit)")
            if rate and burst < 1:
                raise ValueError(f"MeshLayout.rate_limit_per_{kind}_burst: {burst} must be at least 1")
        if self.rate_limit_tracked < 1:
            raise ValueError(f"MeshLayout.rate_limit_tracked: {self.rate_limit_tracked} must be at least 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("MeshLayout: tls_cert and tls_key go together (both, or neither for plaintext)")
        self._check_jwt()
        self._check_oidc()

    def _check_jwt(self) -> None:
        audiences = tuple(a.strip() for a in self.jwt_audiences if a.strip())
        object.__setattr__(self, "jwt_audiences", audiences)
        if not self.jwt_issuer:
            if audiences or self.jwt_jwks_file or self.jwt_jwks_uri:
                raise ValueError("MeshLayout: JWT settings without jwt_issuer (CALLSENSE_JWT_ISSUER)")
            return
        if not audiences:
            raise ValueError(
                "MeshLayout.jwt_audiences: at least one (CALLSENSE_JWT_AUDIENCES, callsense's client id at "
                "the identity provider): without it a token issued for any application would do"
            )
        if (self.jwt_jwks_file is None) == (self.jwt_jwks_uri is None):
            raise ValueError(
                "MeshLayout: one of jwt_jwks_file and jwt_jwks_uri (CALLSENSE_JWT_JWKS_FILE or _URI) with "
                "jwt_issuer"
            )
        if self.jwt_jwks_uri is not None:
            _jwks_host(self.jwt_jwks_uri)  # raises ValueError on a URL Envoy could not fetch safely
        if self.jwt_jwks_cache_s < 1:
            raise ValueError(f"MeshLayout.jwt_jwks_cache_s: {self.jwt_jwks_cache_s} must be at least 1")

    def _check_oidc(self) -> None:
        scopes = tuple(s.strip() for s in self.oidc_scopes if s.strip())
        object.__setattr__(self, "oidc_scopes", scopes)
        names = [name for name in OIDC_ENV if name != "oidc_scopes"]
        missing = [name for name in names if not getattr(self, name)]
        if len(missing) == len(names):
            if scopes != OIDC_DEFAULT_SCOPES:
                raise ValueError(
                    f"MeshLayout.oidc_scopes ({OIDC_ENV['oidc_scopes']}) without oidc_authorize_url "
                    f"({OIDC_ENV['oidc_authorize_url']})"
                )
            return
        if missing:
            named = ", ".join(f"{name} ({OIDC_ENV[name]})" for name in missing)
            raise ValueError(f"MeshLayout: browser sign-in with the identity provider also needs {named}")
        if not self.jwt:
            raise ValueError(
                f"MeshLayout: browser sign-in with the identity provider ({OIDC_ENV['oidc_authorize_url']}) "
                "needs the JWT settings too (CALLSENSE_JWT_ISSUER, _AUDIENCES, _JWKS_URI or _JWKS_FILE): "
                "the ID token Envoy forwards is validated by jwt_authn"
            )
        if self.oidc_client_id not in self.jwt_audiences:
            raise ValueError(
                f"MeshLayout.oidc_client_id {self.oidc_client_id!r} ({OIDC_ENV['oidc_client_id']}) must be "
                "one of jwt_audiences (CALLSENSE_JWT_AUDIENCES): the ID tokens the provider issues for "
                "callsense name it as their audience"
            )
        if "openid" not in scopes:
            raise ValueError(
                f"MeshLayout.oidc_scopes ({OIDC_ENV['oidc_scopes']}): {' '.join(scopes)!r} lacks 'openid' "
                "(without it the provider issues no ID token)"
            )
        assert self.oidc_authorize_url is not None and self.oidc_token_url is not None
        _idp_host(self.oidc_authorize_url, "oidc_authorize_url", "a browser's sign-in")
        _idp_host(self.oidc_token_url, "oidc_token_url", "the codes and tokens that sign a user in")

    @property
    def oidc(self) -> bool:
        """Whether browsers sign in with the identity provider at the edge (Envoy's oauth2 filter)."""
        return bool(self.oidc_authorize_url)

    @property
    def jwt(self) -> bool:
        """Whether the public listener validates JWTs of an identity provider."""
        return bool(self.jwt_issuer)

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def rate_limited(self) -> bool:
        return bool(self.rate_limit_per_key or self.rate_limit_per_ip)

    @classmethod
    def from_config(
        cls, config: Config, *, env: Mapping[str, str] | None = None, **overrides: Any
    ) -> MeshLayout:
        """The layout for a ``callsense.config.Config`` (one replica each unless ``overrides`` add more).

        The OTLP endpoint is the one the services export to (``OTEL_EXPORTER_OTLP_ENDPOINT``), so Envoy's
        spans land in the same collector as theirs. The edge settings come from ``RATE_LIMIT_ENV`` and
        ``TLS_ENV``, ``JWT_ENV`` and ``OIDC_ENV`` (``CALLSENSE_RATE_LIMIT_PER_KEY``, ``CALLSENSE_TLS_CERT``,
        ``CALLSENSE_JWT_ISSUER``, ``CALLSENSE_OIDC_AUTHORIZE_URL``, ...) where set; ``overrides`` win over
        them.
        """
        env = os.environ if env is None else env
        edge: dict[str, Any] = {}
        for name, variable in RATE_LIMIT_ENV.items():
            if text := env.get(variable, "").strip():
                edge[name] = _env_number(variable, text, float if name.endswith(("_key", "_ip")) else int)
        for name, variable in TLS_ENV.items():
            if text := env.get(variable, "").strip():
                edge[name] = text
        for name, variable in JWT_ENV.items():
            if text := env.get(variable, "").strip():
                if name == "jwt_audiences":
                    edge[name] = tuple(a.strip() for a in text.split(",") if a.strip())
                elif name == "jwt_jwks_cache_s":
                    edge[name] = int(_env_number(variable, text, int))
                else:
                    edge[name] = text
        for name, variable in OIDC_ENV.items():
            if text := env.get(variable, "").strip():
                # Scopes as the provider's docs write them: "openid email profile" (or comma-separated).
                edge[name] = tuple(text.replace(",", " ").split()) if name == "oidc_scopes" else text
        layout = cls(
            listener_port=config.envoy_port,
            internal_port=config.envoy_internal_port,
            admin_port=config.envoy_admin_port,
            gateway_http=(config.gateway_http,),
            gateway_grpc=(config.gateway_grpc,),
            asr=(config.asr_addr,),
            chopper=(config.chopper_addr,),
            scorer=(config.scorer_addr,),
            postcall=(config.postcall_addr,),
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
        )
        try:
            return replace(layout, **(edge | overrides))
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _env_number(variable: str, text: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise ConfigError(f"{variable}: {text!r} is not a number") from None


_CLUSTER_FIELDS = ("gateway_http", "gateway_grpc", "asr", "chopper", "scorer", "postcall")


def _jwks_host(uri: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a JWKS URL; ValueError unless https (or http to a loopback host)."""
    return _idp_host(uri, "jwt_jwks_uri", "the keys that decide who may sign in")


def _idp_host(uri: str, name: str, what: str) -> tuple[str, str, int]:
    """(scheme, host, port) of the identity provider's URL ``name``; ValueError unless https (or http to a
    loopback host: a local test provider), the message saying that ``what`` must not go in the clear."""
    variable = {**JWT_ENV, **OIDC_ENV}[name]
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"MeshLayout.{name} ({variable}): {uri!r} is not a URL: {e}") from None
    host = parts.hostname or ""
    if parts.scheme not in ("https", "http") or not host:
        raise ValueError(f"MeshLayout.{name} ({variable}): {uri!r} is not an https:// URL")
    if parts.scheme == "http" and not (
        host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)
    ):
        raise ValueError(
            f"MeshLayout.{name} ({variable}): {uri!r}: {what} must go over https (plain http only to a "
            "loopback host)"
        )
    return parts.scheme, host, port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True)
class _Upstream:
    name: str
    grpc: bool
    pinned: bool
    """Pinned clusters hash on the call id (ring hash); the stateless services take least-request."""


_UPSTREAMS = (
    _Upstream("gateway_http", grpc=False, pinned=True),
    _Upstream("gateway_grpc", grpc=True, pinned=True),
    _Upstream("asr", grpc=True, pinned=False),
    _Upstream("chopper", grpc=True, pinned=False),
    _Upstream("scorer", grpc=True, pinned=False),
    _Upstream("postcall", grpc=True, pinned=False),
)


@dataclass(frozen=True)
class _Rule:
    """One route: a match (Envoy's ``RouteMatch``) and the cluster it goes to, or None: Envoy answers 404
    itself and no upstream ever sees the request."""

    name: str
    match: Json
    cluster: str | None
    unlimited: bool = False
    """Exempt from the public listener's rate limits (health checks)."""


def _prefix(prefix: str, cluster: str) -> _Rule:
    return _Rule(cluster if prefix == "/" else prefix.strip("/."), {"prefix": prefix}, cluster)


_SENTIMENT = _prefix("/callsense.v1.Sentiment/", "gateway_grpc")
_GRPC_COMMON = (
    _prefix("/grpc.health.v1.Health/", "gateway_grpc"),
    _prefix("/grpc.reflection.", "gateway_grpc"),  # v1alpha and v1 ServerReflection
)
_CATCH_ALL = _prefix("/", "gateway_http")

# Public listener, first match wins. Every callsense service but Sentiment is internal: its whole package
# prefix is refused (case-insensitively), so a service added later is not public by accident.
_PUBLIC_RULES: tuple[_Rule, ...] = (
    _SENTIMENT,
    _Rule("internal_services_refused", {"prefix": "/callsense.v1.", "case_sensitive": False}, None),
    *_GRPC_COMMON,
    _Rule("operator_only_refused", {"path_separated_prefix": "/metrics", "case_sensitive": False}, None),
    *(_Rule(path.strip("/"), {"path": path}, "gateway_http", unlimited=True) for path in HEALTH_PATHS),
    _CATCH_ALL,
)

# Internal listener, any authority but a service's name: the public API, the internal services by path
# (backend teams may call them directly from inside the network), and the rest (/metrics too) by the
# catch-all.
_INTERNAL_RULES: tuple[_Rule, ...] = (
    _SENTIMENT,
    _prefix("/callsense.v1.Scorer/", "scorer"),
    _prefix("/callsense.v1.Chopper/", "chopper"),
    _prefix("/callsense.v1.Asr/", "asr"),
    _prefix("/callsense.v1.PostCall/", "postcall"),
    *_GRPC_COMMON,
    _CATCH_ALL,
)

# Internal callers (the gateway) reach a service through Envoy's internal listener by naming it as the
# HTTP/2 authority: every path, health checks and reflection included, then goes to that service.
_INTERNAL_SERVICES: tuple[str, ...] = ("chopper", "scorer", "asr", "postcall")

_OTEL_CLUSTER = "opentelemetry_collector"


def _duration(seconds: float) -> str:
    # Proto JSON durations: whole seconds print as "5s", fractions as "0.250s".
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:.3f}s"


def _typed(type_name: str, **fields: Any) -> Json:
    return {"@type": _TYPE_PREFIX + type_name, **fields}


def _socket_address(host: str, port: int) -> Json:
    return {"socket_address": {"address": host, "port_value": port}}


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _endpoint(addr: str) -> tuple[str, int]:
    host, port = split_host_port(addr)
    return host.strip("[]"), port


def _load_assignment(name: str, endpoints: Sequence[str]) -> Json:
    lb_endpoints = [{"endpoint": {"address": _socket_address(*_endpoint(e))}} for e in endpoints]
    return {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]}


def _discovery(endpoints: Sequence[str]) -> Json:
    # STATIC needs IP literals; service names (Kubernetes, Compose) are resolved and re-resolved by DNS.
    if all(_is_ip(_endpoint(e)[0]) for e in endpoints):
        return {"type": "STATIC"}
    return {"type": "STRICT_DNS", "dns_lookup_family": "V4_PREFERRED"}


def _http2_options() -> Json:
    # Pings find a dead upstream (or a half-open NAT path) long before an idle timeout would.
    return {
        "http2_protocol_options": {"connection_keepalive": {"interval": "30s", "timeout": "10s"}},
    }


def _health_check(upstream: _Upstream, layout: MeshLayout) -> Json:
    check: Json = {
        "timeout": "1s",
        "interval": _duration(layout.health_check_interval_s),
        # Without traffic Envoy would probe only every 60 s: a replica that just started would wait.
        "no_traffic_interval": _duration(layout.health_check_interval_s),
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        # Ejections and returns go to Envoy's stderr (the supervisor's log): which replica, and when.
        "event_logger": [
            {
                "name": "envoy.health_check.event_sinks.file",
                "typed_config": _typed(_HEALTH_EVENT_SINK, event_log_path="/dev/stderr"),
            }
        ],
    }
    if upstream.grpc:
        check["grpc_health_check"] = {}  # service "": the server as a whole (grpc_runtime flips it on drain)
    else:
        check["http_health_check"] = {"path": "/healthz"}
    return check


def _cluster(upstream: _Upstream, layout: MeshLayout) -> Json:
    endpoints: Sequence[str] = getattr(layout, upstream.name)
    limit = layout.max_concurrent_streams
    cluster: Json = {
        "name": upstream.name,
        **_discovery(endpoints),
        "connect_timeout": "1s",
        "lb_policy": "RING_HASH" if upstream.pinned else "LEAST_REQUEST",
        "load_assignment": _load_assignment(upstream.name, endpoints),
        "health_checks": [_health_check(upstream, layout)],
        "circuit_breakers": {
            "thresholds": [{"max_connections": limit, "max_pending_requests": limit, "max_requests": limit}]
        },
    }
    if upstream.grpc:
        options = _typed(_HTTP_PROTOCOL_OPTIONS, explicit_http_config=_http2_options())
        cluster["typed_extension_protocol_options"] = {_HTTP_PROTOCOL_OPTIONS: options}
    return cluster


def _jwks_cluster(layout: MeshLayout) -> Json:
    """The identity provider's JWKS host, over TLS checked against ``jwt_jwks_ca`` for that very name."""
    assert layout.jwt_jwks_uri is not None
    return _idp_cluster(JWKS_CLUSTER, _jwks_host(layout.jwt_jwks_uri), layout.jwt_jwks_ca)


def _oidc_token_cluster(layout: MeshLayout) -> Json:
    """The provider's token endpoint host: the same rules as the JWKS host's."""
    assert layout.oidc_token_url is not None
    where = _idp_host(layout.oidc_token_url, "oidc_token_url", "the codes and tokens that sign a user in")
    return _idp_cluster(OIDC_TOKEN_CLUSTER, where, layout.jwt_jwks_ca)


def _idp_cluster(name: str, where: tuple[str, str, int], ca: str) -> Json:
    """A host of the identity provider, over TLS checked against ``ca`` for that very name (plain only for a
    loopback host, which ``_idp_host`` allowed)."""
    scheme, host, port = where
    cluster: Json = {
        "name": name,
        # One name, re-resolved by DNS (a provider's many addresses behind it: LOGICAL_DNS, as Envoy advises).
        **(
            {"type": "STATIC"}
            if _is_ip(host)
            else {"type": "LOGICAL_DNS", "dns_lookup_family": "V4_PREFERRED"}
        ),
        "connect_timeout": "5s",
        "load_assignment": _load_assignment(name, [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]),
    }
    if scheme == "https":
        san = {"san_type": "IP_ADDRESS" if _is_ip(host) else "DNS", "matcher": {"exact": host}}
        context = _typed(
            _UPSTREAM_TLS,
            sni=host,
            common_tls_context={
                "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                "validation_context": {
                    "trusted_ca": {"filename": ca},
                    "match_typed_subject_alt_names": [san],
                },
            },
        )
        cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": context}
    return cluster


def _otel_cluster(endpoint: str) -> Json:
    # OTEL_EXPORTER_OTLP_ENDPOINT is a URL ("http://otel:4317"); Envoy wants the host and port.
    address = endpoint.split("://", 1)[-1].rstrip("/")
    options = _typed(_HTTP_PROTOCOL_OPTIONS, explicit_http_config={"http2_protocol_options": {}})
    return {
        "name": _OTEL_CLUSTER,
        **_discovery([address]),
        "connect_timeout": "1s",
        "load_assignment": _load_assignment(_OTEL_CLUSTER, [address]),
        "typed_extension_protocol_options": {_HTTP_PROTOCOL_OPTIONS: options},
    }


def _hash_policy() -> list[Json]:
    # Both are hashed when both are present; a request with neither gets any replica (no session yet).
    return [
        {"header": {"header_name": CALL_ID_HEADER}},
        {"query_parameter": {"name": CALL_ID_QUERY}},
    ]


def _route(rule: _Rule, layout: MeshLayout) -> Json:
    if rule.cluster is None:
        # A gRPC caller gets a trailers-only reply with grpc-status UNIMPLEMENTED (Envoy maps the 404).
        return {
            "name": rule.name,
            "match": dict(rule.match),
            "direct_response": {"status": 404, "body": {"inline_string": "not found"}},
        }
    action: Json = {
        "cluster": rule.cluster,
        "timeout": "0s",  # no limit: a call lasts as long as it lasts
        "idle_timeout": _duration(layout.stream_idle_timeout_s),
    }
    if rule.cluster.startswith("gateway_"):
        action["hash_policy"] = _hash_policy()
    if rule.cluster != "gateway_http":
        # Let a gRPC client's own deadline (grpc-timeout header) bound its call, with no cap of ours.
        action["max_stream_duration"] = {"grpc_timeout_header_max": "0s"}
    route: Json = {"name": rule.name, "match": dict(rule.match), "route": action}
    if rule.unlimited and layout.rate_limited:
        # Taken out of the filter chain for this route: its requests neither spend nor need a token.
        disabled = _typed("envoy.config.route.v3.FilterConfig", disabled=True)
        route["typed_per_filter_config"] = {_RATE_LIMIT_FILTER: disabled}
    return route


def _cors_policy(layout: MeshLayout) -> Json:
    origins = [
        {"safe_regex": {"regex": ".*"}} if o == "*" else {"exact": o} for o in layout.cors_allow_origins
    ]
    return _typed(
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        allow_origin_string_match=origins,
        allow_methods="GET,POST,PUT,DELETE,OPTIONS",
        allow_headers=_CORS_ALLOW_HEADERS,
        expose_headers=_CORS_EXPOSE_HEADERS,
        max_age="86400",
    )


def _catch_all_host(rules: Sequence[_Rule], layout: MeshLayout) -> Json:
    virtual_host: Json = {
        "name": "callsense",
        "domains": ["*"],
        "routes": [_route(rule, layout) for rule in rules],
    }
    if layout.cors_allow_origins:
        virtual_host["typed_per_filter_config"] = {"envoy.filters.http.cors": _cors_policy(layout)}
    return virtual_host


def _security_headers(layout: MeshLayout) -> list[Json]:
    headers = [*SECURITY_HEADERS, HSTS] if layout.tls else list(SECURITY_HEADERS)
    # ADD_IF_ABSENT: a header the gateway set (a page's own, stricter policy) is left as it is.
    return [{"header": {"key": k, "value": v}, "append_action": "ADD_IF_ABSENT"} for k, v in headers]


def _public_route_config(layout: MeshLayout) -> Json:
    # One virtual host for every authority: naming a service as the authority changes nothing here.
    host = _catch_all_host(_PUBLIC_RULES, layout)
    host["response_headers_to_add"] = _security_headers(layout)
    config: Json = {"name": "public", "virtual_hosts": [host]}
    if layout.jwt:
        # The gateway believes JWT_PAYLOAD_HEADER only next to this secret: a request that reached it some
        # other way than through this listener carries no identity. Envoy reads the secret from its own
        # environment when it starts ("-" when unset, which the gateway never accepts).
        edge = {"key": EDGE_HEADER, "value": f"%ENVIRONMENT({EDGE_SECRET_ENV})%"}
        config["request_headers_to_add"] = [{"header": edge, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    return config


def _internal_route_config(layout: MeshLayout) -> Json:
    by_authority = [
        {
            "name": service,
            "domains": [service, f"{service}:*"],
            "routes": [_route(_prefix("/", service), layout)],
        }
        for service in _INTERNAL_SERVICES
    ]
    return {"name": "internal", "virtual_hosts": [*by_authority, _catch_all_host(_INTERNAL_RULES, layout)]}


def _token_bucket(rate: float, burst: int) -> Json:
    # Envoy's bucket refills tokens_per_fill every fill_interval: 50/s is 50 per 1 s, 0.1/s is 1 per 10 s.
    fraction = Fraction(rate).limit_denominator(1000)
    return {
        "max_tokens": burst,
        "tokens_per_fill": fraction.numerator,
        "fill_interval": _duration(fraction.denominator),
    }


def _local_rate_limit(layout: MeshLayout) -> Json:
    """One bucket per API key and one per client address without a key: dynamic descriptors (an entry
    without a value) give every distinct value its own bucket, kept in an LRU of ``rate_limit_tracked``."""
    rate_limits: list[Json] = []
    descriptors: list[Json] = []
    if layout.rate_limit_per_key:
        # ("api_key", <the authorization header>): absent header, no descriptor, no per-key bucket.
        action = {"request_headers": {"header_name": "authorization", "descriptor_key": "api_key"}}
        rate_limits.append({"actions": [action]})
        descriptors.append(
            {
                "entries": [{"key": "api_key"}],
                "token_bucket": _token_bucket(layout.rate_limit_per_key, layout.rate_limit_per_key_burst),
            }
        )
    if layout.rate_limit_per_ip:
        # ("authorization", "absent"), ("remote_address", <the peer>): only requests without a key. The
        # address is the connection's peer (use_remote_address), never a client's own x-forwarded-for.
        without_key = {
            "descriptor_key": "authorization",
            "descriptor_value": "absent",
            "expect_match": False,
            "headers": [{"name": "authorization", "present_match": True}],
        }
        rate_limits.append({"actions": [{"header_value_match": without_key}, {"remote_address": {}}]})
        descriptors.append(
            {
                "entries": [{"key": "authorization", "value": "absent"}, {"key": "remote_address"}],
                "token_bucket": _token_bucket(layout.rate_limit_per_ip, layout.rate_limit_per_ip_burst),
            }
        )
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return _typed(
        _LOCAL_RATE_LIMIT,
        stat_prefix="public_rate_limit",  # http_local_rate_limit.public_rate_limit.* in Envoy's stats
        # No default bucket: a request that matches no descriptor is not limited.
        filter_enabled={**always, "runtime_key": "public_rate_limit.enabled"},
        filter_enforced={**always, "runtime_key": "public_rate_limit.enforced"},
        rate_limits=rate_limits,
        descriptors=descriptors,
        max_dynamic_descriptors=layout.rate_limit_tracked,
        rate_limited_as_resource_exhausted=True,  # gRPC: RESOURCE_EXHAUSTED rather than UNAVAILABLE (retry)
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )


def _remote_jwks(layout: MeshLayout) -> Json:
    assert layout.jwt_jwks_uri is not None
    return {
        "http_uri": {"uri": layout.jwt_jwks_uri, "cluster": JWKS_CLUSTER, "timeout": "5s"},
        "cache_duration": _duration(layout.jwt_jwks_cache_s),
        # Fetched when Envoy starts (the listener opens once the first fetch has answered or failed) and
        # again before the cache runs out, never on a request's path; a failed fetch is tried again every
        # second, and until one succeeds every token fails (passes to the gateway without its claims: 401).
        "async_fetch": {},
        "retry_policy": {
            "num_retries": 3,
            "retry_back_off": {"base_interval": "0.500s", "max_interval": "5s"},
        },
    }


def _jwt_authn(layout: MeshLayout) -> Json:
    """Validate a Bearer JWT of the identity provider and hand its claims to the gateway; never refuse."""
    provider: Json = {
        "issuer": layout.jwt_issuer,
        "audiences": list(layout.jwt_audiences),
        "require_expiration": True,  # a token that never expires is not accepted
        # Only the Authorization header (never an access_token query parameter: URLs end up in logs), and
        # with browser sign-in the ID token the oauth2 filter forwards from a browser's session. (A client
        # may send that header itself: it is one more place for a token jwt_authn checks, no more.)
        "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}]
        + ([{"name": ID_TOKEN_HEADER}] if layout.oidc else []),
        # forward is false: a valid token is taken off the request; the gateway gets its claims instead.
        "forward_payload_header": JWT_PAYLOAD_HEADER,
    }
    if layout.jwt_jwks_file is not None:
        provider["local_jwks"] = {"filename": layout.jwt_jwks_file}
    else:
        provider["remote_jwks"] = _remote_jwks(layout)
    # A valid token, or else anything at all: an API key (not a JWT), no credential, a bad token pass
    # untouched and without the payload header, and the gateway decides (401 for what is not a key).
    requirement = {
        "requires_any": {"requirements": [{"provider_name": JWT_PROVIDER}, {"allow_missing_or_failed": {}}]}
    }
    return _typed(
        _JWT_AUTHN,
        providers={JWT_PROVIDER: provider},
        rules=[{"match": {"prefix": "/"}, "requires": requirement}],
        bypass_cors_preflight=True,
        stat_prefix=JWT_PROVIDER,  # http.public.jwt_authn.idp.* in Envoy's stats
    )


def _oidc_matchers() -> tuple[list[Json], list[Json]]:
    """(pass_through_matcher, allow_failed_matcher) of the oauth2 filter: what never meets it, and what is
    never redirected to the provider (it goes on without an identity when its session is missing or bad)."""

    def path_prefix(prefix: str) -> Json:
        # :path carries the query ("/signin?next=..."): a prefix, never an exact match. A pass-through too
        # wide costs nothing: such a request reaches the gateway without an identity, which decides.
        return {"name": ":path", "string_match": {"prefix": prefix}}

    pass_through: list[Json] = [
        # An API client's key or token: the oauth2 filter would drop the header and put the session's on.
        {"name": "authorization", "present_match": True},
        # A browser signed in with a key: its session cookie is the gateway's to check.
        {"name": "cookie", "string_match": {"contains": f"{SESSION_COOKIE}="}},
        *(path_prefix(path) for path in (*HEALTH_PATHS, *PUBLIC_PAGE_PATHS)),
    ]
    allow_failed = [
        # Only a browser's page navigation is sent to the provider: anything else without a session (a
        # page script's fetch, a WebSocket upgrade, gRPC, curl) goes on to the gateway, which answers 401
        # in its own shape; never a 302 to an HTML login an API client cannot follow. Browsers send
        # Sec-Fetch-Mode since Chrome 76, Firefox 90 and Safari 16.4; an older one is never sent to the
        # provider (it gets the gateway's /signin, with a key).
        {
            "name": "sec-fetch-mode",
            "string_match": {"exact": "navigate"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        },
        # Nor the API, even typed into the address bar.
        path_prefix("/v1/"),
    ]
    return pass_through, allow_failed


def _oauth2(layout: MeshLayout) -> Json:
    """Browser sign-in with the identity provider (OIDC authorization code flow, run by Envoy)."""
    pass_through, allow_failed = _oidc_matchers()
    # SameSite=Lax, not Strict: the provider sends the browser back to the callback from its own site, and
    # a Strict nonce or PKCE cookie would not come with that navigation (the sign-in fails); the session's
    # cookies set there would not come with the redirect on to the page either (Strict cookies skip a chain
    # that began on another site: the page would send the browser to the provider again, in a loop). Lax
    # still keeps them off other sites' POSTs, frames and scripts' requests (cross-site request forgery),
    # while a GET of a page from a link elsewhere is signed in. Envoy marks them HttpOnly and Secure itself
    # (browsers send them back over https only, and to http://localhost): browser sign-in needs TLS.
    cookies = (
        "bearer_token",
        "oauth_hmac",
        "oauth_expires",
        "id_token",
        "refresh_token",
        "oauth_nonce",
        "code_verifier",
    )
    config = {
        "token_endpoint": {"cluster": OIDC_TOKEN_CLUSTER, "uri": layout.oidc_token_url, "timeout": "5s"},
        "authorization_endpoint": layout.oidc_authorize_url,
        "credentials": {
            "client_id": layout.oidc_client_id,
            "token_secret": {"name": OIDC_CLIENT_SECRET},
            "hmac_secret": {"name": OIDC_HMAC_SECRET},
        },
        # The scheme the browser used (use_remote_address: Envoy's own connection's), the host it asked for.
        "redirect_uri": f"%REQ(x-forwarded-proto)%://%REQ(:authority)%{OIDC_CALLBACK_PATH}",
        "redirect_path_matcher": {"path": {"exact": OIDC_CALLBACK_PATH}},
        "signout_path": {"path": {"exact": OIDC_SIGNOUT_PATH}},
        # The ID token, not the access token (forward_bearer_token): OIDC makes it a JWT signed by the
        # provider with callsense's client id as its audience, which jwt_authn can check; an access token is
        # opaque at many providers, or a JWT for another audience (an API's). Not into Authorization: Envoy
        # refuses that next to a pass-through on it, and the rate limit keys on that header.
        "forward_id_token": {"header": ID_TOKEN_HEADER},
        "auth_scopes": list(layout.oidc_scopes),
        # RFC 6749 2.3.1: every provider must take the client's credentials this way.
        "auth_type": "BASIC_AUTH",
        # A refresh answer need not carry a new ID token (OIDC Core 12.2), and the ID token is what the
        # gateway believes: the session lasts as long as its ID token, then a page navigation goes by the
        # provider again (without a prompt while the provider's own session lives).
        "use_refresh_token": False,
        "pass_through_matcher": pass_through,
        "allow_failed_matcher": allow_failed,
        "cookie_configs": {f"{name}_cookie_config": {"same_site": "LAX"} for name in cookies},
        "stat_prefix": "oidc",  # added to the filter's stats' names (oauth_success, oauth_failure, ...)
    }
    return _typed(_OAUTH2, config=config)


def _oidc_secrets(layout: MeshLayout) -> list[Json]:
    """The oauth2 filter's secrets, read from their files when Envoy starts (generic secrets of the
    bootstrap, which the filter's SdsSecretConfig names): never in this file."""
    files = {
        OIDC_CLIENT_SECRET: layout.oidc_client_secret_file,
        OIDC_HMAC_SECRET: layout.oidc_hmac_secret_file,
    }
    return [{"name": name, "generic_secret": {"secret": {"filename": path}}} for name, path in files.items()]


def _http_filters(layout: MeshLayout, *, public: bool) -> list[Json]:
    filters: list[Json] = [
        # gRPC-Web -> gRPC before routing, so browsers reach the same gRPC routes as native clients.
        {
            "name": "envoy.filters.http.grpc_web",
            "typed_config": _typed("envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"),
        },
        # CORS before the rate limit: a browser's preflight is answered here and spends no token.
        {
            "name": "envoy.filters.http.cors",
            "typed_config": _typed("envoy.extensions.filters.http.cors.v3.Cors"),
        },
    ]
    if public and layout.rate_limited:
        filters.append({"name": _RATE_LIMIT_FILTER, "typed_config": _local_rate_limit(layout)})
    if public and layout.oidc:
        # After the rate limit (a flood of callbacks is cut before Envoy calls the token endpoint), before
        # jwt_authn, which validates the ID token it forwards.
        filters.append({"name": OIDC_FILTER, "typed_config": _oauth2(layout)})
    if public and layout.jwt:
        # After the rate limit: it counts a token's requests by its authorization header, which a valid
        # token loses here, and a flood of made-up tokens is cut before any signature is checked.
        filters.append({"name": _JWT_FILTER, "typed_config": _jwt_authn(layout)})
    filters.append(
        {
            "name": "envoy.filters.http.router",
            "typed_config": _typed("envoy.extensions.filters.http.router.v3.Router"),
        }
    )
    return filters


def _tracing(layout: MeshLayout) -> Json:
    otel = _typed(
        "envoy.config.trace.v3.OpenTelemetryConfig",
        grpc_service={"envoy_grpc": {"cluster_name": _OTEL_CLUSTER}, "timeout": "1s"},
        service_name=layout.service_name,
    )
    return {
        # The OpenTelemetry tracer reads and writes W3C traceparent/tracestate: Envoy's span becomes the
        # parent of the gateway's server span, and a client's traceparent becomes Envoy's parent.
        "provider": {"name": "envoy.tracers.opentelemetry", "typed_config": otel},
        "custom_tags": [
            {"tag": "call.id", "request_header": {"name": CALL_ID_HEADER}},
            {"tag": "request.id", "request_header": {"name": "x-request-id"}},
        ],
        "random_sampling": {"value": layout.trace_sampling_percent},
        "spawn_upstream_span": False,
    }


def _access_log() -> list[Json]:
    logger = _typed(
        "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
        log_format={"text_format_source": {"inline_string": _ACCESS_LOG_FORMAT}},
    )
    return [{"name": "envoy.access_loggers.stdout", "typed_config": logger}]


def _identity_headers_removed() -> list[Json]:
    """A client's own identity headers, removed before routing and before any filter (jwt_authn included)
    sees the request: only Envoy sets them. (A route's request_headers_to_remove would run after
    jwt_authn and remove Envoy's own payload instead.)"""
    mutation = _typed(_EARLY_HEADER_MUTATION, mutations=[{"remove": name} for name in IDENTITY_HEADERS])
    return [{"name": "envoy.http.early_header_mutation.header_mutation", "typed_config": mutation}]


def _connection_manager(name: str, route_config: Json, layout: MeshLayout, *, public: bool) -> Json:
    idle = _duration(layout.stream_idle_timeout_s)
    hcm = _typed(
        _HCM,
        stat_prefix=name,  # http.public.*, http.internal.* in Envoy's stats
        codec_type="AUTO",  # HTTP/1.1 (REST, WebSocket, gRPC-Web) and h2c (gRPC) on one port
        early_header_mutation_extensions=_identity_headers_removed(),
        route_config=route_config,
        # Route on the path the upstream will act on: "/a/../metrics", "/%6Detrics", "//metrics" and
        # "/metrics%2F" are all "/metrics" to Starlette, so they must be to the routes that refuse it.
        normalize_path=True,
        merge_slashes=True,
        path_with_escaped_slashes_action="UNESCAPE_AND_FORWARD",
        http_filters=_http_filters(layout, public=public),
        upgrade_configs=[{"upgrade_type": "websocket"}],
        stream_idle_timeout=idle,
        request_timeout="0s",
        # Bounds only the wait for request headers: slow-loris protection that never touches a stream.
        request_headers_timeout="10s",
        common_http_protocol_options={"idle_timeout": idle},
        http2_protocol_options={
            "allow_connect": True,  # WebSocket over HTTP/2 (RFC 8441), bridged to HTTP/1.1 upstream
            "connection_keepalive": {"interval": "60s", "timeout": "20s"},
        },
        # The edge proxy: x-forwarded-for comes from the peer, not the client, and x-forwarded-proto from the
        # connection (https over TLS: the gateway marks its session cookie Secure by it).
        use_remote_address=True,
        # A client's own x-request-id survives (it ties its logs to ours); Envoy makes one otherwise.
        generate_request_id=True,
        preserve_external_request_id=True,
        always_set_request_id_in_response=True,
    )
    if layout.access_log:
        hcm["access_log"] = _access_log()
    if layout.otlp_endpoint:
        hcm["tracing"] = _tracing(layout)
    return hcm


def _downstream_tls(cert: str, key: str) -> Json:
    context = _typed(
        _DOWNSTREAM_TLS,
        common_tls_context={
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            # h2 for gRPC, http/1.1 for browsers' pages, REST and WebSocket upgrades: one port for all.
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [{"certificate_chain": {"filename": cert}, "private_key": {"filename": key}}],
        },
    )
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


def _listener(
    name: str, host: str, port: int, route_config: Json, layout: MeshLayout, *, public: bool
) -> Json:
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": _connection_manager(name, route_config, layout, public=public),
    }
    chain: Json = {"filters": [manager]}
    if public and layout.tls_cert and layout.tls_key:
        chain["transport_socket"] = _downstream_tls(layout.tls_cert, layout.tls_key)
    return {
        "name": name,
        "address": _socket_address(host, port),
        "filter_chains": [chain],
    }


def _listeners(layout: MeshLayout) -> list[Json]:
    return [
        _listener(
            "public",
            layout.listener_host,
            layout.listener_port,
            _public_route_config(layout),
            layout,
            public=True,
        ),
        _listener(
            "internal",
            layout.internal_host,
            layout.internal_port,
            _internal_route_config(layout),
            layout,
            public=False,
        ),
    ]


def _overload_manager(layout: MeshLayout) -> Json:
    limit = _typed(
        "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
        max_active_downstream_connections=layout.max_downstream_connections,
    )
    monitor = {"name": "envoy.resource_monitors.global_downstream_max_connections", "typed_config": limit}
    return {"resource_monitors": [monitor]}


def build(layout: MeshLayout) -> Json:
    """The bootstrap as plain data, in the shape of Envoy's YAML (snake_case fields, ``@type`` for Any)."""
    clusters = [_cluster(upstream, layout) for upstream in _UPSTREAMS]
    if layout.otlp_endpoint:
        clusters.append(_otel_cluster(layout.otlp_endpoint))
    if layout.jwt_jwks_uri:
        clusters.append(_jwks_cluster(layout))
    static: Json = {"listeners": _listeners(layout), "clusters": clusters}
    if layout.oidc:
        clusters.append(_oidc_token_cluster(layout))
        static["secrets"] = _oidc_secrets(layout)
    return {
        "node": {"id": "callsense-envoy", "cluster": "callsense"},
        "admin": {"address": _socket_address(layout.admin_host, layout.admin_port)},
        "static_resources": static,
        "overload_manager": _overload_manager(layout),
    }


def _register_any_types() -> None:
    """Import every module that defines a type used inside an ``Any`` (importing registers it)."""
    # The generated modules trip pydantic deprecation warnings on import: not ours to fix, only noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        _import_any_types()


def _import_any_types() -> None:
    import envoy_data_plane.envoy.config.route.v3
    import envoy_data_plane.envoy.config.trace.v3
    import envoy_data_plane.envoy.extensions.access_loggers.stream.v3
    import envoy_data_plane.envoy.extensions.filters.http.cors.v3
    import envoy_data_plane.envoy.extensions.filters.http.grpc_web.v3
    import envoy_data_plane.envoy.extensions.filters.http.jwt_authn.v3
    import envoy_data_plane.envoy.extensions.filters.http.local_ratelimit.v3
    import envoy_data_plane.envoy.extensions.filters.http.oauth2.v3
    import envoy_data_plane.envoy.extensions.filters.http.router.v3
    import envoy_data_plane.envoy.extensions.filters.network.http_connection_manager.v3
    import envoy_data_plane.envoy.extensions.health_check.event_sinks.file.v3
    import envoy_data_plane.envoy.extensions.http.early_header_mutation.header_mutation.v3
    import envoy_data_plane.envoy.extensions.resource_monitors.downstream_connections.v3
    import envoy_data_plane.envoy.extensions.transport_sockets.tls.v3
    import envoy_data_plane.envoy.extensions.upstreams.http.v3  # noqa: F401


def check(config: Mapping[str, Any]) -> Bootstrap:
    """Parse ``config`` into envoy-data-plane's Bootstrap; raise ValueError naming what does not fit."""
    _register_any_types()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    try:
        return Bootstrap.from_dict(config)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"the Envoy bootstrap does not fit Envoy's schema: {e}") from e


_HEADER = """\
# Envoy bootstrap for callsense: GENERATED by `python -m tools.envoy_config`; do not edit by hand.
# Change tools/envoy_config.py instead (a test fails when this file is stale). See envoy/README.md.
"""


def render(layout: MeshLayout) -> str:
    """The checked bootstrap for ``layout`` as YAML."""
    config = build(layout)
    check(config)
    return _HEADER + str(yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=110))


def write(layout: MeshLayout, path: str | os.PathLike[str] = DEFAULT_PATH) -> Path:
    """Render ``layout`` to ``path`` (atomically, so a running ``envoy -c`` never reads half a file)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(render(layout), encoding="utf-8")
    tmp.replace(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the Envoy bootstrap of the default layout.")
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH), help=f"default: {DEFAULT_PATH}")
    args = parser.parse_args(argv)
    print(f"wrote {write(MeshLayout(), args.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
