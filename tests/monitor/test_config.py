"""The subjects in the config: problems that span keys, named by their key paths, and what a
large config costs to hold."""

from __future__ import annotations

import contextlib
import gc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tocsin.config import ConfigError, Problem, parse
from tocsin.monitor.config import SpaceInfo, config_windows, members_of, spaces_of
from tocsin.monitor.maintenance import Target
from tocsin.probes.observation import SubjectKey

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


# -- [[spaces]] ------------------------------------------------------------------------------


def space(space_id: str, org: str = "acme", **keys: str) -> str:
    keys.setdefault("name", f'"{space_id.upper()}"')
    lines = ["[[spaces]]", f'org = "{org}"', f'id = "{space_id}"']
    return "\n".join([*lines, *(f"{key} = {value}" for key, value in keys.items())]) + "\n"


def test_spaces_parse_and_the_grouping_keys_have_defaults() -> None:
    text = ORGS + space("b2", labels='{ building = "B" }') + space("b2-f3", parent='"b2"')
    text += device("cam", PUSH, space='"b2-f3"') + device("door", PUSH, space='"lobby 1"')
    config = parse(text, env={}).config
    b2, floor = config.spaces
    assert (b2.org, b2.id, b2.name, b2.parent) == ("acme", "b2", "B2", None)
    assert b2.labels == {"building": "B"}
    assert (floor.parent, floor.labels) == ("b2", {})
    assert floor.key == SubjectKey("acme", "space", "b2-f3")
    assert [d.space for d in config.devices] == ["b2-f3", "lobby 1"]
    monitor = config.monitor
    assert (monitor.group_threshold, monitor.group_threshold_percent) == (3, None)
    assert monitor.group_window is None

    text = '[monitor]\ngroup_threshold = 10\ngroup_threshold_percent = 50\ngroup_window = "30s"\n'
    monitor = parse(text, env={}).config.monitor
    assert (monitor.group_threshold, monitor.group_threshold_percent) == (10, 50.0)
    assert monitor.group_window == timedelta(seconds=30)


def test_space_problems_are_named_by_key_path() -> None:
    text = ORGS
    text += device("hall", PUSH, space='"hall"')  # an implied space with its device's id
    text += device("cam", PUSH, space='"hall"')  # the same implied space: reported once
    text += device("pump", PUSH, space='"crm"', org="beta")
    text += integration("crm", '{ bearer_env = "TOKEN" }', org="beta")
    text += space("roof", org="gamma")
    text += space("cam")  # a device's id
    text += space("crm", org="beta")  # an integration's id
    text += space("f1", parent='"nowhere"')
    text += space("f1")
    text += space("f2", parent='"cam"', org="beta")  # cam is a space of acme, not of beta
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("spaces[0].org", "no org 'gamma' in [[orgs]]"),
        (
            "spaces[1].id",
            "'cam' is also a device id in the org: a depends_on id must name one subject",
        ),
        (
            "spaces[2].id",
            "'crm' is also an integration id in the org: a depends_on id must name one subject",
        ),
        ("spaces[4].id", "'f1' is also spaces[3]"),
        (
            "devices[0].space",
            "'hall' is also a device id in the org: a depends_on id must name one subject",
        ),
        ("spaces[3].parent", "no space 'nowhere' in the org"),
        ("spaces[5].parent", "no space 'cam' in the org"),
    ]


def test_a_space_parent_cycle_is_refused_at_the_key_that_closes_it() -> None:
    text = ORGS
    text += space("site", parent='"room"') + space("floor", parent='"site"')
    text += space("room", parent='"floor"') + space("loop", parent='"loop"')
    text += space("wing", parent='"floor"')  # inside the cycle: no more
    text += space("site", org="beta", parent='"room"') + space("room", org="beta")  # no cycle
    text += device("cam", PUSH, space='"hall"') + space("annex", parent='"hall"')  # implied
    assert [(p.path, p.message) for p in problems_of(text, env={})] == [
        ("spaces[1].parent", "a cycle: site -> room -> floor -> site"),
        ("spaces[3].parent", "a cycle: loop -> loop"),
    ]


def test_depends_on_may_name_a_space_of_the_org() -> None:
    text = ORGS + space("plant") + device("pump", PUSH, space='"cellar"')
    text += device("chiller", PUSH, depends_on='["plant", "cellar", "pump"]')
    text += integration("bms", '{ bearer_env = "TOKEN" }', depends_on='["plant"]')
    assert parse(text, env={"TOKEN": "t"}).config.devices[1].depends_on == [
        "plant",
        "cellar",
        "pump",
    ]

    text += device("boiler", PUSH, org="beta", depends_on='["plant", "attic"]')
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("devices[2].depends_on[0]", "no subject 'plant' in the org"),
        ("devices[2].depends_on[1]", "no subject 'attic' in the org"),
    ]


def test_spaces_of_and_members_of_include_the_spaces_only_devices_name() -> None:
    text = ORGS + space("b2", labels='{ building = "B" }') + space("b2-f3", parent='"b2"')
    text += device("cam", PUSH, space='"lobby"') + device("door", PUSH, space='"b2-f3"')
    text += device("fan", PUSH) + device("lift", PUSH, space='"lobby"')
    text += device("pump", PUSH, org="beta", space='"lobby"')
    config = parse(text, env={}).config

    def acme(space_id: str) -> SubjectKey:
        return SubjectKey("acme", "space", space_id)

    def beta(space_id: str) -> SubjectKey:
        return SubjectKey("beta", "space", space_id)

    assert spaces_of(config.spaces, config.devices) == {
        acme("b2"): SpaceInfo(acme("b2"), "B2", None, {"building": "B"}),
        acme("b2-f3"): SpaceInfo(acme("b2-f3"), "B2-F3", acme("b2"), {}),
        acme("lobby"): SpaceInfo(acme("lobby"), "lobby", None, {}),
        beta("lobby"): SpaceInfo(beta("lobby"), "lobby", None, {}),
    }
    assert list(spaces_of(config.spaces, config.devices)) == [
        acme("b2"),
        acme("b2-f3"),
        acme("lobby"),
        beta("lobby"),
    ]
    assert members_of(config.devices) == {
        acme("lobby"): [SubjectKey("acme", "device", "cam"), SubjectKey("acme", "device", "lift")],
        acme("b2-f3"): [SubjectKey("acme", "device", "door")],
        beta("lobby"): [SubjectKey("beta", "device", "pump")],
    }
    assert spaces_of([], []) == {}
    assert members_of([]) == {}


NOT_AN_ID = "String should match pattern '^[^\\s/][^/]{0,127}$'"


@pytest.mark.parametrize(
    ("text", "path", "message"),
    [
        (ORGS + device("cam", PUSH, space='"b2/f3"'), "devices[0].space", NOT_AN_ID),
        (ORGS + device("cam", PUSH, space='" lobby"'), "devices[0].space", NOT_AN_ID),
        (ORGS + device("cam", PUSH, space='""'), "devices[0].space", NOT_AN_ID),
        (ORGS + space("b2/f3"), "spaces[0].id", NOT_AN_ID),
        (
            ORGS + space("b2", name='""'),
            "spaces[0].name",
            "String should have at least 1 character",
        ),
        (
            "[monitor]\ngroup_threshold = 1\n",
            "monitor.group_threshold",
            "Input should be greater than or equal to 2",
        ),
        (
            "[monitor]\ngroup_threshold_percent = 0\n",
            "monitor.group_threshold_percent",
            "Input should be greater than 0",
        ),
        (
            "[monitor]\ngroup_threshold_percent = 101\n",
            "monitor.group_threshold_percent",
            "Input should be less than or equal to 100",
        ),
        (
            '[monitor]\ngroup_window = "soon"\n',
            "monitor.group_window",
            "'soon' is not a duration: write a number and a unit (ms, s, m, h, d), e.g. '90s'",
        ),
    ],
)
def test_a_bad_space_or_grouping_key_names_its_key_path(text: str, path: str, message: str) -> None:
    assert [(p.path, p.message) for p in problems_of(text, env={})] == [(path, message)]


# -- [[maintenance]] -------------------------------------------------------------------------


def maintenance(org: str = "acme", **keys: str) -> str:
    lines = ["[[maintenance]]", f'org = "{org}"']
    return "\n".join([*lines, *(f"{key} = {value}" for key, value in keys.items())]) + "\n"


SUBJECTS = device("cam", PUSH, space='"b2-f3"', labels='{ rack = "A3" }')
SUBJECTS += integration("bms", '{ bearer_env = "TOKEN" }') + space("b2")


def test_a_one_off_and_a_recurring_window_parse_and_number_per_org() -> None:
    text = ORGS + SUBJECTS
    text += maintenance(
        subject='"cam"', start="2026-12-24T18:00:00Z", end="2026-12-25T06:00:00+01:00"
    )
    text += maintenance(space='"b2"', cron='"0 2 * * sun"', duration='"2h"', reason='"patching"')
    text += maintenance(
        org="beta", labels='{ rack = "A3" }', cron='"*/30 * * * *"', duration='"5m"'
    )
    text += maintenance(subject='"bms"', start="2027-01-01T00:00:00Z", end="2027-01-02T00:00:00Z")
    config = parse(text, env={"TOKEN": "t"}).config
    one_off, weekly, _, _ = config.maintenance
    assert one_off.start == datetime(2026, 12, 24, 18, tzinfo=UTC)
    assert one_off.end == datetime(2026, 12, 25, 5, tzinfo=UTC)
    assert (weekly.cron, weekly.duration, weekly.reason) == (
        "0 2 * * sun",
        timedelta(hours=2),
        "patching",
    )
    windows = config_windows(config)
    assert windows == config_windows(config.maintenance)
    assert [(w.org, w.id, w.source) for w in windows] == [
        ("acme", "config-1", "config"),
        ("acme", "config-2", "config"),
        ("beta", "config-1", "config"),
        ("acme", "config-3", "config"),
    ]
    cam, b2, racks, _ = windows
    assert cam.target == Target(subject="cam")
    assert (cam.start, cam.end, cam.cron) == (one_off.start, one_off.end, None)
    assert b2.target == Target(space="b2")
    assert (b2.cron, b2.duration, b2.reason) == ("0 2 * * sun", timedelta(hours=2), "patching")
    assert racks.target == Target(labels={"rack": "A3"})
    sunday = datetime(2026, 12, 6, 3, tzinfo=UTC)  # a Sunday, 03:00
    assert b2.occurrence(sunday) == (sunday.replace(hour=2), sunday.replace(hour=4))
    assert cam.occurrence(sunday) is None
    assert parse(ORGS, env={}).config.maintenance == []


def test_maintenance_problems_across_keys_are_named_by_key_path() -> None:
    text = ORGS + SUBJECTS + device("lamp", PUSH, org="beta", space='"hall"')
    recurring = {"cron": '"0 2 * * *"', "duration": '"1h"'}
    text += maintenance(org="gamma", subject='"cam"', **recurring)
    text += maintenance(subject='"nope"', **recurring)
    text += maintenance(subject='"lamp"', **recurring)  # beta's
    text += maintenance(space='"cam"', **recurring)  # a device, not a space
    text += maintenance(space='"hall"', **recurring)  # beta's
    text += maintenance(subject='"b2-f3"', **recurring)  # a space only a device names: fine
    text += maintenance(space='"b2-f3"', **recurring)
    text += maintenance(subject='"bms"', **recurring)
    text += maintenance(labels='{ rack = "none" }', **recurring)  # labels need match nothing
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [
        ("maintenance[0].org", "no org 'gamma' in [[orgs]]"),
        ("maintenance[1].subject", "no subject 'nope' in the org"),
        ("maintenance[2].subject", "no subject 'lamp' in the org"),
        ("maintenance[3].space", "no space 'cam' in the org"),
        ("maintenance[4].space", "no space 'hall' in the org"),
    ]


START, END = "2026-12-24T18:00:00Z", "2026-12-25T06:00:00Z"
CRON = '"0 2 * * *"'


@pytest.mark.parametrize(
    ("keys", "path", "message"),
    [
        pytest.param(
            {"subject": '"cam"', "space": '"b2"', "cron": CRON, "duration": '"1h"'},
            "maintenance[0]",
            "subject: give exactly one of subject, space or labels",
            id="subject-and-space",
        ),
        pytest.param(
            {"cron": CRON, "duration": '"1h"'},
            "maintenance[0]",
            "subject: give exactly one of subject, space or labels",
            id="no-target",
        ),
        pytest.param(
            {"subject": '"cam"', "start": START, "end": END, "cron": CRON, "duration": '"1h"'},
            "maintenance[0]",
            "start: give start and end, or cron and duration",
            id="start-and-cron",
        ),
        pytest.param(
            {"subject": '"cam"'},
            "maintenance[0]",
            "start: give start and end, or cron and duration",
            id="neither-start-nor-cron",
        ),
        pytest.param(
            {"subject": '"cam"', "start": START},
            "maintenance[0]",
            "end: give start and end",
            id="start-without-end",
        ),
        pytest.param(
            {"subject": '"cam"', "start": END, "end": START},
            "maintenance[0]",
            "end: must be after start",
            id="end-before-start",
        ),
        pytest.param(
            {"subject": '"cam"', "start": "2026-12-24T18:00:00", "end": END},
            "maintenance[0]",
            "start: needs a UTC offset (e.g. 2026-12-02T10:00:00Z)",
            id="start-without-offset",
        ),
        pytest.param(
            {"subject": '"cam"', "start": f'"{START}"', "end": END},
            "maintenance[0].start",
            "Input should be a valid datetime",
            id="start-a-string",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": '"0 25 * * *"', "duration": '"1h"'},
            "maintenance[0]",
            "cron: not a crontab schedule (5 fields, UTC): Error validating expression '25': "
            "the last value (25) is higher than the maximum value (23)",
            id="bad-cron",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": '"0 2 * *"', "duration": '"1h"'},
            "maintenance[0]",
            "cron: not a crontab schedule (5 fields, UTC): Wrong number of fields; got 4, "
            "expected 5",
            id="cron-four-fields",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": '"0 0 31 4 *"', "duration": '"1h"'},
            "maintenance[0]",
            "cron: '0 0 31 4 *' never fires (no such date)",
            id="cron-never-fires",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": CRON},
            "maintenance[0]",
            "duration: give cron and duration",
            id="cron-without-duration",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": CRON, "duration": '"soon"'},
            "maintenance[0].duration",
            "'soon' is not a duration: write a number and a unit (ms, s, m, h, d), e.g. '90s'",
            id="bad-duration",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": CRON, "duration": '"400d"'},
            "maintenance[0]",
            "duration: must be positive and at most 366 days",
            id="duration-too-long",
        ),
        pytest.param(
            {"subject": '"cam/1"', "cron": CRON, "duration": '"1h"'},
            "maintenance[0].subject",
            NOT_AN_ID,
            id="subject-not-an-id",
        ),
        pytest.param(
            {"subject": '"cam"', "cron": CRON, "duration": '"1h"', "colour": '"red"'},
            "maintenance[0].colour",
            "unknown key",
            id="unknown-key",
        ),
    ],
)
def test_a_bad_maintenance_window_names_its_key(
    keys: dict[str, str], path: str, message: str
) -> None:
    text = ORGS + SUBJECTS + maintenance(**keys)
    assert [(p.path, p.message) for p in problems_of(text, env={"TOKEN": "t"})] == [(path, message)]
