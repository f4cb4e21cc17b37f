"""Web sign-in in the config: [[orgs.users]] with argon2 password hashes, and [web]."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tocsin.config import ConfigError, Problem, parse

# PasswordHasher(type=...).hash("correct horse battery staple"), one per argon2 variant.
ARGON2ID = (
    "$argon2id$v=19$m=65536,t=3,p=4$4pg48aeambx397Ur67KS9w"
    "$cLzgr7ChaA4ln8rZpaHTuene2BGIX8DnVWsQAupNk+w"
)
ARGON2I = (
    "$argon2i$v=19$m=65536,t=3,p=4$pLW4SPHqQ8QvFclanZQ/+A"
    "$gCaUL+yEVuRcaTI/VSI1jnKxIEBK7iyuyrOW8OMksRo"
)
ARGON2D = (
    "$argon2d$v=19$m=65536,t=3,p=4$hK+z67/imYUawLCS7G1qxg"
    "$X57g3taua28M9T28p/P+jT1r0BJQPaV2cYWBcFr7pSE"
)


def problems_of(text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, env={})
    return caught.value.problems


def org(slug: str = "acme", *entries: str) -> str:
    return "\n".join(["[[orgs]]", f'slug = "{slug}"', f'name = "Org {slug}"', *entries]) + "\n"


def user(name: str = "ann", role: str = "write", password_argon2: str = ARGON2ID) -> str:
    # Literal strings ('...'): a hash is taken as it is written.
    keys = [f"name = '{name}'", f"role = '{role}'", f"password_argon2 = '{password_argon2}'"]
    return "\n".join(["[[orgs.users]]", *keys])


def token(name: str) -> str:
    return f'[[orgs.tokens]]\nname = "{name}"\nscope = "read"\ntoken_sha256 = "{"0" * 64}"'


# -- [[orgs.users]] ----------------------------------------------------------------------------


def test_it_reads_a_user() -> None:
    [acme] = parse(org("acme", user("ann", "read")), env={}).config.orgs
    [ann] = acme.users
    assert (ann.name, ann.role, ann.password_argon2) == ("ann", "read", ARGON2ID)


def test_it_gives_an_org_no_users_by_default() -> None:
    assert parse(org("acme"), env={}).config.orgs[0].users == []


@pytest.mark.parametrize("encoded", [ARGON2ID, ARGON2I, ARGON2D], ids=["id", "i", "d"])
def test_it_accepts_a_hash_of_every_argon2_variant(encoded: str) -> None:
    [acme] = parse(org("acme", user(password_argon2=encoded)), env={}).config.orgs
    assert acme.users[0].password_argon2 == encoded


def test_it_refuses_two_users_of_one_name_in_an_org() -> None:
    [problem] = problems_of(org("acme", user("ann"), user("bob"), user("ann")))
    assert problem.path == "orgs[0].users"
    assert problem.message == "user names must be unique in an org: ann"


def test_it_refuses_a_user_with_the_name_of_a_token_of_the_org() -> None:
    [problem] = problems_of(org("acme", token("ci"), user("ann"), user("ci")))
    assert problem.path == "orgs[0].users"
    assert problem.message == "a user cannot have the name of a token of the org: ci"


def test_it_lets_orgs_share_user_names_and_another_orgs_token_name() -> None:
    text = org("acme", token("ci"), user("ann")) + org("beta", user("ann"), user("ci"))
    config = parse(text, env={}).config
    assert [[u.name for u in o.users] for o in config.orgs] == [["ann"], ["ann", "ci"]]


@pytest.mark.parametrize("role", ["admin", "workflow", "Write", ""])
def test_it_refuses_a_role_other_than_read_or_write(role: str) -> None:
    [problem] = problems_of(org("acme", user(role=role)))
    assert problem.path == "orgs[0].users[0].role"


@pytest.mark.parametrize("name", ["", "a" * 65])
def test_it_refuses_a_user_name_that_is_empty_or_too_long(name: str) -> None:
    [problem] = problems_of(org("acme", user(name)))
    assert problem.path == "orgs[0].users[0].name"


@pytest.mark.parametrize(
    "encoded",
    [
        pytest.param("correct horse battery staple", id="a-password"),
        pytest.param("$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW", id="bcrypt"),
        pytest.param("$argon2id$not-a-hash", id="garbled"),
        pytest.param("$argon2id$v=19$m=lots,t=3,p=4$c2FsdHNhbHQ$aGFzaGhhc2g", id="bad-parameter"),
        pytest.param(" " + ARGON2ID, id="leading-space"),
        pytest.param("$argon2x" + ARGON2ID.removeprefix("$argon2id"), id="unknown-variant"),
    ],
)
def test_it_refuses_a_password_that_is_not_an_argon2_hash_without_quoting_it(
    encoded: str,
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(org("acme", user("ann", password_argon2=encoded)), env={})
    [problem] = caught.value.problems
    assert problem.path == "orgs[0].users[0].password_argon2"
    assert "tocsin users hash" in problem.message
    assert encoded not in str(caught.value)
    assert encoded.strip() not in str(caught.value)


def test_it_does_not_quote_a_password_given_under_another_key() -> None:
    text = org("acme", user("ann"), "password = 'correct horse battery staple'")
    with pytest.raises(ConfigError) as caught:
        parse(text, env={})
    assert [str(p) for p in caught.value.problems] == ["orgs[0].users[0].password: unknown key"]


def test_it_requires_a_password_hash() -> None:
    [problem] = problems_of(org("acme", "[[orgs.users]]\nname = 'ann'\nrole = 'read'"))
    assert problem.path == "orgs[0].users[0].password_argon2"


# -- [web] -------------------------------------------------------------------------------------


def test_it_gives_web_sign_in_its_defaults() -> None:
    web = parse("", env={}).config.web
    assert web.session_lifetime == timedelta(hours=12)
    assert web.login_delay == timedelta(seconds=1)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("session_lifetime", "1m", timedelta(minutes=1)),
        ("session_lifetime", "90d", timedelta(days=90)),
        ("session_lifetime", "7d", timedelta(days=7)),
        ("login_delay", "0s", timedelta(0)),
        ("login_delay", "30s", timedelta(seconds=30)),
        ("login_delay", "250ms", timedelta(milliseconds=250)),
    ],
)
def test_it_reads_web_durations_within_their_bounds(
    key: str, value: str, expected: timedelta
) -> None:
    web = parse(f'[web]\n{key} = "{value}"\n', env={}).config.web
    assert getattr(web, key) == expected


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("session_lifetime", "59s", "between 1m and 90d"),
        ("session_lifetime", "90d1s", "between 1m and 90d"),
        ("session_lifetime", "0s", "between 1m and 90d"),
        ("login_delay", "30s1ms", "between 0s and 30s"),
        ("login_delay", "1m", "between 0s and 30s"),
        ("login_delay", "-1s", "is not a duration"),
        ("login_delay", "1", "is not a duration"),
    ],
)
def test_it_refuses_web_durations_out_of_bounds(key: str, value: str, says: str) -> None:
    [problem] = problems_of(f'[web]\n{key} = "{value}"\n')
    assert problem.path == f"web.{key}"
    assert says in problem.message


def test_it_refuses_an_unknown_web_key() -> None:
    [problem] = problems_of("[web]\nsession_timeout = '1h'\n")
    assert str(problem) == "web.session_timeout: unknown key"
