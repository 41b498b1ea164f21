"""Per-tenant settings: the live badge and cue rules, the daily alert, the CRM and Slack webhooks, the
Twilio auth token that signs the tenant's Media Streams.

Read by the gateway (badge and cue rules, the CRM push enqueued as a call ends) and by the post-call
worker (webhook delivery, roll-ups and alerts). ``BadgeSettings`` holds the live rules' thresholds and
windows (gateway/live.py applies them; the summary's topic rules read ``competitor_names``).

Read once at start-up from the TOML file named by ``CALLSENSE_TENANTS_FILE`` (example:
callsense/tenants.example.toml)::

    [default]                          # every tenant, unless its own section says otherwise
    negative_rate_alert = 0.30
    timezone = "America/New_York"
    slack_webhook_url = "https://hooks.slack.com/services/..."
    [default.live]                     # fields of BadgeSettings (below)
    window_s = 30.0
    [tenants.acme]                     # the tenant id, as in a call's metadata ("tenant")
    crm_webhook_url = "https://crm.example.com/hooks/callsense"
    crm_webhook_secret_env = "ACME_CRM_SECRET"
    twilio_auth_token_env = "ACME_TWILIO_AUTH_TOKEN"
    [tenants.acme.live]
    red_enter = 0.25

Each layer overrides the one before it, key by key (``live`` and ``drift`` too): the built-in defaults; the
environment (``CALLSENSE_CRM_WEBHOOK_URL``, ``CALLSENSE_CRM_WEBHOOK_SECRET``, ``CALLSENSE_SLACK_WEBHOOK_URL``,
``CALLSENSE_NEGATIVE_RATE_ALERT``, ``CALLSENSE_TIMEZONE``); the file's ``[default]``; the tenant's own
section. A tenant that is not named (and a call without a tenant) gets ``[default]``. An empty URL switches
an inherited webhook off.

Keys of a section:
  negative_rate_alert     0..1: post the daily Slack alert when a team's negative rate is above it (0.30)
  alert_min_utterances    the least customer utterances in a team's day for an alert (10): one bad call of
                          three sentences is not a trend
  timezone                the IANA time zone whose midnight starts the tenant's day in roll-ups and daily
                          reports ("UTC"); a team in California wants its afternoon calls in today's figures
  slack_webhook_url       a Slack incoming webhook for the daily alert (none: no alert)
  crm_webhook_url         where each ended call's CRM fields are POSTed (none: no push)
  crm_webhook_secret      the HMAC key that signs the CRM pushes; or, better, crm_webhook_secret_env: the name
                          of an environment variable that holds it. A CRM URL without a secret is an error.
  retention_days          ended calls older than this many days are removed each night, utterances and
                          outbox rows with them, and audited (none: kept)
  store_transcripts       false: utterances are stored without their text (scores, tags, figures stay)
  allowed_origins         origins ("https://crm.example.com") whose pages may open the live WebSocket for
                          a signed-in user, besides the gateway's own (none)
  twilio_auth_token_env   the name of an environment variable holding the auth token of the tenant's Twilio
                          account: the gateway checks the X-Twilio-Signature of every Media Stream opened
                          at /v1/twilio/stream/<tenant> with it (gateway/auth/twilio_signature.py). No
                          token (the default): the tenant's Twilio streams are refused. A token in
                          [default] serves every tenant not named (one Twilio account for all).
  live                    a table of BadgeSettings fields (window_s, red_enter, ...)
  drift                   a table of DriftSettings fields (callsense/drift_settings.py: sigma,
                          baseline_change, trailing_days, min_history_days, min_utterances, alert): when a
                          day's language or scores have moved from the tenant's usual and from the training
                          text far enough for the drift alert (postcall/drift_rule.py)

Any other key, a value of the wrong type or out of range, or an unreadable file raises
``TenantConfigError`` naming the file, the section and the key.
"""

from __future__ import annotations

import functools
import math
import os
import tomllib
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callsense.config import ConfigError
from callsense.domain import Channel
from callsense.drift_settings import DEFAULT_DRIFT, DriftSettings

# --- the live rules' settings -------------------------------------------------------------------------------


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _check_finite_non_negative(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")


@dataclass(frozen=True)
class BadgeSettings:
    """Every threshold and window of the live rules (badge and cues), one object per tenant.

    Times are in seconds of call time; scores are in [0, 1]. The defaults and why:
    """

    # Rolling average over the last 30 s of the customer's timeline: long enough that one sentence (2-5 s)
    # is a small part of it, short enough that the badge reacts within a few exchanges.
    window_s: float = 30.0
    # AMBER (neutral) until the window holds 8 s of customer speech: an opening "hi, yes, go on" says
    # nothing about the mood, and one sentence alone must not decide the colour.
    min_evidence_s: float = 8.0
    # The product rule: RED when the average stays below 0.30 for MORE than 5 s (the score of an
    # utterance that is mostly negative; 0.30 is also the "negative spike" line of the call summary).
    red_enter: float = 0.30
    red_enter_sustain_s: float = 5.0
    # Back to AMBER only above 0.40 held for 5 s: a 0.10 band so that hovering around 0.30 does not flicker.
    red_exit: float = 0.40
    red_exit_sustain_s: float = 5.0
    # GREEN when clearly positive: above 0.65 (a mostly-positive utterance scores above it) for 5 s.
    green_enter: float = 0.65
    green_enter_sustain_s: float = 5.0
    # Leave GREEN below 0.55 for 3 s: again a 0.10 band, but quicker, because a green badge tells the rep
    # that all is well and should stop saying so soon once it is no longer true.
    green_exit: float = 0.55
    green_exit_sustain_s: float = 3.0
    # A slump (RED, or a cue) also needs at least this many separate customer utterances in the window under
    # the line, so one sentence, however long, never decides it; so does leaving GREEN, unless the average
    # is under the red line (one sharp worry in a happy call keeps it green, one long rant does not).
    min_low_utterances: int = 2
    # On a mono ("mixed") line the customer's voice is only there, in the mix: ignoring it would leave the
    # badge AMBER for the whole call. Tenants whose mixed lines are mostly the agent can turn this off.
    mixed_is_customer: bool = True

    # Cues: a slump is the average below 0.35 for more than 6 s. The line sits a little above the red one so
    # that advice can come while the call is still recoverable; the sustain is a little longer than the
    # badge's because a cue interrupts the rep and must be beyond doubt.
    cue_threshold: float = 0.35
    cue_sustain_s: float = 6.0
    # No cue in the first 20 s: pleasantries, and too little said to know the topic.
    cue_min_call_s: float = 20.0
    # At most one cue per 45 s (a rep needs time to act on one), and one topic at most once per 3 minutes
    # (the same advice again reads as nagging).
    cue_cooldown_s: float = 45.0
    cue_topic_repeat_s: float = 180.0
    # The topic comes from the last 45 s of both channels; a mention counts half as much every 15 s, so the
    # subject just raised outweighs the one discussed a minute ago.
    topic_window_s: float = 45.0
    topic_half_life_s: float = 15.0
    # Named competitors count as the competitor topic (per tenant: everyone has other rivals).
    competitor_names: tuple[str, ...] = ("Salesforce", "HubSpot", "Pipedrive", "Zoho", "Gong")

    def __post_init__(self) -> None:
        for name in (
            "window_s",
            "min_evidence_s",
            "red_enter_sustain_s",
            "red_exit_sustain_s",
            "green_enter_sustain_s",
            "green_exit_sustain_s",
            "cue_sustain_s",
            "cue_min_call_s",
            "cue_cooldown_s",
            "cue_topic_repeat_s",
            "topic_window_s",
            "topic_half_life_s",
        ):
            _check_finite_non_negative(name, getattr(self, name))
        for name in ("window_s", "topic_window_s", "topic_half_life_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.min_evidence_s > self.window_s:
            raise ValueError(
                f"min_evidence_s ({self.min_evidence_s}) cannot exceed window_s ({self.window_s}): "
                "the window could never hold that much speech"
            )
        for name in ("red_enter", "red_exit", "green_enter", "green_exit", "cue_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not self.red_enter < self.red_exit <= self.green_exit < self.green_enter:
            raise ValueError(
                "thresholds must satisfy red_enter < red_exit <= green_exit < green_enter "
                f"(got {self.red_enter}, {self.red_exit}, {self.green_exit}, {self.green_enter})"
            )
        if self.min_low_utterances < 1:
            raise ValueError(f"min_low_utterances must be >= 1, got {self.min_low_utterances}")
        if any(not name.strip() for name in self.competitor_names):
            raise ValueError("competitor_names must not contain empty names")

    # Call time is in milliseconds; these convert the settings once, rounding to whole milliseconds.
    @property
    def window_ms(self) -> int:
        return _ms(self.window_s)

    @property
    def min_evidence_ms(self) -> int:
        return _ms(self.min_evidence_s)

    def counts_as_customer(self, channel: Channel) -> bool:
        return channel == "customer" or (channel == "mixed" and self.mixed_is_customer)


DEFAULT_SETTINGS = BadgeSettings()


# --- tenants ------------------------------------------------------------------------------------------------

TENANTS_FILE_ENV = "CALLSENSE_TENANTS_FILE"
DEFAULT_NEGATIVE_RATE_ALERT = 0.30
DEFAULT_ALERT_MIN_UTTERANCES = 10

# Environment variable -> the key it sets in the environment layer.
_ENV_KEYS = {
    "CALLSENSE_CRM_WEBHOOK_URL": "crm_webhook_url",
    "CALLSENSE_CRM_WEBHOOK_SECRET": "crm_webhook_secret",
    "CALLSENSE_SLACK_WEBHOOK_URL": "slack_webhook_url",
    "CALLSENSE_NEGATIVE_RATE_ALERT": "negative_rate_alert",
    "CALLSENSE_TIMEZONE": "timezone",
}
_SECTION_KEYS = (
    "negative_rate_alert",
    "alert_min_utterances",
    "timezone",
    "slack_webhook_url",
    "crm_webhook_url",
    "crm_webhook_secret",
    "crm_webhook_secret_env",
    "allowed_origins",
    "twilio_auth_token_env",
    "retention_days",
    "store_transcripts",
    "live",
    "drift",
)
_NESTED_KEYS = ("live", "drift")
"""Keys whose value is a table of a settings class's fields, merged key by key across the layers."""
_SECRET_ENV_KEYS = ("crm_webhook_secret_env", "twilio_auth_token_env")
"""Keys that name an environment variable holding a secret (read with the environment, never stored)."""
_BADGE_TYPES: dict[str, Any] = typing.get_type_hints(BadgeSettings)
_DRIFT_TYPES: dict[str, Any] = typing.get_type_hints(DriftSettings)


@functools.cache
def time_zone(name: str) -> ZoneInfo:
    """The zone called ``name`` in the IANA tz database; ValueError that says what to write, else."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone {name!r} is not a known IANA time zone: write a name such as 'UTC', "
            "'America/Los_Angeles' or 'Europe/Berlin'"
        ) from None


class TenantConfigError(ConfigError):
    """The tenants file or a webhook variable holds something unusable; the message says where and what."""


@dataclass(frozen=True)
class TenantSettings:
    """One tenant's settings, resolved (defaults applied, secret read)."""

    live: BadgeSettings = DEFAULT_SETTINGS
    negative_rate_alert: float = DEFAULT_NEGATIVE_RATE_ALERT
    alert_min_utterances: int = DEFAULT_ALERT_MIN_UTTERANCES
    timezone: str = "UTC"
    """IANA name of the zone whose midnight starts this tenant's day (roll-ups, daily reports)."""
    # A Slack incoming webhook's URL is its credential: kept out of repr (and so out of logs).
    slack_webhook_url: str | None = field(default=None, repr=False)
    crm_webhook_url: str | None = None
    crm_webhook_secret: str | None = field(default=None, repr=False)
    allowed_origins: tuple[str, ...] = ()
    """Origins ("https://crm.example.com") whose pages may open the live WebSocket with a signed-in
    user's cookie, besides the gateway's own pages."""
    # The auth token of the tenant's Twilio account signs its Media Streams: a credential, kept out of repr.
    twilio_auth_token: str | None = field(default=None, repr=False)
    """None: the tenant's Twilio Media Streams are refused (nothing could prove they come from Twilio)."""
    retention_days: int | None = None
    """Ended calls older than this are removed each night with their utterances (callsense/privacy.py);
    None keeps them."""
    store_transcripts: bool = True
    """False: the live path scores and stores each utterance without its text (scores, tags and the
    summary's figures stay; the text reaches only the live clients)."""
    drift: DriftSettings = DEFAULT_DRIFT
    """When the day's indicators of the model's input count as drift (postcall/drift_rule.py)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.negative_rate_alert) and 0.0 <= self.negative_rate_alert <= 1.0):
            raise ValueError(f"negative_rate_alert must be in [0, 1], got {self.negative_rate_alert}")
        if self.alert_min_utterances < 1:
            raise ValueError(f"alert_min_utterances must be >= 1, got {self.alert_min_utterances}")
        time_zone(self.timezone)  # raises, saying what to write, for a name the tz database lacks
        for name in ("slack_webhook_url", "crm_webhook_url"):
            url = getattr(self, name)
            if url is not None:
                _check_url(name, url)
        if self.retention_days is not None and self.retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, got {self.retention_days}")
        if self.crm_webhook_url and not self.crm_webhook_secret:
            raise ValueError(
                "crm_webhook_url is set but no signing secret: set crm_webhook_secret_env (or "
                "crm_webhook_secret, or CALLSENSE_CRM_WEBHOOK_SECRET)"
            )


@dataclass(frozen=True)
class TenantsConfig:
    """Every tenant's settings: ``default`` for tenants not named in ``tenants``."""

    default: TenantSettings = TenantSettings()
    tenants: Mapping[str, TenantSettings] = field(default_factory=dict)
    source: str = "(built-in defaults)"
    """Where the settings came from (the file, or the environment), for messages."""

    def for_tenant(self, tenant: str) -> TenantSettings:
        return self.tenants.get(tenant, self.default)

    def zone(self, tenant: str) -> ZoneInfo:
        """The time zone of ``tenant``'s days."""
        return time_zone(self.for_tenant(tenant).timezone)

    def zones(self) -> set[ZoneInfo]:
        """Every time zone a tenant's day may be in (the default's included)."""
        return {time_zone(s.timezone) for s in (self.default, *self.tenants.values())}

    def crm_secret(self, tenant: str) -> str | None:
        """The key that signs the tenant's CRM pushes now (looked up at send time, never stored)."""
        return self.for_tenant(tenant).crm_webhook_secret

    def twilio_auth_token(self, tenant: str) -> str | None:
        """The auth token of the tenant's Twilio account, which signs its Media Streams (None: refused)."""
        return self.for_tenant(tenant).twilio_auth_token

    def badge_settings(self) -> Mapping[str, BadgeSettings]:
        """What ``SessionSettings.badge_settings`` takes: live settings by tenant id, where a tenant not
        named gets the ``[default]`` section's (``live.settings_for`` asks with ``.get(tenant, ...)``)."""
        return BadgeSettingsByTenant({t: s.live for t, s in self.tenants.items()}, self.default.live)


class BadgeSettingsByTenant(Mapping[str, BadgeSettings]):
    """The named tenants' live settings; ``get`` of any other tenant returns the fallback (``[default]``),
    whatever default the caller passes, so that the file's defaults reach tenants it does not name."""

    def __init__(self, named: Mapping[str, BadgeSettings], fallback: BadgeSettings) -> None:
        self._named = dict(named)
        self.fallback = fallback

    def __getitem__(self, tenant: str) -> BadgeSettings:
        return self._named[tenant]

    def __iter__(self) -> Iterator[str]:
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)

    def get(self, tenant: str, default: object = None) -> BadgeSettings:
        return self._named.get(tenant, self.fallback)


# --- loading ------------------------------------------------------------------------------------------------


def load_tenants(env: Mapping[str, str] | None = None) -> TenantsConfig:
    """The settings from the environment and ``CALLSENSE_TENANTS_FILE`` if set (blocking: at start-up)."""
    env = os.environ if env is None else env
    path = env.get(TENANTS_FILE_ENV, "").strip()
    if path:
        return load_tenants_file(Path(path), env)
    return _resolve(_env_layer(env), {}, {}, env, "(environment)")


def load_tenants_file(path: Path, env: Mapping[str, str] | None = None) -> TenantsConfig:
    """The settings of one TOML file, over the environment's defaults."""
    env = os.environ if env is None else env
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TenantConfigError(f"tenants file {path}: cannot read it: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TenantConfigError(f"tenants file {path}: not valid TOML: {exc}") from None
    source = str(path)
    unknown = sorted(set(document) - {"default", "tenants"})
    if unknown:
        raise TenantConfigError(
            f"{source}: unknown top-level key {unknown[0]!r}; expected [default] and [tenants.<id>] sections"
        )
    default = _section(document.get("default", {}), "[default]", source, env)
    tenants_table = document.get("tenants", {})
    if not isinstance(tenants_table, dict):
        raise TenantConfigError(f"{source}: 'tenants' must be a table of [tenants.<id>] sections")
    tenants = {
        str(tenant): _section(section, f"[tenants.{tenant}]", source, env)
        for tenant, section in tenants_table.items()
    }
    return _resolve(_env_layer(env), default, tenants, env, source)


def _resolve(
    env_layer: dict[str, Any],
    default: dict[str, Any],
    tenants: Mapping[str, dict[str, Any]],
    env: Mapping[str, str],
    source: str,
) -> TenantsConfig:
    base = _merge(env_layer, default)
    resolved_default = _build(base, "[default]", source)
    resolved = {t: _build(_merge(base, layer), f"[tenants.{t}]", source) for t, layer in tenants.items()}
    return TenantsConfig(resolved_default, resolved, source)


def _merge(base: dict[str, Any], layer: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **{k: v for k, v in layer.items() if k not in _NESTED_KEYS}}
    for key in _NESTED_KEYS:
        merged[key] = {**base.get(key, {}), **layer.get(key, {})}
    return merged


def _build(values: dict[str, Any], where: str, source: str) -> TenantSettings:
    try:
        live = BadgeSettings(**values["live"])
    except ValueError as exc:
        raise TenantConfigError(f"{source} {where}.live: {exc}") from None
    try:
        drift = DriftSettings(**values["drift"])
    except ValueError as exc:
        raise TenantConfigError(f"{source} {where}.drift: {exc}") from None
    try:
        return TenantSettings(
            live=live,
            negative_rate_alert=values.get("negative_rate_alert", DEFAULT_NEGATIVE_RATE_ALERT),
            alert_min_utterances=values.get("alert_min_utterances", DEFAULT_ALERT_MIN_UTTERANCES),
            timezone=values.get("timezone", "UTC"),
            slack_webhook_url=values.get("slack_webhook_url") or None,
            crm_webhook_url=values.get("crm_webhook_url") or None,
            crm_webhook_secret=values.get("crm_webhook_secret") or None,
            allowed_origins=values.get("allowed_origins", ()),
            twilio_auth_token=values.get("twilio_auth_token") or None,
            retention_days=values.get("retention_days"),
            store_transcripts=values.get("store_transcripts", True),
            drift=drift,
        )
    except ValueError as exc:
        raise TenantConfigError(f"{source} {where}: {exc}") from None


def _env_layer(env: Mapping[str, str]) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    for variable, key in _ENV_KEYS.items():
        value = env.get(variable, "").strip()
        if not value:
            continue
        if key == "negative_rate_alert":
            try:
                layer[key] = _rate(float(value))
            except ValueError:
                raise TenantConfigError(f"{variable}={value!r}: expected a number in [0, 1]") from None
        elif key.endswith("_url") or key == "timezone":
            try:
                layer[key] = _check_url(key, value) if key.endswith("_url") else time_zone(value).key
            except ValueError as exc:
                raise TenantConfigError(f"{variable}: {exc}") from None
        else:
            layer[key] = value
    return layer


def _section(section: object, where: str, source: str, env: Mapping[str, str]) -> dict[str, Any]:
    """One section's keys, type-checked; the secret read from its variable."""
    if not isinstance(section, dict):
        raise TenantConfigError(f"{source}: {where} must be a table")
    layer: dict[str, Any] = {}
    for key, value in section.items():
        if key not in _SECTION_KEYS:
            raise TenantConfigError(
                f"{source} {where}: {key}: unknown key; allowed: {', '.join(_SECTION_KEYS)}"
            )
        if key == "live":
            layer["live"] = _table(value, f"{source} {where}.live", BadgeSettings, _BADGE_TYPES)
        elif key == "drift":
            layer["drift"] = _table(value, f"{source} {where}.drift", DriftSettings, _DRIFT_TYPES)
        elif key not in _SECRET_ENV_KEYS:  # read below, with the environment
            layer[key] = _checked(f"{source} {where}: {key}", partial(_section_value, key, value))
    if "crm_webhook_secret_env" in section:
        at = f"{source} {where}: crm_webhook_secret_env"
        if "crm_webhook_secret" in section:
            raise TenantConfigError(f"{at}: set crm_webhook_secret or crm_webhook_secret_env, not both")
        layer["crm_webhook_secret"] = _secret_from_env(at, section["crm_webhook_secret_env"], env)
    if "twilio_auth_token_env" in section:
        at = f"{source} {where}: twilio_auth_token_env"
        layer["twilio_auth_token"] = _secret_from_env(at, section["twilio_auth_token_env"], env)
    return layer


def _secret_from_env(at: str, name: object, env: Mapping[str, str]) -> str:
    """The secret in the environment variable ``name`` (a ``*_env`` key's value): set and non-empty."""
    variable = _typed_at(at, name, str)
    secret = env.get(variable, "")
    if not secret:
        raise TenantConfigError(f"{at}: the environment variable {variable!r} is not set or empty")
    return secret


def _section_value(key: str, value: object) -> Any:
    if key == "negative_rate_alert":
        return _rate(_typed(value, float))
    if key == "alert_min_utterances":
        return _typed(value, int)
    if key == "retention_days":
        return _typed(value, int)
    if key == "store_transcripts":
        return _typed(value, bool)
    if key == "allowed_origins":
        origins: tuple[str, ...] = _typed(value, tuple[str, ...])
        for origin in origins:
            _check_origin(origin)
        return origins
    text: str = _typed(value, str)
    if key == "timezone":
        return time_zone(text).key
    if key.endswith("_url"):
        text = text.strip()
        if text:  # an empty URL switches an inherited webhook off
            _check_url(key, text)
    return text


def _table(table: object, where: str, settings: type, types: Mapping[str, Any]) -> dict[str, Any]:
    """A nested table (``live``, ``drift``): keys of the ``settings`` dataclass, each of its type."""
    if not isinstance(table, dict):
        raise TenantConfigError(f"{where} must be a table of {settings.__name__} fields")
    known = [f.name for f in fields(settings)]
    values = {}
    for key, value in table.items():
        if key not in types:
            raise TenantConfigError(f"{where}: {key}: unknown key; allowed: {', '.join(known)}")
        values[key] = _typed_at(f"{where}: {key}", value, types[key])
    return values


def _typed_at(at: str, value: object, expected: Any) -> Any:
    return _checked(at, partial(_typed, value, expected))


def _checked(at: str, convert: typing.Callable[[], Any]) -> Any:
    try:
        return convert()
    except (TypeError, ValueError) as exc:
        raise TenantConfigError(f"{at}: {exc}") from None


def _typed(value: object, expected: Any) -> Any:
    """``value`` as ``expected`` (float, int, bool, str, tuple[str, ...]); TOML ints pass as floats."""
    if expected is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if expected in (int, bool, str) and type(value) is expected:
        return value
    if typing.get_origin(expected) is tuple and isinstance(value, list):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
        raise TypeError("expected a list of strings")
    name = getattr(expected, "__name__", str(expected))
    raise TypeError(f"expected {'a list of strings' if name == 'tuple' else name}, got {value!r}")


def _rate(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"must be in [0, 1], got {value}")
    return value


def _check_origin(origin: str) -> None:
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        raise ValueError(f"an origin reads scheme://host[:port], got {origin!r}")


def _check_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http(s) URL with a host (scheme {parts.scheme!r})")
    return url
