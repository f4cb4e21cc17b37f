"""The documentation against the code: README.md's config reference is what the models say,
every config field has a description, and every key the example config and the README's TOML
snippets use exists."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from tocsin import docs
from tocsin.config import Config, ConfigError, parse
from tocsin.probes.credentials import ApiKeyAuth, BasicAuth, BearerAuth, OAuth2Auth
from tocsin.probes.http import HttpSpec
from tocsin.probes.mqtt import MqttProbeSpec, SparkplugSpec
from tocsin.probes.push import PushSpec
from tocsin.probes.snmp import OidCheck, SnmpSpec

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "config.example.toml"
DEMO_SECRET = "whsec_" + "A" * 43 + "="  # 32 zero-ish bytes, base64: enough for parse()


def test_the_readme_holds_the_current_config_reference() -> None:
    block = docs.block_of(README.read_text(encoding="utf-8"))
    assert block is not None, f"README.md lacks the {docs.START} ... {docs.END} markers"
    assert block == docs.config_reference(), (
        "README.md's configuration reference is out of date with the config models: "
        f"regenerate it with `{docs.REGENERATE}`"
    )


def test_the_reference_reaches_every_model() -> None:
    models = set(docs.config_models())
    for model in (HttpSpec, SnmpSpec, OidCheck, MqttProbeSpec, SparkplugSpec, PushSpec):
        assert model in models
    for auth in (BearerAuth, BasicAuth, ApiKeyAuth, OAuth2Auth):
        assert auth in models
    titles = [s.title for s in docs.sections()]
    assert '`devices[].probe` (type = "snmp")' in titles
    assert '`integrations[].check.auth` (type = "oauth2")' in titles


def test_every_config_field_has_a_description() -> None:
    missing = [
        f"{model.__module__}.{model.__name__}.{name}"
        for model in docs.config_models()
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert not missing, (
        "add a docstring under each of these config fields (the models have "
        f"use_attribute_docstrings): {', '.join(missing)}"
    )


def test_the_reference_renders_types_and_defaults_as_toml_spells_them() -> None:
    reference = docs.config_reference()
    assert '| `monitor.debounce` | duration | `"2m"` |' in reference
    assert "| `server.public_url` | string | unset |" in reference
    assert "| `devices[].probe.port` | integer (1-65535) | `161` |" in reference
    assert '| `log.level` | one of "debug" \\| "info" \\| "warning" \\| "error" |' in reference
    assert "`devices[].probe.oids[]` | list of tables (at least 1) | `[{ oid = " in reference
    assert "| `orgs[].tokens[].scope` | one of" in reference
    assert docs.toml_value(timedelta(hours=1, minutes=30)) == '"1h30m"'
    assert docs.toml_value({"X-Tenant": "a", "b": True}) == '{ X-Tenant = "a", b = true }'


def test_write_replaces_only_the_block(tmp_path: Path) -> None:
    page = tmp_path / "README.md"
    page.write_text(f"# Title\n\n{docs.START}\nold\n{docs.END}\n\nafter\n", encoding="utf-8")
    assert docs.main(["--write", str(page)]) == 0
    text = page.read_text(encoding="utf-8")
    assert text.startswith(f"# Title\n\n{docs.START}\n")
    assert text.endswith(f"{docs.END}\n\nafter\n")
    assert docs.block_of(text) == docs.config_reference()


def test_python_m_tocsin_docs_prints_the_reference() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tocsin.docs"], capture_output=True, text=True, check=True
    )
    assert result.stdout == docs.config_reference()


# -- config.example.toml ----------------------------------------------------------------------

_COMMENTED_HEADER = re.compile(r"# \[\[?[a-z_.]+\]\]?\s*(#.*)?")


def commented_examples(text: str) -> list[str]:
    """The commented-out examples, uncommented: each runs from a commented table header
    (`# [[devices]]`) to the first line that is not a comment."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if current is None:
            if _COMMENTED_HEADER.fullmatch(line):
                current = [line.removeprefix("# ")]
                blocks.append(current)
        elif line.startswith("#"):
            current.append(line.removeprefix("#").removeprefix(" "))
        else:
            current = None
    return ["\n".join(block) + "\n" for block in blocks]


def test_the_example_config_parses(tmp_path: Path) -> None:
    settings = parse(EXAMPLE.read_text(encoding="utf-8"), base_dir=tmp_path, env={})
    assert [o.slug for o in settings.config.orgs] == ["acme"]


def test_the_commented_out_examples_are_valid_when_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    examples = commented_examples(text)
    headers = [e.splitlines()[0] for e in examples]
    for header in ("[[devices]]", "[[mqtt.brokers]]", "[[integrations]]", "[[webhooks]]"):
        assert header in headers
    assert "[webhook_delivery]" in headers
    whole = text + "\n" + "\n".join(examples)
    config = Config.model_validate(tomllib.loads(whole))
    assert {d.probe.type for d in config.devices} == {"http", "snmp", "mqtt", "push"}
    assert [i.check.auth.type for i in config.integrations] == ["bearer"]
    # The whole thing, cross-checks included; only the secret files do not exist here.
    with pytest.raises(ConfigError) as raised:
        parse(whole, base_dir=tmp_path, env={"TOCSIN_DEMO_WEBHOOK_SECRET": DEMO_SECRET})
    problems = [str(p) for p in raised.value.problems]
    assert problems, "expected the example's secret files to be missing here"
    assert all(re.search(r"_file: cannot read /etc/tocsin/", p) for p in problems), problems


def _field_names() -> set[str]:
    return {name for model in docs.config_models() for name in model.model_fields}


def test_every_key_the_example_mentions_exists() -> None:
    """Keys in comments (`token_file = "..."`, `# or: heartbeat_topic = ...`, and snake_case
    words in the prose) must be fields of some config model."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    comments = [line.split("#", 1)[1] for line in lines if "#" in line]
    assigned = {m for c in comments for m in re.findall(r"(?<![\w.-])([a-z_][a-z0-9_]*) = ", c)}
    words = {
        m
        for c in comments
        for m in re.findall(r"(?<![\w.$-])([a-z][a-z0-9]*(?:_[a-z0-9]+)+)(?![\w-])", c)
    }
    not_keys = {"comment_added", "rack"}  # ticket.comment_added; labels = { rack = "A3" }
    unknown = sorted((assigned | words) - not_keys - _field_names())
    assert not unknown, f"config.example.toml mentions keys no config model has: {unknown}"
    assert {"push_secret_file", "previous_secret_file", "heartbeat_topic", "token_file"} <= (
        assigned | words
    )


def test_the_readme_toml_snippets_are_valid() -> None:
    snippets = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(snippets) >= 2
    for snippet in snippets:
        Config.model_validate(tomllib.loads(snippet))
