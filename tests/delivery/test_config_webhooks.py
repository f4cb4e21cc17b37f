"""[[webhooks]] and [webhook_delivery] in the config: defaults, secrets from files or the
environment, and every problem named by its key path, never with a secret in it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tests.delivery.conftest import ENV, OLD_SECRET, SECRET
from tocsin.config import ConfigError, decode_webhook_secret, load, parse

ORGS = '[[orgs]]\nslug = "acme"\nname = "Acme"\n[[orgs]]\nslug = "beta"\nname = "Beta"\n'


def hook(**keys: str) -> str:
    keys = {"name": '"ops"', "url": '"https://chat.example/hooks/abc"', **keys}
    if "secret_file" not in keys:
        keys.setdefault("secret_env", '"HOOK_SECRET"')
    return "[[webhooks]]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v)


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(ORGS + text, env=ENV if env is None else env)
    return [str(p) for p in caught.value.problems]


def test_a_webhook_s_defaults() -> None:
    settings = parse(ORGS + hook(), env=ENV)
    [webhook] = settings.config.webhooks
    assert webhook.orgs == []  # every org
    assert webhook.triggers == [
        "ticket.opened",
        "ticket.started",
        "ticket.comment_added",
        "ticket.resolved",
        "ticket.reopened",
    ]
    assert webhook.timeout == timedelta(seconds=15)
    assert webhook.format == "standard"
    assert settings.webhook_keys == {"ops": (decode_webhook_secret(SECRET),)}
    delivery = settings.config.webhook_delivery
    assert delivery.disable_after == timedelta(days=5)
    assert [d.total_seconds() for d in delivery.schedule] == [
        5,
        300,
        1800,
        7200,
        18000,
        36000,
        36000,
    ]


def test_a_rotation_reads_both_secrets_current_first() -> None:
    settings = parse(ORGS + hook(previous_secret_env='"OLD_HOOK_SECRET"'), env=ENV)
    assert settings.webhook_keys["ops"] == (
        decode_webhook_secret(SECRET),
        decode_webhook_secret(OLD_SECRET),
    )


def test_a_secret_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ops").write_text(SECRET + "\n", encoding="utf-8")
    config = tmp_path / "tocsin.toml"
    config.write_text(ORGS + hook(secret_file='"secrets/ops"'), encoding="utf-8")
    assert load(config, env={}).webhook_keys["ops"] == (decode_webhook_secret(SECRET),)


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = parse(ORGS + hook(), env=ENV)
    assert "webhook_keys" not in repr(settings)
    assert SECRET.removeprefix("whsec_")[:10] not in repr(settings)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            hook(orgs='["acme", "zeta"]'), "webhooks[0].orgs[1]: no org 'zeta'", id="unknown org"
        ),
        pytest.param(
            hook(triggers='["ticket.closed"]'),
            "webhooks[0].triggers[0]: Input should be",
            id="trigger",
        ),
        pytest.param(hook(triggers="[]"), "webhooks[0].triggers: name at least one", id="none"),
        pytest.param(hook() + hook(), "webhooks: webhook names must be unique: ops", id="twice"),
        pytest.param(
            hook(secret_file='"/x"', secret_env='"HOOK_SECRET"'),
            "give exactly one of secret_file or secret_env",
            id="both",
        ),
        pytest.param(
            hook(secret_env='"NOPE"'),
            "webhooks[0].secret_env: environment variable NOPE is not set",
            id="unset",
        ),
        pytest.param(
            hook(secret_env='"PLAIN"'),
            "webhooks[0].secret_env: a webhook secret is whsec_ followed by base64",
            id="no prefix",
        ),
        pytest.param(
            hook(secret_env='"BAD64"'),
            "webhooks[0].secret_env: the part after whsec_ is not valid base64",
            id="not base64",
        ),
        pytest.param(
            hook(secret_env='"SHORT"'), "webhooks[0].secret_env: a webhook secret holds", id="short"
        ),
        pytest.param(
            hook(previous_secret_env='"NOPE"'),
            "webhooks[0].previous_secret_env: environment variable NOPE",
            id="previous",
        ),
        pytest.param(
            hook(url='"ftp://x/y"'),
            "webhooks[0].url: expected an http:// or https:// URL",
            id="url",
        ),
        pytest.param(
            hook(headers='{ "Webhook-Signature" = "x" }'),
            "webhooks[0].headers: 'Webhook-Signature' is set by tocsin",
            id="reserved header",
        ),
        pytest.param(
            hook(headers='{ "X-A" = "a\\nb" }'), "must be one line", id="header injection"
        ),
        pytest.param(hook(timeout='"0s"'), "webhooks[0].timeout: a timeout above 0", id="timeout"),
        pytest.param(hook(format='"discord"'), "webhooks[0].format: Input should be", id="format"),
        pytest.param(hook(name='"Ops Chat"'), "webhooks[0].name: String should match", id="name"),
        pytest.param(hook(colour='"red"'), "webhooks[0].colour: unknown key", id="unknown key"),
        pytest.param(
            "[webhook_delivery]\nper_endpoint_concurrency = 100\nconcurrency = 10\n",
            "per_endpoint_concurrency cannot exceed concurrency",
            id="concurrency",
        ),
        pytest.param(
            '[webhook_delivery]\nschedule = ["5s", "-1s"]\n',
            "webhook_delivery.schedule",
            id="schedule",
        ),
        pytest.param("[webhook_delivery]\njitter = 0.9\n", "webhook_delivery.jitter", id="jitter"),
    ],
)
def test_each_problem_is_named_by_its_key_path(text: str, expected: str) -> None:
    env = {
        **ENV,
        "PLAIN": "not-a-secret-format",
        "BAD64": "whsec_@@@@",
        "SHORT": "whsec_c2hvcnQ=",
    }
    found = problems(text, env)
    assert any(expected in p for p in found), found
    assert not any(value in p for p in found for value in env.values())  # no secret quoted
