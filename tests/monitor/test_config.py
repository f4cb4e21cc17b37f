"""The subjects in the config: problems that span keys, named by their key paths, and what a
large config costs to hold."""

from __future__ import annotations

import contextlib
import gc
from pathlib import Path

import pytest

from tocsin.config import ConfigError, Problem, parse

ORGS = '[[orgs]]\nslug = "acme"\nname = "Acme"\n[[orgs]]\nslug = "beta"\nname = "Beta"\n'
BROKER = '[[mqtt.brokers]]\nname = "site"\nhost = "127.0.0.1"\n'


def device(subject_id: str, probe: str, org: str = "acme", **keys: str) -> str:
    lines = ["[[devices]]", f'org = "{org}"', f'id = "{subject_id}"', f'name = "{subject_id}"']
    lines += [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join([*lines, f"probe = {probe}"]) + "\n"


def integration(subject_id: str, auth: str, org: str = "acme", **keys: str) -> str:
    lines = ["[[integrations]]", f'org = "{org}"', f'id = "{subject_id}"']
    lines += [f'name = "{subject_id}"', *(f"{key} = {value}" for key, value in keys.items())]
    check = f'{{ type = "http", url = "https://api.example.org/me", auth = {auth} }}'
    return "\n".join([*lines, f"check = {check}"]) + "\n"


PUSH = '{ type = "push", timeout = "5m" }'


def problems_of(text: str, **kwargs: object) -> list[Problem]:
    with pytest.raises(ConfigError) as caught:
        parse(text, **kwargs)
    return caught.value.problems


def test_problems_across_subjects_are_named_by_key_path_in_config_order() -> None:
    text = ORGS + BROKER + BROKER
    text += device("a", PUSH)
    text += device("a", PUSH, depends_on='["m", "b", "nope"]')  # b is in another org
    text += device("b", PUSH, org="gamma")
    text += device("m", '{ type = "mqtt", broker = "elsewhere", status_topic = "m/status" }')
    text += integration("a", '{ bearer_env = "TOKEN" }', depends_on='["m"]')
    text += integration("a", '{ bearer_env = "TOKEN" }', org="beta", depends_on='["m"]')
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("mqtt.brokers[1].name", "broker 'site' is defined twice"),
        ("devices[1].id", "'a' is also devices[0]"),
        ("devices[2].org", "no org 'gamma' in [[orgs]]"),
        ("devices[3].probe.broker", "no broker 'elsewhere' in [[mqtt.brokers]]"),
        ("devices[1].depends_on[1]", "no subject 'b' in the org"),
        ("devices[1].depends_on[2]", "no subject 'nope' in the org"),
        ("integrations[1].depends_on[0]", "no subject 'm' in the org"),
    ]


def test_a_dependency_cycle_is_refused_at_the_key_that_closes_it() -> None:
    text = ORGS
    text += device("sw-core", PUSH, depends_on='["sw-riser"]')
    text += device("sw-riser", PUSH, depends_on='["ups"]')
    text += integration("ups", '{ bearer_env = "TOKEN" }', depends_on='["sw-core"]')
    text += device("cam", PUSH, depends_on='["cam"]')
    text += device("cam-2", PUSH, depends_on='["sw-riser"]')  # depends on the cycle: no more
    text += device("sw-core", PUSH, org="beta", depends_on='["sw-riser"]')
    text += device("sw-riser", PUSH, org="beta")  # the same ids in another org: no cycle
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("integrations[0].depends_on[0]", "a cycle: sw-core -> sw-riser -> ups -> sw-core"),
        ("devices[2].depends_on[0]", "a cycle: cam -> cam"),
    ]


def test_a_missing_file_named_by_many_subjects_is_reported_for_each(tmp_path: Path) -> None:
    (tmp_path / "community").write_text("public\n", encoding="utf-8")
    text = ORGS
    for n, source in enumerate(["missing", "community", "missing"]):
        probe = f'{{ type = "snmp", host = "10.0.0.{n}", community_file = "{source}" }}'
        text += device(f"switch-{n}", probe)
    text += integration("crm", '{ username = "u", password_env = "UNSET" }')
    text += integration("erp", '{ username = "u", password_env = "UNSET" }')
    missing = f"cannot read {tmp_path / 'missing'} (No such file or directory)"
    unset = "environment variable UNSET is not set or empty"
    assert [(p.path, p.message) for p in problems_of(text, base_dir=tmp_path, env={})] == [
        ("devices[0].probe.community_file", missing),
        ("devices[2].probe.community_file", missing),
        ("integrations[0].check.auth.password_env", unset),
        ("integrations[1].check.auth.password_env", unset),
    ]


def test_a_bad_subject_among_good_ones_is_reported_in_its_place() -> None:
    text = 'colour = "red"\n[server]\nlisten = 8080\n' + ORGS
    text += device("a", PUSH) + device("b", '{ type = "push", timeout = "5x" }') + device("c", PUSH)
    text += integration("crm", '{ bearer_env = "TOKEN" }', shape='"round"')
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("server.listen", "Input should be a valid string"),
        (
            "devices[1].probe.timeout",
            "'5x' is not a duration: write a number and a unit (ms, s, m, h, d), e.g. '90s'",
        ),
        ("integrations[0].shape", "unknown key"),
        ("colour", "unknown key"),
    ]


def test_subjects_given_the_same_keys_share_one_set_of_them_that_a_copy_does_not_touch() -> None:
    text = ORGS + device("a", PUSH) + device("b", PUSH) + device("c", PUSH, space='"hall"')
    a, b, c = parse(text, env={}).config.devices
    assert a.model_fields_set == {"org", "id", "name", "probe"}
    assert a.model_fields_set is b.model_fields_set
    assert a.probe.model_fields_set is b.probe.model_fields_set
    assert c.model_fields_set == {"org", "id", "name", "space", "probe"}

    moved = a.model_copy(update={"space": "roof"})
    assert moved.model_fields_set == {"org", "id", "name", "space", "probe"}
    assert b.model_fields_set == {"org", "id", "name", "probe"}
    assert moved.model_dump(exclude_unset=True)["space"] == "roof"


def test_subjects_do_not_share_their_lists_and_tables() -> None:
    a, b = parse(ORGS + device("a", PUSH) + device("b", PUSH), env={}).config.devices
    assert a.labels == b.labels == {}
    assert a.labels is not b.labels
    assert a.depends_on is not b.depends_on


@pytest.mark.parametrize("text", [ORGS + device("a", PUSH), "[server]\nlisten = 1\n"])
def test_parsing_leaves_garbage_collection_as_it_found_it(text: str) -> None:
    assert gc.isenabled()
    with contextlib.suppress(ConfigError):
        parse(text, env={})
    assert gc.isenabled()
    gc.disable()
    try:
        with contextlib.suppress(ConfigError):
            parse(text, env={})
        assert not gc.isenabled()
    finally:
        gc.enable()
