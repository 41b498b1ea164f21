"""Browser sign-in with the company's identity provider at the edge: Envoy's oauth2 filter (OIDC authorization
code flow) in front of jwt_authn, on the public listener.

The settings are checked as strictly as the JWT ones; the generated config passes ``envoy --mode validate``;
and the flow is tried for real: a real OIDC provider (``oidc-provider-mock``: its own authorize page, token
endpoint and JWKS; callsense registered as a client with a secret it checks), a real Envoy built from
``tools.envoy_config``, and a real gateway behind it. A browser (httpx, following redirects by hand, keeping
cookies) opening a page without a session is sent to the provider, signs in there as a user with a tenant
and a role, comes back to ``/oauth2/callback`` and on to its page, which the gateway serves for that
tenant; API clients never see a redirect (401 JSON without a credential, keys as before); a key's browser
session still works; ``/oauth2/signout`` ends the provider session."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio
from oidc_provider_mock import User, run_server_in_thread

from callsense.config import EDGE_SECRET_ENV, ConfigError, load_config
from callsense.v1 import sentiment_pb2, sentiment_pb2_grpc
from gateway.auth.authenticator import SESSION_COOKIE
from gateway.auth.edge import EdgeTrust
from gateway.auth.web import OIDC_BROWSER_ENV
from tests.support.mesh import MeshServices, RunningGateway
from tests.tools.test_envoy import EDGE_SECRET, _envoy, _filter_names, _hcm, _ports, _validate
from tools.envoy_config import (
    ID_TOKEN_HEADER,
    JWT_PROVIDER,
    OIDC_CALLBACK_PATH,
    OIDC_CLIENT_SECRET,
    OIDC_FILTER,
    OIDC_HMAC_SECRET,
    OIDC_SIGNOUT_PATH,
    OIDC_TOKEN_CLUSTER,
    MeshLayout,
    build,
    render,
)
from tools.ports import free_port, free_ports
from tools.up import UpOptions, edge_overrides, mesh_specs, self_signed_certificate

# The provider's library (authlib) warns about its own use of a deprecated hook: not ours, only noise.
pytestmark = pytest.mark.filterwarnings("ignore:get_jwt_config:DeprecationWarning")

ISSUER = "https://login.example.com"
CLIENT_ID = "callsense-web"
OIDC = {
    "oidc_authorize_url": f"{ISSUER}/oauth2/v1/authorize",
    "oidc_token_url": f"{ISSUER}/oauth2/v1/token",
    "oidc_client_id": CLIENT_ID,
    "oidc_client_secret_file": "/run/secrets/oidc-client-secret",
    "oidc_hmac_secret_file": "/run/secrets/oidc-hmac",
}
JWT = {
    "jwt_issuer": ISSUER,
    "jwt_audiences": [CLIENT_ID],
    "jwt_jwks_uri": f"{ISSUER}/oauth2/v1/keys",
}
OIDC_VARS = {
    "CALLSENSE_OIDC_AUTHORIZE_URL": OIDC["oidc_authorize_url"],
    "CALLSENSE_OIDC_TOKEN_URL": OIDC["oidc_token_url"],
    "CALLSENSE_OIDC_CLIENT_ID": CLIENT_ID,
    "CALLSENSE_OIDC_CLIENT_SECRET_FILE": OIDC["oidc_client_secret_file"],
    "CALLSENSE_OIDC_HMAC_SECRET_FILE": OIDC["oidc_hmac_secret_file"],
}
JWT_VARS = {
    "CALLSENSE_JWT_ISSUER": ISSUER,
    "CALLSENSE_JWT_AUDIENCES": CLIENT_ID,
    "CALLSENSE_JWT_JWKS_URI": JWT["jwt_jwks_uri"],
}


def _oidc_layout(**more: Any) -> MeshLayout:
    return MeshLayout(**(JWT | OIDC | more))


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _oauth2(config: dict[str, Any]) -> dict[str, Any]:
    (found,) = [f["typed_config"] for f in _hcm(config, "public")["http_filters"] if f["name"] == OIDC_FILTER]
    oauth2: dict[str, Any] = found["config"]
    return oauth2


# --- the settings and the generated config ---------------------------------------------------------------


def test_without_oidc_settings_no_oauth2_filter() -> None:
    for layout in (MeshLayout(), MeshLayout(**JWT)):
        config = build(layout)
        assert not layout.oidc
        for listener in ("public", "internal"):
            assert OIDC_FILTER not in _filter_names(config, listener)
        assert OIDC_TOKEN_CLUSTER not in _clusters(config)
        assert "secrets" not in config["static_resources"]


def test_oauth2_runs_on_the_public_listener_before_jwt_authn() -> None:
    config = build(_oidc_layout())
    assert _filter_names(config, "public") == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.local_ratelimit",
        OIDC_FILTER,
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.router",
    ]
    assert OIDC_FILTER not in _filter_names(config, "internal")
    oauth2 = _oauth2(config)
    assert oauth2["authorization_endpoint"] == OIDC["oidc_authorize_url"]
    assert oauth2["token_endpoint"] == {
        "cluster": OIDC_TOKEN_CLUSTER,
        "uri": OIDC["oidc_token_url"],
        "timeout": "5s",
    }
    assert oauth2["redirect_uri"] == f"%REQ(x-forwarded-proto)%://%REQ(:authority)%{OIDC_CALLBACK_PATH}"
    assert oauth2["redirect_path_matcher"] == {"path": {"exact": "/oauth2/callback"}}
    assert oauth2["signout_path"] == {"path": {"exact": "/oauth2/signout"}}
    assert oauth2["auth_scopes"] == ["openid", "email", "profile"]
    # The ID token goes on to jwt_authn, which reads it from that header as well as from Authorization.
    assert oauth2["forward_id_token"] == {"header": ID_TOKEN_HEADER}
    assert "forward_bearer_token" not in oauth2
    (jwt,) = [
        f for f in _hcm(config, "public")["http_filters"] if f["name"] == "envoy.filters.http.jwt_authn"
    ]
    assert jwt["typed_config"]["providers"][JWT_PROVIDER]["from_headers"] == [
        {"name": "authorization", "value_prefix": "Bearer "},
        {"name": ID_TOKEN_HEADER},
    ]
    # Every cookie Envoy sets is SameSite=Lax (Envoy adds HttpOnly and Secure to each itself).
    assert len(oauth2["cookie_configs"]) == 7
    assert all(c == {"same_site": "LAX"} for c in oauth2["cookie_configs"].values())
    # The secrets are the operator's files, never in the bootstrap.
    assert oauth2["credentials"] == {
        "client_id": CLIENT_ID,
        "token_secret": {"name": OIDC_CLIENT_SECRET},
        "hmac_secret": {"name": OIDC_HMAC_SECRET},
    }
    assert config["static_resources"]["secrets"] == [
        {
            "name": OIDC_CLIENT_SECRET,
            "generic_secret": {"secret": {"filename": OIDC["oidc_client_secret_file"]}},
        },
        {"name": OIDC_HMAC_SECRET, "generic_secret": {"secret": {"filename": OIDC["oidc_hmac_secret_file"]}}},
    ]


def test_api_clients_pass_and_only_navigations_are_redirected() -> None:
    oauth2 = _oauth2(build(_oidc_layout()))
    passed = oauth2["pass_through_matcher"]
    assert {"name": "authorization", "present_match": True} in passed
    assert {"name": "cookie", "string_match": {"contains": f"{SESSION_COOKIE}="}} in passed
    prefixes = {m["string_match"]["prefix"] for m in passed if m["name"] == ":path"}
    assert prefixes == {"/healthz", "/readyz", "/signin", "/static/", "/docs", "/openapi.json"}
    assert oauth2["allow_failed_matcher"] == [
        {
            "name": "sec-fetch-mode",
            "string_match": {"exact": "navigate"},
            "invert_match": True,
            "treat_missing_header_as_empty": True,
        },
        {"name": ":path", "string_match": {"prefix": "/v1/"}},
    ]


def test_the_token_endpoint_is_reached_over_checked_tls() -> None:
    config = build(_oidc_layout(jwt_jwks_ca="/etc/company-ca.pem"))
    cluster = _clusters(config)[OIDC_TOKEN_CLUSTER]
    assert cluster["type"] == "LOGICAL_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "login.example.com", "port_value": 443}}
    tls = cluster["transport_socket"]["typed_config"]
    assert tls["sni"] == "login.example.com"
    assert tls["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": "/etc/company-ca.pem"},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": "login.example.com"}}],
    }
    # A local test provider over plain http on a loopback address: no TLS.
    local = _oidc_layout(oidc_token_url="http://127.0.0.1:5556/token")
    assert "transport_socket" not in _clusters(build(local))[OIDC_TOKEN_CLUSTER]


def test_oidc_settings_from_the_environment() -> None:
    env = JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_SCOPES": "openid email  groups"}
    layout = MeshLayout.from_config(load_config({}), env=env)
    assert layout.oidc and layout.jwt
    assert (layout.oidc_authorize_url, layout.oidc_token_url) == (
        OIDC["oidc_authorize_url"],
        OIDC["oidc_token_url"],
    )
    assert layout.oidc_client_id == CLIENT_ID
    assert layout.oidc_client_secret_file == OIDC["oidc_client_secret_file"]
    assert layout.oidc_hmac_secret_file == OIDC["oidc_hmac_secret_file"]
    assert layout.oidc_scopes == ("openid", "email", "groups")
    assert MeshLayout.from_config(load_config({}), env=JWT_VARS | OIDC_VARS).oidc_scopes == (
        "openid",
        "email",
        "profile",
    )
    assert not MeshLayout.from_config(load_config({}), env=JWT_VARS).oidc


def _without(env: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k != name}


@pytest.mark.parametrize(
    ("env", "match"),
    [
        # Each of the settings is needed, and named by its variable.
        *(
            (_without(JWT_VARS | OIDC_VARS, variable), variable)
            for variable in OIDC_VARS
            if variable != "CALLSENSE_OIDC_AUTHORIZE_URL"
        ),
        (_without(JWT_VARS | OIDC_VARS, "CALLSENSE_OIDC_AUTHORIZE_URL"), "CALLSENSE_OIDC_AUTHORIZE_URL"),
        # The ID token is validated by jwt_authn: no OIDC without the JWT settings.
        (OIDC_VARS, "needs the JWT settings too"),
        # ... and its audience is the client id.
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_JWT_AUDIENCES": "another-app"}, "must be one of jwt_audiences"),
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_SCOPES": "email profile"}, "lacks 'openid'"),
        (JWT_VARS | {"CALLSENSE_OIDC_SCOPES": "openid"}, "without oidc_authorize_url"),
        # The sign-in and the token exchange never go in the clear (but to a loopback test provider).
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_TOKEN_URL": "http://login.example.com/token"}, "https"),
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_AUTHORIZE_URL": "http://login.example.com/a"}, "https"),
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_TOKEN_URL": "login.example.com/token"}, "not an https"),
        (JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_TOKEN_URL": "https://a:port/t"}, "not a URL"),
    ],
)
def test_oidc_settings_are_refused_unless_complete_and_safe(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        MeshLayout.from_config(load_config({}), env=env)


def test_loopback_http_is_allowed_for_a_local_provider() -> None:
    local = {
        "oidc_authorize_url": "http://localhost:5556/authorize",
        "oidc_token_url": "http://[::1]:5556/token",
    }
    assert _oidc_layout(**local).oidc


def test_oidc_config_passes_envoy_validation(tmp_path: Path) -> None:
    """Envoy reads the secret files and the CA bundle to validate: they exist here."""
    secret, hmac = tmp_path / "client-secret", tmp_path / "hmac"
    secret.write_text("s3cret")
    hmac.write_text("h" * 32)
    ca, ca_key = self_signed_certificate(tmp_path / "ca")
    files = {"oidc_client_secret_file": str(secret), "oidc_hmac_secret_file": str(hmac)}
    for layout in (
        _oidc_layout(jwt_jwks_ca=str(ca), **files),
        _oidc_layout(
            jwt_jwks_ca=str(ca), tls_cert=str(ca), tls_key=str(ca_key), rate_limit_per_ip=0, **files
        ),
        _oidc_layout(
            oidc_authorize_url="http://localhost:5556/authorize",
            oidc_token_url="http://127.0.0.1:5556/token",
            jwt_jwks_uri="http://localhost:5556/jwks",
            **files,
        ),
    ):
        _validate(render(layout), tmp_path)


def test_callsense_up_makes_one_hmac_secret_per_data_dir_and_tells_the_gateway(tmp_path: Path) -> None:
    config = load_config({"CALLSENSE_DATA_DIR": str(tmp_path)})
    client_secret = tmp_path / "client-secret"
    client_secret.write_text("s3cret")
    own = JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_CLIENT_SECRET_FILE": str(client_secret)}
    wanted = _without(own, "CALLSENSE_OIDC_HMAC_SECRET_FILE")
    overrides = edge_overrides(UpOptions(), config, env=wanted)
    made = Path(overrides["oidc_hmac_secret_file"])
    assert made.parent == tmp_path.resolve() / "oidc"
    assert made.stat().st_mode & 0o777 == 0o600 and made.parent.stat().st_mode & 0o777 == 0o700
    assert len(made.read_bytes()) >= 32 and not made.read_bytes().endswith(b"\n")
    # The same one again next time: a restart signs nobody out.
    secret = made.read_bytes()
    assert edge_overrides(UpOptions(), config, env=wanted) == overrides and made.read_bytes() == secret
    # The operator's own file wins; without OIDC there is none to make.
    assert "oidc_hmac_secret_file" not in edge_overrides(UpOptions(), config, env=own)
    assert "oidc_hmac_secret_file" not in edge_overrides(UpOptions(), config, env=JWT_VARS)
    layout = MeshLayout.from_config(config, env=wanted, **overrides)
    assert layout.oidc and layout.oidc_hmac_secret_file == str(made)
    # The gateway (only) learns that its sign-in page should offer the provider.
    specs = mesh_specs(config, UpOptions(), "postgresql://db/x", tmp_path / "e.yaml", oidc_browser=True)
    assert {spec.name for spec in specs if spec.env.get(OIDC_BROWSER_ENV) == "1"} == {"gateway"}
    specs = mesh_specs(config, UpOptions(), "postgresql://db/x", tmp_path / "e.yaml")
    assert not any(OIDC_BROWSER_ENV in spec.env for spec in specs)


def test_callsense_up_refuses_a_client_secret_file_envoy_would_misread(tmp_path: Path) -> None:
    """Envoy sends the file's bytes as they are: a secret written with echo (a trailing newline) is refused
    by the provider at every sign-in (the live test's provider showed it: 401 at its token endpoint)."""
    config = load_config({"CALLSENSE_DATA_DIR": str(tmp_path)})
    path = tmp_path / "client-secret"
    env = JWT_VARS | OIDC_VARS | {"CALLSENSE_OIDC_CLIENT_SECRET_FILE": str(path)}
    for content, match in [(None, "cannot read"), ("", "empty"), ("s3cret\n", "trailing newline")]:
        if content is not None:
            path.write_text(content)
        with pytest.raises(ConfigError, match=match):
            edge_overrides(UpOptions(), config, env=env)
    path.write_text("s3cret")
    assert edge_overrides(UpOptions(), config, env=env) == {}


# --- live: a real provider, a real Envoy, a real gateway --------------------------------------------------

USER = User(sub="mia", claims={"tenant": "acme", "role": "manager", "team": "east", "email": "mia@acme.test"})
"""The provider's user the browser signs in as: callsense's claims beside the standard ones."""
NAVIGATE = {"sec-fetch-mode": "navigate", "sec-fetch-dest": "document", "accept": "text/html"}
"""What a browser sends when the user opens a page (address bar, link, redirect)."""


@dataclass(frozen=True)
class OidcEdge:
    url: str
    """Envoy's public listener, https (Envoy marks its cookies Secure)."""
    provider: str
    gateway: RunningGateway
    cert: Path
    layout: MeshLayout

    def browser(self) -> httpx.AsyncClient:
        """A browser: its own cookie jar, redirects followed by hand so each one is seen."""
        context = ssl.create_default_context(cafile=str(self.cert))
        return httpx.AsyncClient(base_url=self.url, verify=context, timeout=10, follow_redirects=False)


@contextlib.contextmanager
def _provider() -> Iterator[str]:
    with run_server_in_thread(require_client_registration=True, user_claims=[USER]) as server:
        yield f"http://localhost:{server.server_port}"


@pytest_asyncio.fixture
async def oidc_edge(
    running_gateway: RunningGateway,
    mesh_services: MeshServices,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[OidcEdge]:
    """The provider, callsense registered with it as a client (its secret checked at the token endpoint),
    and Envoy (TLS with the self-signed certificate of `callsense up`) in front of a real gateway that
    shares the edge secret with it."""
    running_gateway.gateway.authenticator.edge = EdgeTrust(EDGE_SECRET)
    monkeypatch.setenv(OIDC_BROWSER_ENV, "1")
    public, internal, admin = free_ports(3)
    url = f"https://localhost:{public}"
    with _provider() as provider:
        async with httpx.AsyncClient(timeout=10) as client:
            registered = await client.post(
                f"{provider}/oauth2/clients",
                json={
                    "redirect_uris": [f"{url}{OIDC_CALLBACK_PATH}"],
                    "token_endpoint_auth_method": "client_secret_basic",
                },
            )
        assert registered.status_code == 201, registered.text
        client_id, client_secret = registered.json()["client_id"], registered.json()["client_secret"]
        secret, hmac = tmp_path / "client-secret", tmp_path / "hmac"
        secret.write_text(client_secret)
        hmac.write_text("hmac-secret-of-this-test-" + "x" * 32)
        cert, key = self_signed_certificate(tmp_path / "tls")
        gateway_http = urlsplit(running_gateway.http_url).netloc
        layout = _ports(
            MeshLayout(
                listener_host="127.0.0.1",
                gateway_http=[gateway_http],
                gateway_grpc=[running_gateway.grpc_target],
                chopper=[mesh_services.chopper_addr],
                scorer=[mesh_services.scorer_addr],
                postcall=[mesh_services.postcall_addr],
                asr=[f"127.0.0.1:{free_port()}"],
                access_log=False,
                tls_cert=str(cert),
                tls_key=str(key),
                jwt_issuer=provider,  # the provider's iss: its own URL
                jwt_audiences=[client_id],
                jwt_jwks_uri=f"{provider}/jwks",
                oidc_authorize_url=f"{provider}/oauth2/authorize",
                oidc_token_url=f"{provider}/oauth2/token",
                oidc_client_id=client_id,
                oidc_client_secret_file=str(secret),
                oidc_hmac_secret_file=str(hmac),
            ),
            [public, internal, admin],
        )
        async with _envoy(layout, tmp_path, env={EDGE_SECRET_ENV: EDGE_SECRET}):
            yield OidcEdge(url, provider, running_gateway, cert, layout)


def _set_cookies(response: httpx.Response) -> dict[str, SimpleCookie]:
    cookies: dict[str, SimpleCookie] = {}
    for header in response.headers.get_list("set-cookie"):
        cookie: SimpleCookie = SimpleCookie()
        cookie.load(header)
        (name,) = cookie.keys()
        cookies[name] = cookie
    return cookies


async def _sign_in_at_the_provider(edge: OidcEdge, browser: httpx.AsyncClient, page: str) -> httpx.Response:
    """Open ``page`` without a session and go through the provider's sign-in as USER; the answer of Envoy's
    callback (its redirect back to ``page``, with the session's cookies)."""
    opened = await browser.get(page, headers=NAVIGATE)
    assert opened.status_code == 302, (opened.status_code, opened.text)
    authorize = opened.headers["location"]
    assert authorize.startswith(f"{edge.provider}/oauth2/authorize?")
    query = parse_qs(urlsplit(authorize).query)
    assert query["client_id"] == [edge.layout.oidc_client_id]
    assert query["redirect_uri"] == [f"{edge.url}{OIDC_CALLBACK_PATH}"]
    assert query["scope"] == ["openid email profile"] and query["response_type"] == ["code"]
    # The provider's sign-in page (its form lists the predefined user), then the user's choice.
    form = await browser.get(authorize)
    assert form.status_code == 200 and 'value="mia"' in form.text
    chosen = await browser.post(authorize, data={"sub": USER.sub})
    assert chosen.status_code == 302, chosen.text
    callback = chosen.headers["location"]
    assert callback.startswith(f"{edge.url}{OIDC_CALLBACK_PATH}?code=")
    back = await browser.get(callback, headers=NAVIGATE)
    assert back.status_code == 302, (back.status_code, back.text)
    assert back.headers["location"] == f"{edge.url}{page}"
    return back


@pytest.mark.slow
async def test_a_browser_signs_in_at_the_provider_and_the_gateway_serves_its_tenant(
    oidc_edge: OidcEdge,
) -> None:
    async with oidc_edge.browser() as browser:
        back = await _sign_in_at_the_provider(oidc_edge, browser, "/reports")
        # Envoy's session cookies: HttpOnly, Secure, SameSite=Lax; none names a token in the clear.
        cookies = _set_cookies(back)
        assert {"BearerToken", "IdToken", "OauthHMAC", "OauthExpires"} <= set(cookies), list(cookies)
        for name in ("BearerToken", "IdToken", "OauthHMAC", "OauthExpires"):
            morsel = cookies[name][name]
            assert morsel["httponly"] and morsel["secure"], (name, morsel.OutputString())
            assert morsel["samesite"].lower() == "lax", (name, morsel.OutputString())
        assert not cookies["IdToken"]["IdToken"].value.startswith("eyJ")  # encrypted, not the JWT itself

        # The page itself, served by the gateway (not its redirect to /signin), and the tenant it sees.
        page = await browser.get("/reports", headers=NAVIGATE)
        assert page.status_code == 200 and "<title>" in page.text, (page.status_code, page.headers)
        # A page script's call (no navigation) with the same cookies: the provider's claims, as the gateway
        # took them from the ID token that jwt_authn validated.
        me = await browser.get("/v1/session")
        assert me.status_code == 200, me.text
        assert me.json() == {"tenant": "acme", "role": "manager", "agent": "", "team": "east"}
        calls = await browser.get("/v1/calls")
        assert calls.status_code == 200, calls.text

        # Signing out at the edge clears the session: the next page goes to the provider again, the API
        # says 401.
        signed_out = await browser.get(OIDC_SIGNOUT_PATH, headers=NAVIGATE)
        assert signed_out.status_code == 302, signed_out.text
        assert urlsplit(signed_out.headers["location"]).path == "/"
        cleared = _set_cookies(signed_out)
        assert {"BearerToken", "IdToken", "OauthHMAC"} <= set(cleared), list(cleared)
        # Each one overwritten and expired at once ("deleted", 1970): the browser drops them.
        assert all(m["expires"].endswith("1970 00:00:00 GMT") for c in cleared.values() for m in c.values())
        assert not any(browser.cookies.get(name) for name in ("BearerToken", "IdToken", "OauthHMAC"))
        assert (await browser.get("/v1/session")).status_code == 401
        again = await browser.get("/reports", headers=NAVIGATE)
        assert again.status_code == 302 and again.headers["location"].startswith(oidc_edge.provider)


@pytest.mark.slow
async def test_api_clients_never_see_the_providers_sign_in(oidc_edge: OidcEdge) -> None:
    async with oidc_edge.browser() as client:
        # No credential: the gateway's 401 JSON, never a redirect, whether or not a browser typed it in.
        for headers in ({}, NAVIGATE, {"accept": "application/json"}):
            answer = await client.get("/v1/calls", headers=headers)
            assert answer.status_code == 401, (headers, answer.status_code, answer.headers)
            assert answer.json()["error"]["code"] == "unauthenticated"
        # A page fetched by a script (no navigation) gets the gateway's answer, not the provider's.
        fetched = await client.get("/reports")
        assert fetched.status_code == 303 and fetched.headers["location"].startswith("/signin")
        # Health checks and the API docs are untouched.
        assert (await client.get("/healthz", headers=NAVIGATE)).status_code == 200
        assert (await client.get("/docs", headers=NAVIGATE)).status_code == 200
        # An API key works as before, on REST and gRPC; a bad one is a 401, not a redirect.
        key = oidc_edge.gateway.headers
        me = await client.get("/v1/session", headers=key | NAVIGATE)
        assert me.status_code == 200 and me.json()["tenant"] == "acme" and me.json()["role"] == "service"
        page = await client.get("/reports", headers=key | NAVIGATE)
        assert page.status_code == 200
        bad = await client.get("/v1/calls", headers={"authorization": "Bearer csk_nope"} | NAVIGATE)
        assert bad.status_code == 401
    credentials = grpc.ssl_channel_credentials(root_certificates=oidc_edge.cert.read_bytes())
    async with grpc.aio.secure_channel(urlsplit(oidc_edge.url).netloc, credentials) as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        request = sentiment_pb2.GetCallRequest(call_id="no-such-call")
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await stub.GetCall(request, timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as keyed:
            await stub.GetCall(request, metadata=tuple(oidc_edge.gateway.headers.items()), timeout=10)
        assert keyed.value.code() == grpc.StatusCode.NOT_FOUND  # past authentication


@pytest.mark.slow
async def test_the_key_sign_in_keeps_working_and_offers_the_provider(oidc_edge: OidcEdge) -> None:
    async with oidc_edge.browser() as browser:
        signin = await browser.get("/signin?next=%2Freports", headers=NAVIGATE)
        assert signin.status_code == 200 and 'data-testid="idp-link"' in signin.text
        options = await browser.get("/v1/session/options")
        assert options.json() == {"key": True, "identity_provider": True, "signout_path": OIDC_SIGNOUT_PATH}
        assert (
            await browser.get("/static/signin.js", headers={"sec-fetch-mode": "no-cors"})
        ).status_code == 200
        session = await browser.post("/v1/session", json={"key": oidc_edge.gateway.key})
        assert session.status_code == 201 and browser.cookies.get(SESSION_COOKIE)
        # With the key's session cookie a page is the gateway's to serve, not a trip to the provider.
        page = await browser.get("/reports", headers=NAVIGATE)
        assert page.status_code == 200, (page.status_code, page.headers)
        assert (await browser.get("/v1/session")).json()["role"] == "service"


@pytest.mark.slow
async def test_without_oidc_the_sign_in_page_offers_the_key_only(
    running_gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(OIDC_BROWSER_ENV, raising=False)
    async with httpx.AsyncClient(base_url=running_gateway.http_url, timeout=10) as client:
        options = await client.get("/v1/session/options")
    assert options.json() == {"key": True, "identity_provider": False, "signout_path": None}


def test_the_provider_issues_what_the_edge_relies_on() -> None:
    """Why the ID token and not the access token: this provider's access token is opaque (as many are),
    while its ID token is a JWT for callsense's client id (as OIDC requires of every provider)."""
    with _provider() as provider, httpx.Client(timeout=10) as client:
        registered = client.post(
            f"{provider}/oauth2/clients", json={"redirect_uris": ["https://cs/cb"]}
        ).json()
        params = {
            "client_id": registered["client_id"],
            "redirect_uri": "https://cs/cb",
            "response_type": "code",
            "scope": "openid email profile",
            "state": "s",
        }
        chosen = client.post(f"{provider}/oauth2/authorize", params=params, data={"sub": USER.sub})
        code = parse_qs(urlsplit(chosen.headers["location"]).query)["code"][0]
        tokens = client.post(
            f"{provider}/oauth2/token",
            data={"grant_type": "authorization_code", "code": code, "redirect_uri": "https://cs/cb"},
            auth=(registered["client_id"], registered["client_secret"]),
        ).json()
    assert tokens["access_token"].count(".") != 2  # not a JWT: jwt_authn could not check it
    assert tokens["id_token"].count(".") == 2
