"""The Envoy bootstrap: schema, Envoy's own validation, the checked-in file, and a real Envoy proxying
HTTP, WebSocket, gRPC and gRPC-Web to tiny local backends (started on free ports).

The edge is tried, not read: through the real Envoy's public listener the internal services (by path or by
authority) and /metrics are refused without reaching any upstream, however the path is spelt, while its
internal listener reaches them; cross-origin calls are refused unless an origin is configured; each API key
and each address without a key has its own rate limit (429 / RESOURCE_EXHAUSTED from Envoy, health checks
exempt); every answer carries the security headers; with a certificate the public listener speaks TLS
to browsers, gRPC and WebSocket clients alike; and with an identity provider it validates JWTs (keys made
here with the openssl command) and hands their claims to the gateway next to the edge secret, while API keys
and bad tokens pass untouched and a client can forge neither header."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import ssl
import stat
import struct
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.http11 import Request, Response

from callsense.config import EDGE_HEADER, EDGE_SECRET_ENV, JWT_PAYLOAD_HEADER, ConfigError, load_config
from tools.envoy_config import (
    DEFAULT_PATH,
    HSTS,
    JWKS_CLUSTER,
    JWT_PROVIDER,
    SECURITY_HEADERS,
    MeshLayout,
    build,
    check,
    render,
)
from tools.ports import free_ports
from tools.supervisor import Supervisor, envoy_binary, envoy_shm_files, envoy_spec
from tools.up import UpOptions, edge_overrides, mesh_specs, self_signed_certificate

ENVOY_ROUTE_TIMEOUT_DEFAULT_S = 15.0
"""Envoy ends a route's response this long after the request ends unless the route says otherwise."""


def live(test: Callable[..., Any]) -> Callable[..., Any]:
    """A test against the module's real Envoy (one event loop for the module, as the fixture has)."""
    return pytest.mark.slow(pytest.mark.asyncio(loop_scope="module")(test))


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _listeners(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {listener["name"]: listener for listener in config["static_resources"]["listeners"]}


def _hcm(config: dict[str, Any], listener: str) -> dict[str, Any]:
    hcm: dict[str, Any] = _listeners(config)[listener]["filter_chains"][0]["filters"][0]["typed_config"]
    return hcm


def _virtual_hosts(config: dict[str, Any], listener: str) -> dict[str, dict[str, Any]]:
    return {host["name"]: host for host in _hcm(config, listener)["route_config"]["virtual_hosts"]}


def _routes(config: dict[str, Any], listener: str = "public") -> list[dict[str, Any]]:
    """The routes of ``listener``'s catch-all virtual host."""
    routes: list[dict[str, Any]] = _virtual_hosts(config, listener)["callsense"]["routes"]
    return routes


def _clusters_routed(config: dict[str, Any], listener: str) -> set[str]:
    return {
        r["route"]["cluster"]
        for host in _virtual_hosts(config, listener).values()
        for r in host["routes"]
        if "route" in r
    }


INTERNAL_SERVICES = {"Scorer": "scorer", "Chopper": "chopper", "Asr": "asr", "PostCall": "postcall"}


def test_internal_callers_reach_a_service_by_authority_on_the_internal_listener_only() -> None:
    config = build(MeshLayout())
    hosts = _virtual_hosts(config, "internal")
    for service in INTERNAL_SERVICES.values():
        host = hosts[service]
        assert host["domains"] == [service, f"{service}:*"]
        # Every path, health checks included, goes to the service named by the authority.
        assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in host["routes"]] == [("/", service)]
    # The public listener has one virtual host for every authority, and it reaches no internal service.
    (public,) = _virtual_hosts(config, "public").values()
    assert public["domains"] == ["*"]
    assert _clusters_routed(config, "public") == {"gateway_grpc", "gateway_http"}
    assert _clusters_routed(config, "internal") == {
        "gateway_grpc",
        "gateway_http",
        *INTERNAL_SERVICES.values(),
    }


def test_two_listeners_public_and_internal() -> None:
    config = build(MeshLayout())
    listeners = _listeners(config)
    assert list(listeners) == ["public", "internal"]
    addresses = {name: listener["address"]["socket_address"] for name, listener in listeners.items()}
    assert addresses["public"] == {"address": "0.0.0.0", "port_value": 8080}
    assert addresses["internal"] == {"address": "127.0.0.1", "port_value": 8081}  # loopback by default
    assert [_hcm(config, name)["stat_prefix"] for name in listeners] == ["public", "internal"]
    # The internal port comes from CALLSENSE_ENVOY_INTERNAL_PORT like the public one from ENVOY_PORT.
    env = {"CALLSENSE_ENVOY_PORT": "7080", "CALLSENSE_ENVOY_INTERNAL_PORT": "7081"}
    layout = MeshLayout.from_config(load_config(env), env={})
    assert (layout.listener_port, layout.internal_port) == (7080, 7081)
    with pytest.raises(ValueError, match="must differ"):
        MeshLayout(listener_port=8080, internal_port=8080)


def test_public_listener_refuses_internal_services_and_metrics_in_envoy() -> None:
    routes = {r["name"]: r for r in _routes(build(MeshLayout()))}
    refused = {name: r for name, r in routes.items() if "direct_response" in r}
    assert {name: r["match"] for name, r in refused.items()} == {
        "internal_services_refused": {"prefix": "/callsense.v1.", "case_sensitive": False},
        "operator_only_refused": {"path_separated_prefix": "/metrics", "case_sensitive": False},
    }
    assert all(r["direct_response"]["status"] == 404 for r in refused.values())
    names = list(routes)
    # Sentiment is matched before the package-wide refusal, the refusal before the catch-all.
    assert names.index("callsense.v1.Sentiment") < names.index("internal_services_refused")
    assert names[-1] == "gateway_http"
    for name in ("public", "internal"):  # Envoy routes on the path the gateway will act on
        hcm = _hcm(build(MeshLayout()), name)
        assert hcm["normalize_path"] and hcm["merge_slashes"], name
        assert hcm["path_with_escaped_slashes_action"] == "UNESCAPE_AND_FORWARD", name


def test_cors_is_same_origin_unless_origins_are_configured() -> None:
    def cors_policies(layout: MeshLayout) -> list[Any]:
        return [
            host.get("typed_per_filter_config", {}).get("envoy.filters.http.cors")
            for listener in ("public", "internal")
            for host in _virtual_hosts(build(layout), listener).values()
        ]

    assert MeshLayout().cors_allow_origins == ()
    assert not any(cors_policies(MeshLayout()))
    for origins, match in [
        (["https://app.example"], [{"exact": "https://app.example"}]),
        (["*"], [{"safe_regex": {"regex": ".*"}}]),  # any origin, only when configured so
    ]:
        policies = [p for p in cors_policies(MeshLayout(cors_allow_origins=origins)) if p]
        assert policies and all(p["allow_origin_string_match"] == match for p in policies), origins


# --- the edge: rate limits, security headers, TLS ------------------------------------------------------


def _filter_names(config: dict[str, Any], listener: str) -> list[str]:
    return [f["name"] for f in _hcm(config, listener)["http_filters"]]


def _rate_limit(config: dict[str, Any]) -> dict[str, Any]:
    limits: list[dict[str, Any]] = [
        f["typed_config"]
        for f in _hcm(config, "public")["http_filters"]
        if f["name"] == "envoy.filters.http.local_ratelimit"
    ]
    (limit,) = limits
    return limit


def _unlimited_routes(config: dict[str, Any]) -> dict[str, str]:
    """Route name -> its path, for the public routes that take the rate limit filter out."""
    disabled = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    return {
        r["name"]: r["match"].get("path", "")
        for r in _routes(config)
        if r.get("typed_per_filter_config", {}).get("envoy.filters.http.local_ratelimit") == disabled
    }


def test_public_listener_limits_each_key_and_each_address_without_one() -> None:
    config = build(MeshLayout())
    # Only the public listener; after CORS (a preflight spends no token), before the router.
    assert _filter_names(config, "public") == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    assert "envoy.filters.http.local_ratelimit" not in _filter_names(config, "internal")
    limit = _rate_limit(config)
    # One bucket per authorization header value (its own bucket per key: the entry has no value) ...
    per_key, per_address = limit["rate_limits"]
    assert per_key == {
        "actions": [{"request_headers": {"header_name": "authorization", "descriptor_key": "api_key"}}]
    }
    # ... and, for requests without one, per client address.
    without_key, address = per_address["actions"]
    assert without_key["header_value_match"]["expect_match"] is False
    assert without_key["header_value_match"]["headers"] == [{"name": "authorization", "present_match": True}]
    assert address == {"remote_address": {}}
    assert [(d["entries"], d["token_bucket"]) for d in limit["descriptors"]] == [
        ([{"key": "api_key"}], {"max_tokens": 100, "tokens_per_fill": 50, "fill_interval": "1s"}),
        (
            [{"key": "authorization", "value": "absent"}, {"key": "remote_address"}],
            {"max_tokens": 40, "tokens_per_fill": 20, "fill_interval": "1s"},
        ),
    ]
    assert "token_bucket" not in limit  # no global bucket: a request that matches no descriptor passes
    assert limit["max_dynamic_descriptors"] == MeshLayout().rate_limit_tracked == 10_000
    assert limit["rate_limited_as_resource_exhausted"] is True
    assert limit["enable_x_ratelimit_headers"] == "DRAFT_VERSION_03"
    for enabled in ("filter_enabled", "filter_enforced"):  # Envoy's default for both is 0 %: off
        assert limit[enabled]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    # Health checks are never limited (load balancers and `callsense up` poll them).
    assert _unlimited_routes(config) == {"healthz": "/healthz", "readyz": "/readyz"}


def test_rate_limits_are_configurable_and_can_be_turned_off() -> None:
    def buckets(layout: MeshLayout) -> list[dict[str, Any]]:
        return [d["token_bucket"] for d in _rate_limit(build(layout))["descriptors"]]

    # Rates below one a second refill one token per interval; fractions keep their exact rate.
    assert buckets(MeshLayout(rate_limit_per_key=0.1, rate_limit_per_key_burst=2, rate_limit_per_ip=2.5)) == [
        {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "10s"},
        {"max_tokens": 40, "tokens_per_fill": 5, "fill_interval": "2s"},
    ]
    only_keys = build(MeshLayout(rate_limit_per_ip=0))
    assert [d["entries"] for d in _rate_limit(only_keys)["descriptors"]] == [[{"key": "api_key"}]]
    off = build(MeshLayout(rate_limit_per_key=0, rate_limit_per_ip=0))
    assert "envoy.filters.http.local_ratelimit" not in _filter_names(off, "public")
    assert not _unlimited_routes(off)  # no per-route setting for a filter that is not there

    env = {
        "CALLSENSE_RATE_LIMIT_PER_KEY": "5",
        "CALLSENSE_RATE_LIMIT_PER_KEY_BURST": "7",
        "CALLSENSE_RATE_LIMIT_PER_IP": "0.5",
        "CALLSENSE_RATE_LIMIT_PER_IP_BURST": "3",
    }
    layout = MeshLayout.from_config(load_config({}), env=env)
    assert (layout.rate_limit_per_key, layout.rate_limit_per_key_burst) == (5, 7)
    assert (layout.rate_limit_per_ip, layout.rate_limit_per_ip_burst) == (0.5, 3)
    # `callsense up`'s flags win over the environment.
    overrides = edge_overrides(UpOptions(rate_limit_per_key=9, rate_limit_per_ip_burst=4), load_config({}))
    assert overrides == {"rate_limit_per_key": 9, "rate_limit_per_ip_burst": 4}
    layout = MeshLayout.from_config(load_config({}), env=env, **overrides)
    assert (layout.rate_limit_per_key, layout.rate_limit_per_key_burst, layout.rate_limit_per_ip_burst) == (
        9,
        7,
        4,
    )
    for bad, match in [
        ({"CALLSENSE_RATE_LIMIT_PER_KEY": "many"}, "CALLSENSE_RATE_LIMIT_PER_KEY"),
        ({"CALLSENSE_RATE_LIMIT_PER_IP_BURST": "1.5"}, "CALLSENSE_RATE_LIMIT_PER_IP_BURST"),
        ({"CALLSENSE_RATE_LIMIT_PER_IP": "-1"}, "rate_limit_per_ip"),
        ({"CALLSENSE_RATE_LIMIT_PER_KEY_BURST": "0"}, "rate_limit_per_key_burst"),
    ]:
        with pytest.raises(ConfigError, match=match):
            MeshLayout.from_config(load_config({}), env=bad)


def test_security_headers_on_every_public_answer_unless_the_gateway_set_its_own() -> None:
    def added(layout: MeshLayout, listener: str) -> list[tuple[str, str, str]]:
        return [
            (h["header"]["key"], h["header"]["value"], h["append_action"])
            for host in _virtual_hosts(build(layout), listener).values()
            for h in host.get("response_headers_to_add", [])
        ]

    plain = [(k, v, "ADD_IF_ABSENT") for k, v in SECURITY_HEADERS]
    assert {k: v for k, v, _ in plain} == {
        "x-content-type-options": "nosniff",
        "referrer-policy": "no-referrer",
        "x-frame-options": "DENY",
        "cross-origin-opener-policy": "same-origin",
    }
    assert added(MeshLayout(), "public") == plain
    assert added(MeshLayout(), "internal") == []
    # HSTS only over TLS: sent over plain http it would be ignored, and would be wrong.
    tls = MeshLayout(tls_cert="/tls/cert.pem", tls_key="/tls/key.pem")
    assert added(tls, "public") == [*plain, (*HSTS, "ADD_IF_ABSENT")]
    assert HSTS == ("strict-transport-security", "max-age=31536000")


def test_tls_on_the_public_listener_only_when_a_certificate_is_given() -> None:
    def transport(layout: MeshLayout, listener: str) -> Any:
        return _listeners(build(layout))[listener]["filter_chains"][0].get("transport_socket")

    assert transport(MeshLayout(), "public") is None  # plaintext by default, as before
    layout = MeshLayout.from_config(
        load_config({}), env={"CALLSENSE_TLS_CERT": "/tls/cert.pem", "CALLSENSE_TLS_KEY": "/tls/key.pem"}
    )
    assert layout.tls and transport(layout, "internal") is None
    context = transport(layout, "public")["typed_config"]["common_tls_context"]
    assert context["tls_params"] == {"tls_minimum_protocol_version": "TLSv1_2"}
    assert context["alpn_protocols"] == ["h2", "http/1.1"]  # gRPC over h2; browsers and WebSockets over 1.1
    assert context["tls_certificates"] == [
        {"certificate_chain": {"filename": "/tls/cert.pem"}, "private_key": {"filename": "/tls/key.pem"}}
    ]
    with pytest.raises(ValueError, match="go together"):
        MeshLayout(tls_cert="/tls/cert.pem")
    with pytest.raises(ConfigError, match="go together"):
        MeshLayout.from_config(load_config({}), env={"CALLSENSE_TLS_KEY": "/tls/key.pem"})


def test_self_signed_certificate_for_local_use(tmp_path: Path) -> None:
    """`callsense up --tls-self-signed`: a key only its owner reads, SANs localhost and 127.0.0.1, and the
    same certificate on the next start (a browser's exception for it keeps holding)."""
    cert, key = self_signed_certificate(tmp_path / "tls")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.parent.stat().st_mode) == 0o700
    names = subprocess.run(
        ["openssl", "x509", "-in", str(cert), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in names and "IP Address:127.0.0.1" in names, names
    assert self_signed_certificate(tmp_path / "tls") == (cert, key)
    assert cert.read_bytes() == self_signed_certificate(tmp_path / "tls")[0].read_bytes()
    # `callsense up` hands it to Envoy by absolute path and shows https/wss addresses.
    config = load_config({"CALLSENSE_DATA_DIR": str(tmp_path)})
    overrides = edge_overrides(UpOptions(tls_self_signed=True), config)
    assert overrides == {"tls_cert": str(cert), "tls_key": str(key)}
    (envoy, *_) = mesh_specs(config, UpOptions(), "postgresql://db/x", tmp_path / "envoy.yaml", tls=True)
    assert any(url.startswith("https://") for url in envoy.urls)
    assert any(url.startswith("wss://") for url in envoy.urls)
    with pytest.raises(ConfigError, match="cannot read"):
        edge_overrides(UpOptions(tls_cert=tmp_path / "none.pem", tls_key=key), config)


# --- the config itself -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [
        MeshLayout(),
        # Service names (STRICT_DNS), several replicas and tracing: the shape of a cluster deployment.
        MeshLayout(
            scorer=["scorer-0:50053", "scorer-1:50053"],
            gateway_http=["gateway:8000"],
            otlp_endpoint="http://otel-collector:4317",
        ),
        # Tiny and fractional limits, one kind off.
        MeshLayout(rate_limit_per_key=0.1, rate_limit_per_key_burst=2, rate_limit_per_ip=0),
        MeshLayout(rate_limit_per_key=0, rate_limit_per_ip=0),
    ],
    ids=["default", "cluster", "tiny-limits", "no-limits"],
)
def test_rendered_config_passes_envoy_validation(layout: MeshLayout, tmp_path: Path) -> None:
    _validate(render(layout), tmp_path)


def _validate(config: str, directory: Path) -> None:
    path = directory / "envoy.yaml"
    path.write_text(config)
    result = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Deprecated field" not in output, output


def test_tls_config_passes_envoy_validation(tmp_path: Path) -> None:
    """Envoy loads the certificate and key to validate: they must exist (made as `callsense up` does)."""
    cert, key = self_signed_certificate(tmp_path / "tls")
    _validate(render(MeshLayout(tls_cert=str(cert), tls_key=str(key))), tmp_path)


# --- the identity provider: JWTs validated at the edge ------------------------------------------------

ISSUER = "https://login.example.com/"
AUDIENCE = "callsense-client"
EDGE_SECRET = "edge-secret-of-this-module-" + "x" * 24
"""Envoy's CALLSENSE_EDGE_SECRET in the live tests: what the gateway would compare."""
JWT_FILTER = "envoy.filters.http.jwt_authn"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _openssl(*args: str, data: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=data, capture_output=True, check=True, timeout=60).stdout


def _rsa_key(path: Path) -> Path:
    _openssl("genrsa", "-out", str(path), "2048")
    return path


def _jwks(key: Path, kid: str) -> dict[str, Any]:
    """The JWKS of ``key``'s public half: its modulus (``openssl rsa -modulus``) and exponent 65537."""
    modulus = _openssl("rsa", "-in", str(key), "-noout", "-modulus").decode().strip().partition("=")[2]
    public = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid, "e": "AQAB"}
    return {"keys": [public | {"n": _b64url(bytes.fromhex(modulus))}]}


def _jwt(key: Path, claims: Mapping[str, Any], kid: str = "k1") -> str:
    """An RS256 JWT of ``claims`` signed with ``key`` (``openssl dgst -sha256 -sign``)."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = _openssl("dgst", "-sha256", "-sign", str(key), data=signing_input.encode())
    return f"{signing_input}.{_b64url(signature)}"


def _claims(**more: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u-42", "iat": now, "exp": now + 3600}
    return base | {"tenant": "acme", "role": "manager", "team": "east"} | more


def _jwt_layout(**more: Any) -> MeshLayout:
    jwks = more.pop("jwt_jwks_file", None) or ("/idp/jwks.json" if "jwt_jwks_uri" not in more else None)
    return MeshLayout(jwt_issuer=ISSUER, jwt_audiences=[AUDIENCE], jwt_jwks_file=jwks, **more)


def _jwt_filter(config: dict[str, Any]) -> dict[str, Any]:
    (found,) = [f["typed_config"] for f in _hcm(config, "public")["http_filters"] if f["name"] == JWT_FILTER]
    return found


def test_without_an_identity_provider_nothing_validates_jwts() -> None:
    config = build(MeshLayout())
    for listener in ("public", "internal"):
        assert JWT_FILTER not in _filter_names(config, listener)
        assert "request_headers_to_add" not in _hcm(config, listener)["route_config"]
    assert JWKS_CLUSTER not in _clusters(config)


def test_identity_headers_are_removed_before_any_filter_on_both_listeners() -> None:
    for layout in (MeshLayout(), _jwt_layout()):
        config = build(layout)
        for listener in ("public", "internal"):
            (early,) = _hcm(config, listener)["early_header_mutation_extensions"]
            assert early["name"] == "envoy.http.early_header_mutation.header_mutation"
            assert early["typed_config"]["mutations"] == [
                {"remove": JWT_PAYLOAD_HEADER},
                {"remove": EDGE_HEADER},
            ]
            # Never a route's request_headers_to_remove: it runs after jwt_authn (Envoy's own would go).
            assert "request_headers_to_remove" not in str(_hcm(config, listener)["route_config"])


def test_jwt_authn_on_the_public_listener_only() -> None:
    config = build(_jwt_layout())
    # After the rate limit (it counts the token's authorization header, which a valid token loses).
    assert _filter_names(config, "public") == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        JWT_FILTER,
        "envoy.filters.http.router",
    ]
    assert JWT_FILTER not in _filter_names(config, "internal")
    jwt = _jwt_filter(config)
    assert jwt["providers"] == {
        JWT_PROVIDER: {
            "issuer": ISSUER,
            "audiences": [AUDIENCE],
            "require_expiration": True,
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "forward_payload_header": JWT_PAYLOAD_HEADER,
            "local_jwks": {"filename": "/idp/jwks.json"},
        }
    }
    # Never refuses: a valid token adds the payload, anything else passes without it (the gateway decides).
    assert jwt["rules"] == [
        {
            "match": {"prefix": "/"},
            "requires": {
                "requires_any": {
                    "requirements": [{"provider_name": JWT_PROVIDER}, {"allow_missing_or_failed": {}}]
                }
            },
        }
    ]
    assert jwt["bypass_cors_preflight"] is True
    # The edge secret on every public request, from Envoy's environment (never written in the file).
    assert _hcm(config, "public")["route_config"]["request_headers_to_add"] == [
        {
            "header": {"key": EDGE_HEADER, "value": f"%ENVIRONMENT({EDGE_SECRET_ENV})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
        }
    ]
    assert "request_headers_to_add" not in _hcm(config, "internal")["route_config"]
    # With the rate limits off the filter is still there, right before the router.
    off = build(_jwt_layout(rate_limit_per_key=0, rate_limit_per_ip=0))
    assert _filter_names(off, "public")[-2:] == [JWT_FILTER, "envoy.filters.http.router"]


def test_a_remote_jwks_is_fetched_over_checked_tls() -> None:
    config = build(_jwt_layout(jwt_jwks_uri="https://login.example.com/oauth2/v1/keys", jwt_jwks_cache_s=300))
    remote = _jwt_filter(config)["providers"][JWT_PROVIDER]["remote_jwks"]
    assert "local_jwks" not in _jwt_filter(config)["providers"][JWT_PROVIDER]
    assert remote["http_uri"] == {
        "uri": "https://login.example.com/oauth2/v1/keys",
        "cluster": JWKS_CLUSTER,
        "timeout": "5s",
    }
    assert remote["cache_duration"] == "300s" and remote["async_fetch"] == {}
    cluster = _clusters(config)[JWKS_CLUSTER]
    assert cluster["type"] == "LOGICAL_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "login.example.com", "port_value": 443}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext") and tls["sni"] == "login.example.com"
    # Without a validation context Envoy would take any certificate: the CA bundle and the name are checked.
    assert tls["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/etc/ssl/certs/ca-certificates.crt"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "login.example.com"}}],
    }
    by_ip = _clusters(build(_jwt_layout(jwt_jwks_uri="https://10.1.2.3:8443/keys", jwt_jwks_ca="/ca.pem")))
    tls = by_ip[JWKS_CLUSTER]["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
    assert tls["trusted_ca"] == {"filename": "/ca.pem"}
    assert tls["match_typed_subject_alt_names"][0]["san_type"] == "IP_ADDRESS"
    assert by_ip[JWKS_CLUSTER]["type"] == "STATIC"
    # Plain http only from this host (a local test provider): no TLS to check there.
    local = _clusters(build(_jwt_layout(jwt_jwks_uri="http://127.0.0.1:5556/keys")))[JWKS_CLUSTER]
    assert "transport_socket" not in local


def test_identity_provider_settings_from_the_environment() -> None:
    env = {
        "CALLSENSE_JWT_ISSUER": ISSUER,
        "CALLSENSE_JWT_AUDIENCES": f"{AUDIENCE}, other-client ,",
        "CALLSENSE_JWT_JWKS_URI": "https://login.example.com/keys",
        "CALLSENSE_JWT_JWKS_CACHE_S": "120",
        "CALLSENSE_JWT_JWKS_CA": "/etc/company-ca.pem",
    }
    layout = MeshLayout.from_config(load_config({}), env=env)
    assert layout.jwt and layout.jwt_issuer == ISSUER
    assert layout.jwt_audiences == (AUDIENCE, "other-client")
    assert (layout.jwt_jwks_uri, layout.jwt_jwks_cache_s, layout.jwt_jwks_ca) == (
        "https://login.example.com/keys",
        120,
        "/etc/company-ca.pem",
    )
    assert not MeshLayout.from_config(load_config({}), env={}).jwt
    base = {"CALLSENSE_JWT_ISSUER": ISSUER, "CALLSENSE_JWT_AUDIENCES": AUDIENCE}
    for bad, match in [
        ({"CALLSENSE_JWT_ISSUER": ISSUER, "CALLSENSE_JWT_JWKS_FILE": "/k.json"}, "jwt_audiences"),
        (base, "one of jwt_jwks_file and jwt_jwks_uri"),
        (base | {"CALLSENSE_JWT_JWKS_FILE": "/k.json", "CALLSENSE_JWT_JWKS_URI": "https://a/k"}, "one of"),
        (base | {"CALLSENSE_JWT_JWKS_URI": "http://login.example.com/keys"}, "https"),
        (base | {"CALLSENSE_JWT_JWKS_URI": "login.example.com/keys"}, "https"),
        (base | {"CALLSENSE_JWT_JWKS_URI": "https://a/k", "CALLSENSE_JWT_JWKS_CACHE_S": "0"}, "cache"),
        (base | {"CALLSENSE_JWT_JWKS_URI": "https://a/k", "CALLSENSE_JWT_JWKS_CACHE_S": "1h"}, "CACHE_S"),
        ({"CALLSENSE_JWT_AUDIENCES": AUDIENCE}, "without jwt_issuer"),
    ]:
        with pytest.raises(ConfigError, match=match):
            MeshLayout.from_config(load_config({}), env=bad)


def test_callsense_up_gives_the_edge_secret_to_envoy_and_the_gateway_only(tmp_path: Path) -> None:
    config = load_config({"CALLSENSE_DATA_DIR": str(tmp_path)})
    specs = mesh_specs(
        config, UpOptions(), "postgresql://db/x", tmp_path / "envoy.yaml", edge_secret=EDGE_SECRET
    )
    given = {spec.name for spec in specs if spec.env.get(EDGE_SECRET_ENV) == EDGE_SECRET}
    assert given == {"envoy", "gateway"}
    assert all(
        EDGE_SECRET_ENV not in spec.env for spec in mesh_specs(config, UpOptions(), "x", tmp_path / "e")
    )


def test_jwt_configs_pass_envoy_validation(tmp_path: Path) -> None:
    """Envoy reads the local JWKS and the JWKS host's CA bundle to validate: both exist here."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(_jwks(_rsa_key(tmp_path / "idp.key"), "k1")))
    ca, ca_key = self_signed_certificate(tmp_path / "ca")
    for layout in (
        _jwt_layout(jwt_jwks_file=str(jwks)),
        _jwt_layout(jwt_jwks_uri="https://login.example.com/keys", jwt_jwks_ca=str(ca)),
        _jwt_layout(
            jwt_jwks_uri="https://[2001:db8::1]:8443/keys", jwt_jwks_ca=str(ca), rate_limit_per_key=0
        ),
        _jwt_layout(jwt_jwks_uri="http://localhost:5556/keys", tls_cert=str(ca), tls_key=str(ca_key)),
    ):
        _validate(render(layout), tmp_path)


def test_checked_in_config_is_current() -> None:
    assert DEFAULT_PATH.read_text() == render(MeshLayout()), (
        "envoy/envoy.yaml is stale: run `python -m tools.envoy_config`"
    )


def test_scorer_replicas_become_endpoints() -> None:
    layout = MeshLayout(scorer=["10.0.0.1:50053", "10.0.0.2:50053", "10.0.0.3:50053"])
    bootstrap = check(build(layout))  # the typed envoy-data-plane Bootstrap
    assert bootstrap.static_resources is not None
    scorer = next(c for c in bootstrap.static_resources.clusters if c.name == "scorer")
    assert scorer.load_assignment is not None
    hosts = []
    for lb_endpoint in scorer.load_assignment.endpoints[0].lb_endpoints:
        address = lb_endpoint.endpoint.address.socket_address  # type: ignore[union-attr]  # set above
        hosts.append(address.address)  # type: ignore[union-attr]
    assert hosts == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_check_rejects_what_envoy_would_reject() -> None:
    config = build(MeshLayout())
    config["static_resources"]["clusters"][0]["lb_polcy"] = "ROUND_ROBIN"
    with pytest.raises(ValueError, match="lb_polcy"):
        check(config)


def test_routes_clusters_and_timeouts() -> None:
    config = build(MeshLayout())
    # Prefix routes (the health checks' exact paths aside) that go to an upstream.
    routed = [r for r in _routes(config, "public") if "route" in r and "prefix" in r["match"]]
    public = {r["match"]["prefix"]: r["route"] for r in routed}
    internal = {r["match"]["prefix"]: r["route"] for r in _routes(config, "internal")}
    for routes in (public, internal):
        assert routes["/callsense.v1.Sentiment/"]["cluster"] == "gateway_grpc"
        assert routes["/grpc.health.v1.Health/"]["cluster"] == "gateway_grpc"
        assert list(routes)[-1] == "/" and routes["/"]["cluster"] == "gateway_http"
        assert all(r["timeout"] == "0s" for r in routes.values())
        assert routes["/"]["hash_policy"][0] == {"header": {"header_name": "x-call-id"}}
    assert internal["/callsense.v1.Scorer/"]["cluster"] == "scorer"
    assert internal["/callsense.v1.PostCall/"]["cluster"] == "postcall"
    assert "/callsense.v1.Scorer/" not in public

    clusters = _clusters(config)
    assert clusters["gateway_http"]["lb_policy"] == "RING_HASH"
    assert "http_health_check" in clusters["gateway_http"]["health_checks"][0]
    for name in ("gateway_grpc", "asr", "chopper", "scorer", "postcall"):
        assert "typed_extension_protocol_options" in clusters[name], name
        assert "grpc_health_check" in clusters[name]["health_checks"][0], name
    assert "tracing" not in str(config)


def test_tracing_exports_to_the_collector() -> None:
    config = build(MeshLayout(otlp_endpoint="http://127.0.0.1:4317"))
    collector = _clusters(config)["opentelemetry_collector"]
    address = collector["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "127.0.0.1", "port_value": 4317}
    assert "envoy.tracers.opentelemetry" in str(config)


# --- a real Envoy ----------------------------------------------------------------------------------


def _http_backend(name: str, seen: list[Request]) -> Callable[[ServerConnection, Request], Response | None]:
    """Plain HTTP answers for non-WebSocket requests (health checks, REST); None lets a WebSocket in."""

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        response = connection.respond(200, f"{name} {request.path}\n")
        if request.path == OWN_HEADERS_PATH:  # as the gateway's pages set their own, stricter policies
            response.headers.update(OWN_HEADERS)
        return response

    return process_request


async def _echo(websocket: ServerConnection) -> None:
    async for message in websocket:
        text = message if isinstance(message, str) else message.decode()
        await websocket.send(f"echo: {text}")


class _GrpcBackend(grpc.GenericRpcHandler):
    """Answers every unary call, whatever its method, with the name of its cluster, and records it: a
    call that never shows up here never reached this upstream. Health checks go to the health servicer."""

    def __init__(
        self, cluster: str, calls: list[tuple[str, str]], metadata: list[dict[str, Any]] | None = None
    ) -> None:
        self._cluster = cluster
        self._calls = calls
        self._metadata = metadata

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = handler_call_details.method
        if method.startswith("/grpc.health.v1.Health/"):
            return None

        async def answer(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            self._calls.append((self._cluster, method))
            if self._metadata is not None:
                self._metadata.append(dict(context.invocation_metadata() or ()))
            return self._cluster.encode()

        return grpc.unary_unary_rpc_method_handler(answer)


def _otlp_collector(spans: list[Any]) -> grpc.GenericRpcHandler:
    """A stand-in OpenTelemetry collector: keeps every span Envoy exports over OTLP/gRPC."""

    async def export(
        request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.aio.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        spans.extend(span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    method = grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
        response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": method}
    )


LIMIT_BURST = 2
"""The tiny limits' burst; their rate is one request per 10 s, so no token comes back within a test."""


@dataclass(frozen=True)
class TlsEdge:
    layout: MeshLayout
    cert: Path

    @property
    def port(self) -> int:
        return self.layout.listener_port

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


@dataclass
class Mesh:
    port: int
    """The public listener."""
    internal_port: int
    grpc_health: health.aio.HealthServicer
    http_requests: list[Request]
    """Every request the gateway_http replicas saw, headers included."""
    grpc_calls: list[tuple[str, str]]
    """(cluster, method) of every gRPC call an upstream answered (health checks aside)."""
    exported_spans: list[Any]
    layout: MeshLayout = field(repr=False)
    limited: MeshLayout = field(repr=False)
    """A second Envoy over the same upstreams with tiny rate limits (``LIMIT_BURST``, then 0.1/s)."""
    tls: TlsEdge = field(repr=False)
    """A third whose public listener speaks TLS."""
    grpc_metadata: list[dict[str, Any]] = field(default_factory=list, repr=False)
    """The metadata of every call gateway_grpc answered (health checks aside)."""


async def _start_grpc_server(handlers: list[grpc.GenericRpcHandler]) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(handlers)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


@contextlib.asynccontextmanager
async def _envoy(
    layout: MeshLayout, directory: Path, *, env: Mapping[str, str] | None = None, **more: MeshLayout
) -> AsyncIterator[None]:
    """A real Envoy serving ``layout`` (and one for each of ``more``, by name, started at the same time)
    until the block ends (ready: each one's admin /ready says LIVE); ``env``: added to their environment."""
    specs = []
    for name, each in {"envoy": layout, **more}.items():
        config = directory / f"{name}.yaml"
        config.write_text(render(each))
        spec = envoy_spec(name, config, admin_port=each.admin_port, concurrency=1)
        specs.append(replace(spec, env=dict(env or {})))
    supervisor = Supervisor(specs, out=io.StringIO())
    await supervisor.start()
    try:
        yield
    finally:
        await supervisor.stop()


def _ports(layout: MeshLayout, ports: list[int] | None = None) -> MeshLayout:
    """``layout`` on free ports of its own (or the first three of ``ports``): public, internal, admin."""
    public, internal, admin = ports[:3] if ports else free_ports(3)
    return replace(layout, listener_port=public, internal_port=internal, admin_port=admin)


OWN_HEADERS_PATH = "/own-headers"
OWN_HEADERS = {"x-frame-options": "SAMEORIGIN", "referrer-policy": "same-origin"}
"""What the fake gateway answers on OWN_HEADERS_PATH: Envoy must leave them as they are."""

APP_ORIGIN = "http://app.example"
"""The one cross-origin caller the module's Envoy allows (the default layout allows none)."""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Mesh]:
    async with contextlib.AsyncExitStack() as stack:
        http_ports = []
        http_requests: list[Request] = []
        for i in range(2):  # two gateway replicas, to see a call pinned to one of them
            backend = _http_backend(f"gateway-{i}", http_requests)
            server = await ws_serve(_echo, "127.0.0.1", 0, process_request=backend, ping_interval=None)
            stack.push_async_callback(_close_ws_server, server)
            http_ports.append(server.sockets[0].getsockname()[1])

        gateway_health = health.aio.HealthServicer()
        grpc_addrs: dict[str, list[str]] = {}
        grpc_calls: list[tuple[str, str]] = []
        grpc_metadata: list[dict[str, Any]] = []
        for cluster in ("gateway_grpc", "asr", "chopper", "scorer", "postcall"):
            servicer = gateway_health if cluster == "gateway_grpc" else health.aio.HealthServicer()
            recorded = grpc_metadata if cluster == "gateway_grpc" else None
            grpc_server, port = await _start_grpc_server([_GrpcBackend(cluster, grpc_calls, recorded)])
            health_pb2_grpc.add_HealthServicer_to_server(servicer, grpc_server)
            stack.push_async_callback(grpc_server.stop, None)
            grpc_addrs[cluster] = [f"127.0.0.1:{port}"]

        exported_spans: list[Any] = []
        collector, collector_port = await _start_grpc_server([_otlp_collector(exported_spans)])
        stack.push_async_callback(collector.stop, None)

        layout = _ports(
            MeshLayout(
                listener_host="127.0.0.1",
                gateway_http=[f"127.0.0.1:{port}" for port in http_ports],
                gateway_grpc=grpc_addrs["gateway_grpc"],
                asr=grpc_addrs["asr"],
                chopper=grpc_addrs["chopper"],
                scorer=grpc_addrs["scorer"],
                postcall=grpc_addrs["postcall"],
                otlp_endpoint=f"http://127.0.0.1:{collector_port}",
                cors_allow_origins=[APP_ORIGIN],
                access_log=False,
                # The filter is in the chain for every test here, but never in the way: the limits'
                # own tests run their own Envoy with tiny ones.
                rate_limit_per_key=10_000,
                rate_limit_per_key_burst=10_000,
                rate_limit_per_ip=10_000,
                rate_limit_per_ip_burst=10_000,
            )
        )
        directory = tmp_path_factory.mktemp("envoy")
        edge = replace(layout, otlp_endpoint=None)
        ports = free_ports(6)
        limited = _ports(
            replace(
                edge,
                rate_limit_per_key=0.1,
                rate_limit_per_key_burst=LIMIT_BURST,
                rate_limit_per_ip=0.1,
                rate_limit_per_ip_burst=LIMIT_BURST,
            ),
            ports[:3],
        )
        # The certificate `callsense up --tls-self-signed` makes.
        cert, key = self_signed_certificate(directory / "tls")
        tls = _ports(replace(edge, tls_cert=str(cert), tls_key=str(key)), ports[3:])
        shm_before = envoy_shm_files()
        envoys = _envoy(layout, directory, **{"envoy-limited": limited, "envoy-tls": tls})
        await stack.enter_async_context(envoys)
        yield Mesh(
            layout.listener_port,
            layout.internal_port,
            gateway_health,
            http_requests,
            grpc_calls,
            exported_spans,
            layout,
            limited,
            TlsEdge(tls, cert),
            grpc_metadata=grpc_metadata,
        )
    assert envoy_shm_files() <= shm_before, "Envoy left hot-restart shared memory behind"


async def _close_ws_server(server: Server) -> None:
    server.close()
    await server.wait_closed()


@live
async def test_plain_http_and_call_pinning(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        reply = await client.get("/docs")
        assert reply.status_code == 200
        assert reply.text.endswith(" /docs\n")
        assert reply.headers["x-request-id"]  # Envoy gives every request an id and says which

        # One call id always reaches the same gateway replica; many call ids reach both.
        replicas: dict[str, str] = {}
        for i in range(20):
            call_id = f"call-{i}"
            seen = {
                (await client.get("/v1/calls", headers={"x-call-id": call_id})).text.split()[0]
                for _ in range(3)
            }
            assert len(seen) == 1, f"{call_id} was served by {seen}"
            replicas[call_id] = seen.pop()
        assert set(replicas.values()) == {"gateway-0", "gateway-1"}


async def _unary(target: str, method: str, *, authority: str | None = None) -> bytes:
    options = [("grpc.default_authority", authority)] if authority else []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        answer: bytes = await channel.unary_unary(method)(b"", timeout=5)
        return answer


async def _raw_get(port: int, target: str) -> tuple[int, bytes]:
    """GET ``target`` sent byte for byte (HTTP clients tidy paths such as ``/a/../metrics`` first)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {target} HTTP/1.1\r\nHost: callsense\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@live
async def test_public_listener_serves_the_public_grpc_api(mesh: Mesh) -> None:
    public = f"127.0.0.1:{mesh.port}"
    assert await _unary(public, "/callsense.v1.Sentiment/Ping") == b"gateway_grpc"
    # The authority changes nothing on the public listener: naming a service does not reach it.
    assert await _unary(public, "/callsense.v1.Sentiment/Ping", authority="scorer") == b"gateway_grpc"
    async with grpc.aio.insecure_channel(public) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@live
@pytest.mark.parametrize("authority", [None, "scorer", "scorer:8081", "chopper"])
@pytest.mark.parametrize("service", sorted(INTERNAL_SERVICES))
async def test_public_listener_never_reaches_an_internal_service(
    mesh: Mesh, service: str, authority: str | None
) -> None:
    before = list(mesh.grpc_calls)
    for method in (f"/callsense.v1.{service}/Ping", f"/callsense.v1.{service.lower()}/Ping"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _unary(f"127.0.0.1:{mesh.port}", method, authority=authority)
        # Envoy's own 404, as gRPC: a trailers-only UNIMPLEMENTED; no upstream was asked.
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED, refused.value
    assert mesh.grpc_calls == before
    assert not [r for r in mesh.http_requests if "callsense.v1" in r.path.lower()]


@live
async def test_internal_listener_reaches_the_services_by_authority_and_by_path(mesh: Mesh) -> None:
    internal = f"127.0.0.1:{mesh.internal_port}"
    for service, cluster in INTERNAL_SERVICES.items():
        # By path (any authority), and by authority (any path, as the gateway's channels call).
        assert await _unary(internal, f"/callsense.v1.{service}/Ping") == cluster.encode()
        assert await _unary(internal, "/callsense.v1.Sentiment/Ping", authority=cluster) == cluster.encode()
        assert await _unary(internal, f"/callsense.v1.{service}/Ping", authority=f"{cluster}:8081") == (
            cluster.encode()
        )
    assert await _unary(internal, "/callsense.v1.Sentiment/Ping") == b"gateway_grpc"
    assert ("scorer", "/callsense.v1.Sentiment/Ping") in mesh.grpc_calls


@live
async def test_metrics_are_internal_only(mesh: Mesh) -> None:
    before = len(mesh.http_requests)
    # However the path is spelt, Envoy normalises it as the gateway would, then refuses it.
    for target in (
        "/metrics",
        "/metrics?format=prometheus",
        "/metrics/",
        "/METRICS",
        "/%6Detrics",
        "/%6detrics",
        "//metrics",
        "/./metrics",
        "/docs/../metrics",
        "/metrics%2F",
        "/metrics%2f..%2f..%2fmetrics",
    ):
        status, body = await _raw_get(mesh.port, target)
        assert (status, body) == (404, b"not found"), target
    # Not one reached the gateway (Envoy's own health checks of it aside).
    assert not [r.path for r in mesh.http_requests[before:] if r.path != "/healthz"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.internal_port}", timeout=5) as client:
        reply = await client.get("/metrics")
        assert reply.status_code == 200 and reply.text.endswith(" /metrics\n")
        # The internal listener carries the public API too, for operators.
        assert (await client.get("/docs")).text.endswith(" /docs\n")

    # A path that only starts like it is the gateway's to answer.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        assert (await client.get("/metricsboard")).text.endswith(" /metricsboard\n")


async def _preflight(client: httpx.AsyncClient, origin: str) -> httpx.Response:
    return await client.options(
        "/callsense.v1.Sentiment/Ping",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web",
        },
    )


@live
async def test_grpc_web_and_cors(mesh: Mesh) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        preflight = await _preflight(client, APP_ORIGIN)
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        # An origin that is not configured is not reflected: the browser keeps the answer from it.
        assert "access-control-allow-origin" not in (await _preflight(client, "https://evil.example")).headers

        reply = await client.post(
            "/callsense.v1.Sentiment/Ping",
            content=b"\x00" + struct.pack(">I", 0),  # one empty, uncompressed gRPC-Web message
            headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1"},
        )
    assert reply.status_code == 200
    body = reply.content
    flags, length = body[0], struct.unpack(">I", body[1:5])[0]
    assert flags == 0 and body[5 : 5 + length] == b"gateway_grpc"
    assert body[5 + length] == 0x80 and b"grpc-status:0" in body[5 + length :]  # the trailer frame


@live
async def test_default_layout_allows_no_cross_origin_caller(
    mesh: Mesh, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The module's upstreams behind a second Envoy with the default CORS setting (none)."""
    layout = _ports(replace(mesh.layout, cors_allow_origins=MeshLayout().cors_allow_origins))
    async with _envoy(layout, tmp_path_factory.mktemp("envoy-default-cors")):
        for port in (layout.listener_port, layout.internal_port):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for origin in ("https://evil.example", APP_ORIGIN):
                    headers = (await _preflight(client, origin)).headers
                    assert "access-control-allow-origin" not in headers, (port, origin)


@live
async def test_long_streams_outlive_default_timeouts(mesh: Mesh) -> None:
    """A silent WebSocket and a quiet gRPC server stream both outlive Envoy's default route timeout."""
    hold_s = ENVOY_ROUTE_TIMEOUT_DEFAULT_S + 1.5
    await mesh.grpc_health.set("calls", health_pb2.HealthCheckResponse.SERVING)

    async def websocket() -> None:
        url = f"ws://127.0.0.1:{mesh.port}/v1/sentiment/stream?call_id=long-1"
        async with ws_connect(url, ping_interval=None, open_timeout=5) as ws:
            await ws.send("start")
            assert await ws.recv() == "echo: start"
            await asyncio.sleep(hold_s)  # not a byte either way
            await ws.send("still here")
            assert await ws.recv() == "echo: still here"

    async def grpc_watch() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.port}") as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="calls"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await asyncio.sleep(hold_s)
            await mesh.grpc_health.set("calls", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await asyncio.wait_for(watch.read(), 5)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()

    async with asyncio.timeout(hold_s + 15):
        await asyncio.gather(websocket(), grpc_watch())


@live
async def test_envoy_spans_join_the_callers_trace(mesh: Mesh) -> None:
    trace_id, client_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    headers = {"traceparent": f"00-{trace_id}-{client_span}-01", "x-call-id": "traced-call"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{mesh.port}", timeout=5) as client:
        # Envoy exports once it holds 5 spans (or every 5 s): five requests make it export at once.
        for i in range(5):
            assert (await client.get(f"/traced/{i}", headers=headers)).status_code == 200

    async with asyncio.timeout(15):
        while len(ours := [s for s in mesh.exported_spans if s.trace_id.hex() == trace_id]) < 5:
            await asyncio.sleep(0.1)
    for span in ours:
        assert span.parent_span_id.hex() == client_span
        assert {a.key: a.value.string_value for a in span.attributes}["call.id"] == "traced-call"

    # The gateway gets a traceparent whose parent is an Envoy span: its own spans join the same trace.
    upstream = [r for r in mesh.http_requests if r.path.startswith("/traced/")]
    parents = {r.headers["traceparent"].split("-")[2] for r in upstream}
    assert {r.headers["traceparent"].split("-")[1] for r in upstream} == {trace_id}
    assert parents == {s.span_id.hex() for s in ours}
    assert all(r.headers["x-call-id"] == "traced-call" and r.headers["x-request-id"] for r in upstream)


# --- the edge, live: rate limits, security headers, TLS ------------------------------------------------


def _client(port: int, source: str = "127.0.0.1") -> httpx.AsyncClient:
    """An HTTP client of the public listener whose connections come from ``source`` (on Linux every
    127.0.0.x is this host): another client address to Envoy."""
    transport = httpx.AsyncHTTPTransport(local_address=source)
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=transport, timeout=5)


def _seen_with(mesh: Mesh, header: str, value: str) -> int:
    """How many requests with ``header: value`` reached the gateway_http replicas."""
    return sum(1 for r in mesh.http_requests if r.headers.get(header) == value)


@live
async def test_each_key_has_its_own_rate_limit(mesh: Mesh) -> None:
    key_a, key_b = "Bearer csk_ratea_secret", "Bearer csk_rateb_secret"
    async with _client(mesh.limited.listener_port) as client:
        answers = [await client.get("/v1/calls", headers={"authorization": key_a}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        refused = answers[-1]
        # The draft-03 headers say how much is left and when it comes back; the body is Envoy's own.
        assert refused.headers["x-ratelimit-limit"].split(",")[0] == str(LIMIT_BURST)
        assert refused.headers["x-ratelimit-remaining"] == "0"
        assert int(refused.headers["x-ratelimit-reset"]) > 0
        assert refused.text == "local_rate_limited"
        assert answers[0].headers["x-ratelimit-remaining"] == "1"
        # Envoy answered the third itself: the gateway saw two requests of key A.
        assert _seen_with(mesh, "authorization", key_a) == LIMIT_BURST
        # Another key, from the same address, still has its whole bucket.
        assert (await client.get("/v1/calls", headers={"authorization": key_b})).status_code == 200


@live
async def test_requests_without_a_key_are_limited_per_address(mesh: Mesh) -> None:
    async with _client(mesh.limited.listener_port, "127.0.0.2") as client:
        # Keyed requests do not spend the address's tokens.
        for i in range(3):
            keyed = await client.get("/v1/calls", headers={"authorization": f"Bearer csk_addr{i}_secret"})
            assert keyed.status_code == 200
        answers = [(await client.get("/signin")).status_code for _ in range(3)]  # sign-in, say
        assert answers == [200, 200, 429]
    async with _client(mesh.limited.listener_port, "127.0.0.3") as other:
        assert (await other.get("/signin")).status_code == 200


@live
async def test_grpc_over_the_limit_is_resource_exhausted(mesh: Mesh) -> None:
    before = len(mesh.grpc_calls)
    metadata = (("authorization", "Bearer csk_grpc_secret"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.limited.listener_port}") as channel:
        ping = channel.unary_unary("/callsense.v1.Sentiment/Ping")
        for _ in range(LIMIT_BURST):
            assert await ping(b"", metadata=metadata, timeout=5) == b"gateway_grpc"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await ping(b"", metadata=metadata, timeout=5)
    # RESOURCE_EXHAUSTED, not UNAVAILABLE: a client must not retry at once.
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, refused.value
    assert len(mesh.grpc_calls) == before + LIMIT_BURST


@live
async def test_a_websocket_call_is_one_request_however_many_messages(mesh: Mesh) -> None:
    headers = {"authorization": "Bearer csk_socket_secret"}
    url = f"ws://127.0.0.1:{mesh.limited.listener_port}/v1/sentiment/stream?call_id=limited-1"
    async with ws_connect(url, additional_headers=headers, ping_interval=None, open_timeout=5) as ws:
        for i in range(10):
            await ws.send(f"line {i}")
            assert await ws.recv() == f"echo: line {i}"
    async with _client(mesh.limited.listener_port) as client:
        answers = [(await client.get("/v1/calls", headers=headers)).status_code for _ in range(2)]
    assert answers == [200, 429]  # the upgrade took one token, the ten messages none


@live
async def test_health_checks_are_never_limited(mesh: Mesh) -> None:
    async with _client(mesh.limited.listener_port, "127.0.0.4") as client:
        for _ in range(10):  # five times the burst each: a load balancer polling, `callsense up` waiting
            for path in ("/readyz", "/healthz", "/readyz?verbose=1"):
                answer = await client.get(path)
                assert answer.status_code == 200, path
                assert "x-ratelimit-limit" not in answer.headers, path
        # They spent none of the address's tokens either.
        answers = [(await client.get("/docs")).status_code for _ in range(3)]
        assert answers == [200, 200, 429]


@live
async def test_security_headers_on_every_answer(mesh: Mesh) -> None:
    expected = dict(SECURITY_HEADERS)
    async with _client(mesh.port) as client:
        for path, status in [("/docs", 200), ("/metrics", 404)]:  # the gateway's answer, and Envoy's own
            answer = await client.get(path)
            assert answer.status_code == status
            assert {k: answer.headers.get(k) for k in expected} == expected, path
            assert "strict-transport-security" not in answer.headers  # plaintext: no HSTS
        # The gateway's own headers win: Envoy only adds what it left out.
        own = await client.get(OWN_HEADERS_PATH)
        assert {k: own.headers.get_list(k) for k in OWN_HEADERS} == {k: [v] for k, v in OWN_HEADERS.items()}
        assert own.headers["x-content-type-options"] == "nosniff"
    async with _client(mesh.limited.listener_port, "127.0.0.5") as client:  # Envoy's 429 too
        answers = [await client.get("/docs") for _ in range(LIMIT_BURST + 1)]
        assert answers[-1].status_code == 429
        assert {k: answers[-1].headers.get(k) for k in expected} == expected


@live
async def test_tls_https_for_browsers_and_rest(mesh: Mesh) -> None:
    for host in ("localhost", "127.0.0.1"):  # both names the certificate holds
        async with httpx.AsyncClient(verify=mesh.tls.ssl_context(), timeout=5) as client:
            answer = await client.get(f"https://{host}:{mesh.tls.port}/docs", headers={"x-call-id": "tls-1"})
        assert answer.status_code == 200 and answer.text.endswith(" /docs\n"), host
        assert answer.headers["strict-transport-security"] == "max-age=31536000"
    # The gateway learns the scheme from Envoy (it marks its session cookie Secure by it).
    (seen, *_) = [r for r in mesh.http_requests if r.headers.get("x-call-id") == "tls-1"]
    assert seen.headers["x-forwarded-proto"] == "https"


@live
async def test_tls_grpc_over_h2(mesh: Mesh) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=mesh.tls.cert.read_bytes())
    async with grpc.aio.secure_channel(f"localhost:{mesh.tls.port}", credentials) as channel:
        assert await channel.unary_unary("/callsense.v1.Sentiment/Ping")(b"", timeout=5) == b"gateway_grpc"
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


@live
async def test_tls_websocket(mesh: Mesh) -> None:
    url = f"wss://localhost:{mesh.tls.port}/v1/sentiment/stream?call_id=tls-ws"
    async with ws_connect(url, ssl=mesh.tls.ssl_context(), ping_interval=None, open_timeout=5) as ws:
        await ws.send("start")
        assert await ws.recv() == "echo: start"


@live
async def test_tls_port_refuses_plaintext_and_the_internal_listener_stays_plain(mesh: Mesh) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(f"http://127.0.0.1:{mesh.tls.port}/docs")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _unary(f"127.0.0.1:{mesh.tls.port}", "/callsense.v1.Sentiment/Ping")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # The internal listener (the gateway's mesh proxy) is inside the host or cluster: plaintext, as before.
    internal = f"127.0.0.1:{mesh.tls.layout.internal_port}"
    assert await _unary(internal, "/callsense.v1.Scorer/Ping") == b"scorer"


# --- the identity provider, live: a real Envoy validating JWTs ------------------------------------------


@dataclass(frozen=True)
class JwtEdge:
    layout: MeshLayout
    key: Path
    """The identity provider's signing key (its public half is the Envoy's JWKS file)."""
    other_key: Path
    """Anybody else's key, with the same key id."""

    def token(self, key: Path | None = None, **claims: Any) -> str:
        return _jwt(key or self.key, _claims(**claims))

    @property
    def port(self) -> int:
        return self.layout.listener_port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jwt_edge(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[JwtEdge]:
    """The module's upstreams behind one more Envoy that validates the JWTs of a local identity provider
    (a JWKS file), with CALLSENSE_EDGE_SECRET in its environment as `callsense up` gives it."""
    directory = tmp_path_factory.mktemp("envoy-jwt")
    key, other = _rsa_key(directory / "idp.key"), _rsa_key(directory / "other.key")
    jwks = directory / "jwks.json"
    jwks.write_text(json.dumps(_jwks(key, "k1")))
    layout = _ports(
        replace(
            mesh.layout,
            otlp_endpoint=None,
            jwt_issuer=ISSUER,
            jwt_audiences=[AUDIENCE],
            jwt_jwks_file=str(jwks),
        )
    )
    async with _envoy(layout, directory, env={EDGE_SECRET_ENV: EDGE_SECRET}):
        yield JwtEdge(layout, key, other)


FORGED = {JWT_PAYLOAD_HEADER: _b64url(b'{"tenant":"globex","role":"admin"}'), EDGE_HEADER: "forged-secret"}
"""What a client might send to pass as someone Envoy vouched for."""


async def _seen(mesh: Mesh, port: int, path: str, headers: Mapping[str, str]) -> Request:
    """GET ``path`` through the listener at ``port``; the request as the gateway_http replica saw it."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
        reply = await client.get(path, headers=dict(headers))
    assert reply.status_code == 200 and reply.text.endswith(f" {path}\n"), (reply.status_code, reply.text)
    (seen,) = [r for r in mesh.http_requests if r.path == path]
    return seen


def _claims_of(request_headers: Any) -> dict[str, Any]:
    (encoded,) = request_headers.get_all(JWT_PAYLOAD_HEADER)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    return claims


@live
async def test_a_valid_jwt_reaches_the_gateway_as_its_claims_and_the_edge_secret(
    mesh: Mesh, jwt_edge: JwtEdge
) -> None:
    claims = _claims(role="agent", agent="a1")
    token = _jwt(jwt_edge.key, claims)
    for path, forged in [("/jwt/valid", {}), ("/jwt/valid-and-forged", FORGED)]:
        seen = await _seen(mesh, jwt_edge.port, path, {"authorization": f"Bearer {token}", **forged})
        assert _claims_of(seen.headers) == claims  # Envoy's payload only: a forged one was removed first
        assert seen.headers.get_all(EDGE_HEADER) == [EDGE_SECRET]
        assert "authorization" not in seen.headers  # the token itself stays at the edge


@live
async def test_a_token_envoy_does_not_accept_passes_without_claims(mesh: Mesh, jwt_edge: JwtEdge) -> None:
    """Expired, another issuer, another audience, another key's signature, no expiry: the request goes on
    untouched (the gateway answers 401: it is no key), never with a payload."""
    now = int(time.time())
    bad = {
        "expired": jwt_edge.token(exp=now - 3600, iat=now - 7200),
        "issuer": jwt_edge.token(iss="https://evil.example.com/"),
        "audience": jwt_edge.token(aud="another-app"),
        "signature": jwt_edge.token(jwt_edge.other_key),
        "no-exp": _jwt(jwt_edge.key, {k: v for k, v in _claims().items() if k != "exp"}),
        "not-yet": jwt_edge.token(nbf=now + 3600),
        "tampered": (lambda t: t[: t.index(".") + 1] + _b64url(b'{"role":"admin"}') + t[t.rindex(".") :])(
            jwt_edge.token()
        ),
    }
    for name, token in bad.items():
        path = f"/jwt/bad-{name}"
        seen = await _seen(mesh, jwt_edge.port, path, {"authorization": f"Bearer {token}", **FORGED})
        assert seen.headers.get_all(JWT_PAYLOAD_HEADER) == [], name
        assert seen.headers.get_all("authorization") == [f"Bearer {token}"], name
        assert seen.headers.get_all(EDGE_HEADER) == [EDGE_SECRET], name


@live
async def test_api_keys_and_no_credential_pass_untouched(mesh: Mesh, jwt_edge: JwtEdge) -> None:
    key = "Bearer csk_0123456789ab_" + "A" * 43
    seen = await _seen(mesh, jwt_edge.port, "/jwt/api-key", {"authorization": key, **FORGED})
    assert seen.headers.get_all("authorization") == [key]
    assert seen.headers.get_all(JWT_PAYLOAD_HEADER) == []
    anonymous = await _seen(mesh, jwt_edge.port, "/jwt/anonymous", FORGED)
    assert "authorization" not in anonymous.headers
    assert anonymous.headers.get_all(JWT_PAYLOAD_HEADER) == []
    assert anonymous.headers.get_all(EDGE_HEADER) == [EDGE_SECRET]


@live
async def test_identity_headers_cannot_be_forged_through_a_listener_without_jwt(
    mesh: Mesh, jwt_edge: JwtEdge
) -> None:
    """The internal listener validates nothing and vouches for nobody; the module's Envoy without an
    identity provider neither: a client's own payload and edge headers never get through."""
    token = jwt_edge.token()
    for port, path in [
        (jwt_edge.layout.internal_port, "/jwt/internal"),
        (mesh.port, "/jwt/no-provider"),
        (mesh.internal_port, "/jwt/no-provider-internal"),
    ]:
        seen = await _seen(mesh, port, path, {"authorization": f"Bearer {token}", **FORGED})
        assert seen.headers.get_all("authorization") == [f"Bearer {token}"], path
        assert seen.headers.get_all(JWT_PAYLOAD_HEADER) == [], path
        assert seen.headers.get_all(EDGE_HEADER) == [], path


@live
async def test_jwt_over_grpc_and_the_websocket_upgrade(mesh: Mesh, jwt_edge: JwtEdge) -> None:
    claims = _claims(sub="grpc-user")
    metadata = (("authorization", f"Bearer {_jwt(jwt_edge.key, claims)}"), *FORGED.items())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{jwt_edge.port}") as channel:
        ping = channel.unary_unary("/callsense.v1.Sentiment/Ping")
        assert await ping(b"", metadata=metadata, timeout=5) == b"gateway_grpc"
    seen = mesh.grpc_metadata[-1]
    assert "authorization" not in seen and seen[EDGE_HEADER] == EDGE_SECRET
    assert _claims_of(_Multi(seen)) == claims

    ws_claims = _claims(sub="ws-user")
    headers = {"authorization": f"Bearer {_jwt(jwt_edge.key, ws_claims)}", **FORGED}
    url = f"ws://127.0.0.1:{jwt_edge.port}/jwt/stream?call_id=jwt-ws"
    async with ws_connect(url, additional_headers=headers, ping_interval=None, open_timeout=5) as ws:
        await ws.send("start")
        assert await ws.recv() == "echo: start"
    (upgrade,) = [r for r in mesh.http_requests if r.path.startswith("/jwt/stream")]
    assert _claims_of(upgrade.headers) == ws_claims
    assert upgrade.headers.get_all(EDGE_HEADER) == [EDGE_SECRET]


class _Multi(dict[str, Any]):
    """gRPC metadata (one value per key) read like HTTP headers."""

    def get_all(self, key: str) -> list[Any]:
        return [self[key]] if key in self else []
