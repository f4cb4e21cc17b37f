"""The config: TOML text -> validated settings; every problem reported with its key path."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from tocsin.config import ConfigError, Problem, load, parse

SECRET = "hunter2-very-secret-token"
SECRET_SHA = hashlib.sha256(SECRET.encode()).hexdigest()


def problems_of(text: str, **kwargs: object) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, **kwargs)
    return caught.value.problems


def paths_of(text: str, **kwargs: object) -> list[str]:
    return [p.path for p in problems_of(text, **kwargs)]


def org(slug: str = "acme", tokens: str = "", **keys: str) -> str:
    lines = ["[[orgs]]", f'slug = "{slug}"', f'name = "Org {slug}"']
    lines += [f"{k} = {v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n" + tokens


def token(name: str, scope: str = "read", **source: str) -> str:
    lines = ["[[orgs.tokens]]", f'name = "{name}"', f'scope = "{scope}"']
    lines += [f'{k} = "{v}"' for k, v in source.items()]
    return "\n".join(lines) + "\n"


# -- defaults --------------------------------------------------------------------------------------


def test_an_empty_config_gets_every_default() -> None:
    settings = parse("", env={})
    config = settings.config
    assert config.server.listen == "127.0.0.1:8080"
    assert config.server.public_url is None
    assert config.server.base_url == "http://127.0.0.1:8080"
    assert config.monitor.debounce == timedelta(minutes=2)
    assert config.monitor.recovery == timedelta(minutes=1)
    assert config.monitor.reopen_window == timedelta(hours=24)
    assert config.monitor.interval == timedelta(seconds=30)
    assert config.log.level == "info"
    assert config.log.format == "auto"
    assert config.orgs == []
    assert settings.tokens == ()
    assert settings.store_url == "sqlite+aiosqlite:////var/lib/tocsin/tocsin.db"


def test_an_org_defaults_to_report_issue_off_and_no_tokens() -> None:
    config = parse(org(), env={}).config
    [acme] = config.orgs
    assert acme.report_issue is False
    assert acme.tokens == []
    assert config.org("acme") is acme
    assert config.org("beta") is None


def test_public_url_is_the_base_of_links_without_a_trailing_slash() -> None:
    settings = parse('[server]\npublic_url = "https://ops.example/tocsin/"\n', env={})
    assert settings.config.server.base_url == "https://ops.example/tocsin"


@pytest.mark.parametrize("listen", ["127.0.0.1:8080", "[::1]:8080", "0.0.0.0:0", "localhost:65535"])
def test_it_accepts_a_listen_address(listen: str) -> None:
    assert parse(f'[server]\nlisten = "{listen}"\n', env={}).config.server.listen == listen


@pytest.mark.parametrize("listen", ["8080", "127.0.0.1", "127.0.0.1:65536", "::1:80", ":80", ""])
def test_it_refuses_a_bad_listen_address(listen: str) -> None:
    assert paths_of(f'[server]\nlisten = "{listen}"\n', env={}) == ["server.listen"]


@pytest.mark.parametrize("url", ["ftp://x", "example.com", "http://", "http://a b"])
def test_it_refuses_a_public_url_that_is_not_http(url: str) -> None:
    assert paths_of(f'[server]\npublic_url = "{url}"\n', env={}) == ["server.public_url"]


# -- durations -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("90s", timedelta(seconds=90)),
        ("2m", timedelta(minutes=2)),
        ("24h", timedelta(hours=24)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1d", timedelta(days=1)),
        ("1.5s", timedelta(milliseconds=1500)),
        (" 2m ", timedelta(minutes=2)),
    ],
)
def test_it_reads_a_duration(text: str, expected: timedelta) -> None:
    settings = parse(f'[monitor]\ndebounce = "{text}"\n', env={})
    assert settings.config.monitor.debounce == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        pytest.param("90", "durations are strings", id="integer"),
        pytest.param("1.5", "durations are strings", id="float"),
        pytest.param('"2x"', "'2x' is not a duration", id="unknown-unit"),
        pytest.param('"90"', "'90' is not a duration", id="string-without-unit"),
        pytest.param('"m"', "is not a duration", id="unit-without-number"),
        pytest.param('"-5s"', "is not a duration", id="negative"),
        pytest.param('"2m 30s"', "is not a duration", id="inner-space"),
        pytest.param('""', "required", id="empty"),
    ],
)
def test_it_refuses_a_duration_naming_its_key(value: str, says: str) -> None:
    [problem] = problems_of(f"[monitor]\nreopen_window = {value}\n", env={})
    assert problem.path == "monitor.reopen_window"
    assert says in problem.message
    assert str(problem).startswith("monitor.reopen_window: ")


# -- every problem, with its path ------------------------------------------------------------------


def test_it_collects_every_problem_with_its_key_path() -> None:
    text = "\n".join(
        [
            "[server]",
            "listen = 8080",  # wrong type
            "colour = 'red'",  # unknown key
            "[monitor]",
            'debounce = "2x"',  # bad duration
            "recovery = 60",  # number instead of string
            "[log]",
            'level = "loud"',
            org("Acme!", report_issue='"yes"'),  # bad slug, wrong type
            org("beta", token("a", scope="admin", token_env="X") + token("b")),
        ]
    )
    problems = problems_of(text, env={"X": "x"})
    assert {p.path for p in problems} == {
        "server.listen",
        "server.colour",
        "monitor.debounce",
        "monitor.recovery",
        "log.level",
        "orgs[0].slug",
        "orgs[0].report_issue",
        "orgs[1].tokens[0].scope",
        "orgs[1].tokens[1]",  # no token source
    }
    assert next(p for p in problems if p.path == "server.colour").message == "unknown key"


def test_token_problems_name_the_token_by_its_index() -> None:
    text = org(
        "acme",
        token("ok", token_sha256=SECRET_SHA)
        + token("file", token_file="/nonexistent/tocsin/ops")
        + token("env", token_env="TOCSIN_TEST_UNSET"),
    )
    problems = problems_of(text, env={})
    assert [p.path for p in problems] == [
        "orgs[0].tokens[1].token_file",
        "orgs[0].tokens[2].token_env",
    ]
    assert "cannot read /nonexistent/tocsin/ops" in problems[0].message
    assert "TOCSIN_TEST_UNSET is not set" in problems[1].message


def test_an_empty_token_file_or_variable_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n  \n", encoding="utf-8")
    text = org(
        "acme",
        token("file", token_file=str(tmp_path / "empty")) + token("env", token_env="EMPTY"),
    )
    assert paths_of(text, env={"EMPTY": "   "}) == [
        "orgs[0].tokens[0].token_file",
        "orgs[0].tokens[1].token_env",
    ]


@pytest.mark.parametrize(
    "sources",
    [
        pytest.param({}, id="none"),
        pytest.param({"token_env": "A", "token_sha256": SECRET_SHA}, id="env-and-sha"),
        pytest.param({"token_file": "f", "token_env": "A"}, id="file-and-env"),
        pytest.param(
            {"token_file": "f", "token_env": "A", "token_sha256": SECRET_SHA}, id="all-three"
        ),
    ],
)
def test_a_token_needs_exactly_one_source(sources: dict[str, str]) -> None:
    [problem] = problems_of(org("acme", token("ops", **sources)), env={"A": "a"})
    assert problem.path == "orgs[0].tokens[0]"
    assert "exactly one of token_file, token_env or token_sha256" in problem.message


@pytest.mark.parametrize("digest", ["abc", "z" * 64, SECRET_SHA + "0"])
def test_a_token_sha256_must_be_64_hex_characters(digest: str) -> None:
    [problem] = problems_of(org("acme", token("ops", token_sha256=digest)), env={})
    assert problem.path == "orgs[0].tokens[0]"
    assert "64 hex characters" in problem.message


def test_the_same_token_twice_is_refused_even_across_orgs_and_sources(tmp_path: Path) -> None:
    (tmp_path / "ops").write_text(SECRET, encoding="utf-8")
    text = org("acme", token("ops", scope="write", token_file="ops")) + org(
        "beta", token("ops", scope="read", token_env="BETA")
    )
    [problem] = problems_of(text, base_dir=tmp_path, env={"BETA": SECRET})
    assert problem.path == "orgs"
    assert "acme/ops and beta/ops" in problem.message
    assert SECRET not in str(problem)


def test_token_names_are_unique_within_an_org() -> None:
    text = org("acme", token("ops", token_env="A") + token("ops", token_env="B"))
    [problem] = problems_of(text, env={"A": "a", "B": "b"})
    assert problem.path == "orgs[0].tokens"
    assert "ops" in problem.message


def test_org_slugs_are_unique() -> None:
    [problem] = problems_of(org("acme") + org("beta") + org("acme"), env={})
    assert problem.path == "orgs"
    assert "acme" in problem.message


@pytest.mark.parametrize("slug", ["Acme", "-acme", "acme_co", "a" * 64, "", "ac me"])
def test_it_refuses_a_bad_slug(slug: str) -> None:
    assert paths_of(org(slug), env={}) == ["orgs[0].slug"]


@pytest.mark.parametrize("slug", ["a", "acme", "acme-2", "0day", "a" * 63])
def test_it_accepts_a_good_slug(slug: str) -> None:
    assert parse(org(slug), env={}).config.orgs[0].slug == slug


def test_invalid_toml_is_one_problem_without_a_path() -> None:
    [problem] = problems_of('[server\nlisten = "x"\n', env={})
    assert problem.path == ""
    assert problem.message.startswith("not valid TOML")


# -- token sources ---------------------------------------------------------------------------------


def test_each_token_source_yields_the_digest_of_the_token(tmp_path: Path) -> None:
    (tmp_path / "file-token").write_text("from-file\n", encoding="utf-8")
    text = org(
        "acme",
        token("f", scope="write", token_file="file-token")
        + token("e", scope="workflow", token_env="TOKEN_E")
        + token("h", scope="read", token_sha256=SECRET_SHA.upper()),
    )
    settings = parse(text, base_dir=tmp_path, env={"TOKEN_E": " from-env "})
    assert [(t.org, t.name, t.scope, t.sha256) for t in settings.tokens] == [
        ("acme", "f", "write", hashlib.sha256(b"from-file").digest()),
        ("acme", "e", "workflow", hashlib.sha256(b"from-env").digest()),
        ("acme", "h", "read", bytes.fromhex(SECRET_SHA)),
    ]


def test_settings_keep_no_secret_value(tmp_path: Path) -> None:
    (tmp_path / "ops").write_text(SECRET, encoding="utf-8")
    settings = parse(
        org("acme", token("ops", token_file="ops") + token("env", token_env="E")),
        base_dir=tmp_path,
        env={"E": SECRET + "-2"},
    )
    assert SECRET not in repr(settings)


def test_no_secret_value_appears_in_any_config_error(tmp_path: Path) -> None:
    (tmp_path / "ops").write_text(SECRET, encoding="utf-8")
    (tmp_path / "bad-utf8").write_bytes(b"\xff\xfe" + SECRET.encode())
    texts = [
        # the same token twice, from a file and the environment
        org("acme", token("a", token_file="ops") + token("b", token_env="E")),
        # a token file that is not UTF-8
        org("acme", token("a", token_file="bad-utf8")),
        # a secret written inline under a key that does not exist
        org("acme", token("a", token_env="E", token=SECRET)),
        # a secret given where a hash belongs
        org("acme", token("a", token_sha256=SECRET)),
        # a secret in a value of the wrong type
        org("acme", f'[[orgs.tokens]]\nname = "a"\nscope = "read"\ntoken_env = ["{SECRET}"]\n'),
        # a secret in the wrong scope field
        org("acme", token("a", scope=SECRET, token_env="E")),
        # invalid TOML near a secret
        f'[[orgs]]\nslug = "acme"\ntoken = "{SECRET}\n',
    ]
    for text in texts:
        with pytest.raises(ConfigError) as caught:
            parse(text, base_dir=tmp_path, env={"E": SECRET})
        assert SECRET not in str(caught.value), text
        assert all(SECRET not in str(p) for p in caught.value.problems)


# -- the store URL ---------------------------------------------------------------------------------


def test_the_store_defaults_to_the_state_directory() -> None:
    settings = parse("", env={"STATE_DIRECTORY": "/var/lib/tocsin-a:/var/lib/tocsin-b"})
    assert settings.store_url == "sqlite+aiosqlite:////var/lib/tocsin-a/tocsin.db"


def test_an_empty_state_directory_falls_back_to_var_lib() -> None:
    settings = parse("", env={"STATE_DIRECTORY": ""})
    assert settings.store_url == "sqlite+aiosqlite:////var/lib/tocsin/tocsin.db"


def test_load_resolves_a_relative_sqlite_path_against_the_config_folder(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    file = folder / "tocsin.toml"
    file.write_text(
        '[store]\nurl = "sqlite+aiosqlite:///state/tocsin.db?timeout=5"\n', encoding="utf-8"
    )
    settings = load(file, env={})
    assert settings.store_url == f"sqlite+aiosqlite:///{folder.resolve()}/state/tocsin.db?timeout=5"


def test_load_keeps_an_absolute_sqlite_path_and_memory(tmp_path: Path) -> None:
    file = tmp_path / "tocsin.toml"
    file.write_text('[store]\nurl = "sqlite+aiosqlite:////srv/t.db"\n', encoding="utf-8")
    assert load(file, env={}).store_url == "sqlite+aiosqlite:////srv/t.db"
    file.write_text('[store]\nurl = "sqlite+aiosqlite:///:memory:"\n', encoding="utf-8")
    assert load(file, env={}).store_url == "sqlite+aiosqlite:///:memory:"


def test_load_resolves_a_relative_token_file_against_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "tokens").mkdir()
    (tmp_path / "tokens" / "ops").write_text("ops-token\n", encoding="utf-8")
    file = tmp_path / "tocsin.toml"
    file.write_text(org("acme", token("ops", token_file="tokens/ops")), encoding="utf-8")
    [api_token] = load(file, env={}).tokens
    assert api_token.sha256 == hashlib.sha256(b"ops-token").digest()


def test_load_names_a_file_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path / "missing.toml", env={})
    [problem] = caught.value.problems
    assert "cannot read" in problem.message
    assert "missing.toml" in problem.message


def test_the_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    settings = load(example, env={})
    assert [o.slug for o in settings.config.orgs] == ["acme"]
    assert {t.scope for t in settings.tokens} == {"read", "write", "workflow"}
