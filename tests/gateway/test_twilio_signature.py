"""Twilio's request signature (gateway/auth/twilio_signature.py), without a gateway: the algorithm against
Twilio's published vectors, the URL Twilio signed for a Media Stream, and the check of an upgrade."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.websockets import WebSocket

from callsense.tenants import TenantsConfig, TenantSettings
from gateway.auth.twilio_signature import (
    check_twilio_signature,
    signature_matches,
    signed_url,
    twilio_signature,
)
from gateway.calls.errors import ErrorCode, InputError
from gateway.twilio import stream_path

# Twilio's request-validation example (its docs' code samples; the RequestValidator tests of twilio-php and
# twilio-csharp): auth token 12345, a POST to this URL with these parameters.
VECTOR_TOKEN = "12345"
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (VECTOR_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        # twilio-csharp: the URL is signed as written (no case folding, the port kept).
        ("https://MyCompany.com/myapp.php?foo=1&bar=2", "g9IN/x4Cft2g517EjYvEvM/W7LU="),
        ("https://MyCompany.com:1234/myapp.php?foo=1&bar=2", "PCqOZm8cnu/L6+u5i5fuEd+Iac4="),
    ],
)
def test_the_signature_is_twilios(url: str, expected: str) -> None:
    assert twilio_signature(VECTOR_TOKEN, url, VECTOR_PARAMS) == expected
    # The parameters are sorted by name: the order they came in does not matter.
    assert twilio_signature(VECTOR_TOKEN, url, dict(reversed(VECTOR_PARAMS.items()))) == expected
    assert twilio_signature("54321", url, VECTOR_PARAMS) != expected
    assert twilio_signature(VECTOR_TOKEN, url, {**VECTOR_PARAMS, "Digits": "9999"}) != expected


def test_a_websocket_upgrade_signs_the_url_alone() -> None:
    url = "wss://calls.example.com/v1/twilio/stream/acme"
    signature = twilio_signature("token", url)
    assert signature == twilio_signature("token", url, {})  # a GET has no parameters
    assert signature_matches("token", url, signature)
    assert signature_matches("token", url, f" {signature} ")
    # The default port spelled out, or a port left out, as Twilio's own validators allow.
    assert signature_matches("token", "wss://calls.example.com:443/v1/twilio/stream/acme", signature)
    with_port = twilio_signature("token", "wss://calls.example.com:443/v1/twilio/stream/acme")
    assert signature_matches("token", url, with_port)
    assert signature_matches("token", "wss://calls.example.com:8443/v1/twilio/stream/acme", signature)
    # Anything else is another URL, or another token.
    for other in (
        "wss://calls.example.com/v1/twilio/stream/beta",
        "ws://calls.example.com/v1/twilio/stream/acme",
        "https://calls.example.com/v1/twilio/stream/acme",
        "wss://evil.example/v1/twilio/stream/acme",
        "wss://calls.example.com/v1/twilio/stream/acme?x=1",
        "wss://calls.example.com/v1/twilio/stream/acme/",
    ):
        assert not signature_matches("token", other, signature), other
    assert not signature_matches("other token", url, signature)
    for garbage in ("", "x", signature[:-1], "é" * 28, signature + "="):
        assert not signature_matches("token", url, garbage), garbage


def _upgrade(path: str, headers: dict[str, str], query: str = "") -> WebSocket:
    scope: dict[str, Any] = {
        "type": "websocket",
        "scheme": "ws",  # behind Envoy the gateway sees plain ws, whatever Twilio dialled
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }

    async def nothing() -> Any:
        raise AssertionError("not used")

    return WebSocket(scope, nothing, nothing)


def test_the_signed_url_is_the_wss_url_twilio_dialled() -> None:
    host = {"host": "calls.example.com"}
    assert (
        signed_url(_upgrade("/v1/twilio/stream/acme", host))
        == "wss://calls.example.com/v1/twilio/stream/acme"
    )
    # X-Forwarded-Proto says how Envoy was reached, not what Twilio dialled (always wss).
    for proto in ("http", "https"):
        upgrade = _upgrade("/v1/twilio/stream/acme", {**host, "x-forwarded-proto": proto})
        assert signed_url(upgrade) == "wss://calls.example.com/v1/twilio/stream/acme"
    # The Host as sent (port included) and the path as received (percent-encoding kept).
    path = stream_path("globex eu")
    assert path == "/v1/twilio/stream/globex%20eu"
    upgrade = _upgrade(path, {"host": "127.0.0.1:8080"}, "a=1")
    assert signed_url(upgrade) == "wss://127.0.0.1:8080/v1/twilio/stream/globex%20eu?a=1"


def test_an_upgrade_passes_only_with_its_tenants_signature() -> None:
    tenants = TenantsConfig(
        default=TenantSettings(),
        tenants={"acme": TenantSettings(twilio_auth_token="acme-token"), "beta": TenantSettings()},
    )
    url = "wss://calls.example.com/v1/twilio/stream/acme"
    good = {"host": "calls.example.com", "x-twilio-signature": twilio_signature("acme-token", url)}
    check_twilio_signature(_upgrade("/v1/twilio/stream/acme", good), tenants, "acme")

    def refused(path: str, headers: dict[str, str], tenant: str) -> str:
        with pytest.raises(InputError) as caught:
            check_twilio_signature(_upgrade(path, headers), tenants, tenant)
        assert caught.value.code == ErrorCode.FORBIDDEN
        return caught.value.message

    assert "twilio_auth_token_env" in refused("/v1/twilio/stream/beta", good, "beta")
    assert "twilio_auth_token_env" in refused("/v1/twilio/stream/nobody", good, "nobody")
    assert "no X-Twilio-Signature" in refused("/v1/twilio/stream/acme", {"host": "calls.example.com"}, "acme")
    wrong = {**good, "x-twilio-signature": twilio_signature("beta-token", url)}
    assert f"not a signature of {url}" in refused("/v1/twilio/stream/acme", wrong, "acme")
    elsewhere = {**good, "host": "evil.example"}
    assert "wss://evil.example/" in refused("/v1/twilio/stream/acme", elsewhere, "acme")
