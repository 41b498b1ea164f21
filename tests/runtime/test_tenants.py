"""Per-tenant settings from CALLSENSE_TENANTS_FILE and the environment (callsense/tenants.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callsense.tenants import (
    DEFAULT_SETTINGS,
    TenantConfigError,
    TenantsConfig,
    load_tenants,
    load_tenants_file,
)
from gateway.live import settings_for

EXAMPLE = Path(__file__).resolve().parents[2] / "callsense" / "tenants.example.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tenants.toml"
    path.write_text(text)
    return path


def test_the_example_file_loads() -> None:
    config = load_tenants_file(EXAMPLE, {"ACME_CRM_WEBHOOK_SECRET": "from-env"})
    acme = config.for_tenant("acme")
    assert acme.crm_webhook_url == "https://crm.acme.example/hooks/callsense"
    assert config.crm_secret("acme") == "from-env"
    assert (acme.negative_rate_alert, acme.live.red_enter) == (0.25, 0.25)
    assert "Globex CRM" in acme.live.competitor_names
    assert config.for_tenant("globex.eu").slack_webhook_url is not None
    assert config.for_tenant("anyone else") == config.default
    assert config.default.slack_webhook_url is None and config.default.crm_webhook_url is None
    assert "XXXXXXXX" not in repr(acme)  # a Slack URL is a credential: not in logs


def test_layers_env_then_default_then_tenant(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [default]
        alert_min_utterances = 4
        [default.live]
        window_s = 20
        red_enter = 0.2
        [tenants.acme]
        negative_rate_alert = 0.5
        slack_webhook_url = ""        # switches the inherited Slack webhook off
        [tenants.acme.live]
        red_enter = 0.25
        mixed_is_customer = false
        [tenants.beta]
        crm_webhook_secret = "beta-own-secret"
        timezone = "America/Los_Angeles"
        """,
    )
    env = {
        "CALLSENSE_SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/env",
        "CALLSENSE_CRM_WEBHOOK_URL": "https://crm.example/hook",
        "CALLSENSE_CRM_WEBHOOK_SECRET": "env-secret",
        "CALLSENSE_NEGATIVE_RATE_ALERT": "0.35",
        "CALLSENSE_TIMEZONE": "Europe/Berlin",
    }
    config = load_tenants_file(path, env)
    default, acme, beta = config.default, config.for_tenant("acme"), config.for_tenant("beta")
    assert (default.negative_rate_alert, default.alert_min_utterances) == (0.35, 4)
    assert default.slack_webhook_url == "https://hooks.slack.example/T/B/env"
    assert (default.crm_webhook_url, default.crm_webhook_secret) == ("https://crm.example/hook", "env-secret")
    assert (default.live.window_s, default.live.red_enter, default.live.min_evidence_s) == (20.0, 0.2, 8.0)
    # acme: its own threshold and live keys, everything else inherited key by key.
    assert (acme.negative_rate_alert, acme.alert_min_utterances, acme.slack_webhook_url) == (0.5, 4, None)
    assert (acme.live.window_s, acme.live.red_enter, acme.live.mixed_is_customer) == (20.0, 0.25, False)
    assert acme.crm_webhook_url == "https://crm.example/hook"
    assert beta.crm_webhook_secret == "beta-own-secret" and config.crm_secret("nobody") == "env-secret"
    # Days: the environment's zone for everyone but beta, which names its own.
    assert (default.timezone, acme.timezone, beta.timezone) == (
        "Europe/Berlin",
        "Europe/Berlin",
        "America/Los_Angeles",
    )
    assert str(config.zone("nobody")) == "Europe/Berlin" and str(config.zone("beta")) == "America/Los_Angeles"
    assert {str(z) for z in config.zones()} == {"Europe/Berlin", "America/Los_Angeles"}

    # What SessionSettings.badge_settings takes: named tenants, and the file's default for the others.
    badges = config.badge_settings()
    assert dict(badges) == {"acme": acme.live, "beta": beta.live}
    assert settings_for("acme", badges) == acme.live
    assert settings_for("not named", badges) == default.live != DEFAULT_SETTINGS


def test_environment_only_without_a_file() -> None:
    config = load_tenants({"CALLSENSE_SLACK_WEBHOOK_URL": "https://hooks.slack.example/T/B/z"})
    assert config.tenants == {} and config.default.slack_webhook_url == "https://hooks.slack.example/T/B/z"
    assert config.badge_settings().get("x") == DEFAULT_SETTINGS
    assert load_tenants({}) == TenantsConfig(source="(environment)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[default]\nnegative_rate_alrt = 0.3\n", r"\[default\]: negative_rate_alrt: unknown key"),
        ("[tenants.acme.live]\nred_entr = 0.3\n", r"\[tenants.acme\].live: red_entr: unknown key"),
        ("[tenant.acme]\n", "unknown top-level key 'tenant'"),
        ("[default]\nnegative_rate_alert = 1.5\n", r"negative_rate_alert: must be in \[0, 1\]"),
        ('[default]\nnegative_rate_alert = "high"\n', "negative_rate_alert: expected float"),
        ("[default]\nalert_min_utterances = 2.5\n", "alert_min_utterances: expected int"),
        ("[default]\nalert_min_utterances = 0\n", "alert_min_utterances must be >= 1"),
        ("[default.live]\nmixed_is_customer = 1\n", "mixed_is_customer: expected bool"),
        ("[default.live]\ncompetitor_names = [1, 2]\n", "competitor_names: expected a list of strings"),
        (
            "[default.live]\nred_enter = 0.5\n",
            r"\[default\].live: thresholds must satisfy red_enter < red_exit",
        ),
        ('[default]\nslack_webhook_url = "ftp://x"\n', "slack_webhook_url must be an http"),
        (
            '[tenants.acme]\ncrm_webhook_url = "https://crm.example/h"\n',
            r"\[tenants.acme\]: crm_webhook_url is set",
        ),
        ('[default]\ncrm_webhook_secret_env = "NOT_SET_ANYWHERE"\n', "'NOT_SET_ANYWHERE' is not set"),
        (
            '[default]\ncrm_webhook_secret = "a"\ncrm_webhook_secret_env = "B"\n',
            "crm_webhook_secret or crm_webhook_secret_env, not both",
        ),
        (
            '[tenants.acme]\ntwilio_auth_token_env = "NOT_SET_ANYWHERE"\n',
            r"\[tenants.acme\]: twilio_auth_token_env: the environment variable 'NOT_SET_ANYWHERE' is not",
        ),
        ("[default]\ntwilio_auth_token_env = 5\n", "twilio_auth_token_env: expected str"),
        # The token itself never goes in the file: only the name of the variable that holds it.
        ('[default]\ntwilio_auth_token = "abc"\n', r"\[default\]: twilio_auth_token: unknown key"),
        ("[default\n", "not valid TOML"),
        (
            '[tenants.acme]\ntimezone = "Pacific Time"\n',
            r"\[tenants.acme\]: timezone: timezone 'Pacific Time' is not",
        ),
        ("[default]\ntimezone = -8\n", "timezone: expected str"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(TenantConfigError, match=message) as caught:
        load_tenants_file(path, {})
    assert str(path) in str(caught.value)


def test_bad_environment_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TenantConfigError, match="CALLSENSE_NEGATIVE_RATE_ALERT='lots'"):
        load_tenants({"CALLSENSE_NEGATIVE_RATE_ALERT": "lots"})
    with pytest.raises(TenantConfigError, match="CALLSENSE_CRM_WEBHOOK_URL"):
        load_tenants({"CALLSENSE_CRM_WEBHOOK_URL": "crm.example/hook"})
    with pytest.raises(TenantConfigError, match="CALLSENSE_TIMEZONE: timezone 'PST' is not a known IANA"):
        load_tenants({"CALLSENSE_TIMEZONE": "PST"})
    with pytest.raises(TenantConfigError, match="crm_webhook_url is set but no signing secret"):
        load_tenants({"CALLSENSE_CRM_WEBHOOK_URL": "https://crm.example/hook"})
    missing = tmp_path / "nope.toml"
    with pytest.raises(TenantConfigError, match=f"{missing}: cannot read it"):
        load_tenants({"CALLSENSE_TENANTS_FILE": str(missing)})


def test_twilio_auth_tokens_come_from_the_environment(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
        [default]
        twilio_auth_token_env = "SHARED_TWILIO_TOKEN"
        [tenants.acme]
        twilio_auth_token_env = "ACME_TWILIO_TOKEN"
        [tenants.beta]
        timezone = "Europe/Berlin"
        """,
    )
    env = {"SHARED_TWILIO_TOKEN": "shared-token", "ACME_TWILIO_TOKEN": "acme-token"}
    config = load_tenants_file(path, env)
    assert config.twilio_auth_token("acme") == "acme-token"
    # beta and every tenant not named inherit [default]'s (one Twilio account for all of them).
    assert config.twilio_auth_token("beta") == config.twilio_auth_token("nobody") == "shared-token"
    assert "acme-token" not in repr(config) and "shared-token" not in repr(config)  # credentials: not logged
    # Without the key, no tenant takes Twilio streams.
    assert load_tenants({}).twilio_auth_token("acme") is None
    example = load_tenants_file(EXAMPLE, {"ACME_CRM_WEBHOOK_SECRET": "from-env"})
    assert example.twilio_auth_token("acme") is None  # commented out in the example
