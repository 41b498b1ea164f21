"""Twilio's signature on a Media Stream's WebSocket upgrade: proof that a stream comes from the Twilio
account of the tenant its path names.

Twilio cannot send our API key, but it signs every request it makes, the WebSocket upgrade of a Media Stream
included, with the auth token of the account, in the ``X-Twilio-Signature`` header
(https://www.twilio.com/docs/usage/security#validating-requests; for Media Streams,
https://www.twilio.com/docs/global-infrastructure/firewall-configurations/media-streams-configuration).
Twilio's documented algorithm: take the full URL of the request; for a POST, append every parameter's name
then its value, sorted by name; sign that string with HMAC-SHA1 keyed by the auth token; base64 the digest.
The upgrade is a GET without parameters, and a Stream URL takes no query string (custom values travel as
``customParameters``), so the signed string is the URL alone, and the tenant must be in its path:
``/v1/twilio/stream/<tenant>``. The tenant's token comes from its ``twilio_auth_token_env``
(callsense/tenants.py); a tenant without one takes no Twilio streams.

Which URL Twilio signed: the one it dialled, i.e. the ``<Stream url>``. Media Streams connect over ``wss``
only (Twilio errors 31910, 31920), so its scheme is always ``wss`` (as in Twilio's own server helper,
twilio/twilio-agent-connect-python ``signature_validation.py``, which signs ``wss://`` URLs). The scheme is
deliberately NOT read from ``X-Forwarded-Proto``: this mesh's Envoy is the edge (``use_remote_address``,
no trusted hops), so it overwrites that header with how Envoy itself was reached, plain ``http`` behind the
TLS-terminating load balancer of a deployment, not what Twilio dialled. The host is the ``Host`` header,
which Envoy passes through as the client sent it; the path (and a query string, which Twilio never sends)
are the request's, as received. Like Twilio's own validators, the URL is also tried with the default port
(443) added, or its port removed, since Twilio's signing is not consistent about ports.

A signature is a function of the URL only: it proves that whoever opened the stream holds the token (or a
signature Twilio made for this very URL), nothing about when. Rotating the token (in Twilio and in the
variable) is the way to revoke.

Not the ``twilio`` package: its ``RequestValidator`` is these few lines, but the package is Twilio's whole
REST client, with requests, aiohttp and PyJWT behind it, and its port handling assumes http(s) URLs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
from collections.abc import Mapping

from fastapi import WebSocket

from callsense.tenants import TenantsConfig
from gateway.auth.access import forbidden
from gateway.auth.web import deny_upgrade
from gateway.calls.errors import InputError
from gateway.twilio import STREAM_PATH, UNTENANTED_STREAM_PATH

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "x-twilio-signature"
SIGNED_SCHEME = "wss"
"""The scheme of every URL Twilio opens a Media Stream on (and so signs)."""
_DEFAULT_PORT = 443
_HOST_PORT = re.compile(r"(.+):(\d{1,5})")


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str] | None = None) -> str:
    """``X-Twilio-Signature`` of a request to ``url`` with POST ``params`` (none for a GET, such as a
    WebSocket upgrade), signed with ``auth_token``: base64(HMAC-SHA1(token, url + name1 + value1 + ...)),
    the parameters sorted by name."""
    params = params or {}
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode(), payload.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def signature_matches(auth_token: str, url: str, signature: str) -> bool:
    """Whether ``signature`` signs ``url`` (or it with the default port added or its port removed) with
    ``auth_token``; compared in constant time."""
    given = signature.strip().encode()
    return any(
        hmac.compare_digest(twilio_signature(auth_token, candidate).encode(), given)
        for candidate in _port_variants(url)
    )


def signed_url(websocket: WebSocket) -> str:
    """The public URL Twilio dialled, and so signed, for this upgrade: ``wss://<Host><path>[?query]``."""
    host = websocket.headers.get("host", "")
    raw_path = websocket.scope.get("raw_path")
    path = raw_path.decode("latin-1") if isinstance(raw_path, bytes) else websocket.url.path
    query = websocket.scope.get("query_string", b"").decode("latin-1")
    return f"{SIGNED_SCHEME}://{host}{path}" + (f"?{query}" if query else "")


def check_twilio_signature(websocket: WebSocket, tenants: TenantsConfig, tenant: str) -> None:
    """Raise ``forbidden`` unless the upgrade carries a Twilio signature of its URL made with ``tenant``'s
    Twilio auth token."""
    token = tenants.twilio_auth_token(tenant)
    if not token:
        raise forbidden(
            f"tenant {tenant!r} takes no Twilio Media Streams: set twilio_auth_token_env in its section of "
            "the tenants file (CALLSENSE_TENANTS_FILE) to the name of an environment variable holding the "
            "auth token of its Twilio account"
        )
    signature = websocket.headers.get(SIGNATURE_HEADER)
    if not signature:
        raise forbidden(
            "no X-Twilio-Signature header: a Twilio Media Stream is accepted only as Twilio signs it, with "
            "the auth token of the tenant's Twilio account"
        )
    url = signed_url(websocket)
    if not signature_matches(token, url, signature):
        raise forbidden(
            f"the X-Twilio-Signature is not a signature of {url} with tenant {tenant!r}'s Twilio auth token: "
            "check the <Stream url> (it must be this URL) and the token in twilio_auth_token_env"
        )


async def accept_signed_stream(websocket: WebSocket, tenants: TenantsConfig, tenant: str) -> bool:
    """Whether a Twilio Media Stream's upgrade may be accepted; when not, it has been refused (HTTP 403 with
    the API's error body, before accepting) and the refusal logged."""
    try:
        check_twilio_signature(websocket, tenants, tenant)
    except InputError as err:
        log.warning("twilio stream for tenant %r refused: %s", tenant, err.message)
        await deny_upgrade(websocket, err)
        return False
    return True


async def refuse_untenanted_stream(websocket: WebSocket) -> None:
    """The old path, ``/v1/twilio/stream``, named no tenant and carried no check: refused with 403, the
    message naming the path to use, so that a Twilio number still pointed at it shows what to change."""
    err = forbidden(
        f"{UNTENANTED_STREAM_PATH} is no longer served: point the <Stream url> at "
        f"wss://<host>{STREAM_PATH.replace('{tenant}', '<tenant>')} and set the tenant's "
        "twilio_auth_token_env, so that the gateway can check Twilio's signature"
    )
    log.warning("twilio stream on %s refused: %s", UNTENANTED_STREAM_PATH, err.message)
    await deny_upgrade(websocket, err)


def _port_variants(url: str) -> list[str]:
    """``url`` as given, with its port removed and with the port (the default one if none) spelled out."""
    scheme, sep, rest = url.partition("://")
    host, slash, path = rest.partition("/")
    match = _HOST_PORT.fullmatch(host) if not host.endswith("]") else None
    bare, port = (match[1], int(match[2])) if match else (host, _DEFAULT_PORT)
    variants = [url, f"{scheme}{sep}{bare}{slash}{path}", f"{scheme}{sep}{bare}:{port}{slash}{path}"]
    return list(dict.fromkeys(variants))
