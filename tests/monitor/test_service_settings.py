"""The settings as the service reads them: where pull probes run ([monitor] pull_probes: auto
picks the worker process from WORKER_FROM pull subjects on more than one CPU; worker and inline
are what they say), where webhook delivery runs ([webhook_delivery] process, the same way), and
what a reload keeps of the running config."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import config_text
from tests.peers import process_alive
from tocsin import app
from tocsin.app import DELIVERY_WORKER_FROM
from tocsin.config import ConfigError, parse, reuse_unchanged
from tocsin.db.engine import open_database
from tocsin.monitor import service
from tocsin.monitor.pulls import InlinePulls
from tocsin.monitor.service import WORKER_FROM, _in_worker
from tocsin.monitor.worker import WorkerProcess
from tocsin.tickets.store import TicketStore


def site(db_url: str, *, http: int, mqtt: int = 0, where: str | None = None) -> str:
    lines = ["[monitor]"] + ([f'pull_probes = "{where}"'] if where else [])
    lines += ["[[mqtt.brokers]]", 'name = "site"', 'host = "127.0.0.1"']
    for n in range(http):
        lines += [
            "[[devices]]",
            'org = "acme"',
            f'id = "http-{n}"',
            f'name = "HTTP {n}"',
            f'probe = {{ type = "http", url = "http://127.0.0.1:9/{n}" }}',
        ]
    for n in range(mqtt):  # heartbeat subjects are not pull subjects
        lines += [
            "[[devices]]",
            'org = "acme"',
            f'id = "mqtt-{n}"',
            f'name = "MQTT {n}"',
            f'probe = {{ type = "mqtt", broker = "site", status_topic = "d/{n}/status" }}',
        ]
    return config_text(db_url, extra="\n".join(lines) + "\n")


@pytest.mark.parametrize(
    ("http", "mqtt", "where", "cpus", "in_worker"),
    [
        (WORKER_FROM, 0, None, 2, True),  # auto, a large site
        (WORKER_FROM - 1, 2, None, 2, False),  # auto: MQTT subjects do not count
        (WORKER_FROM, 0, None, 1, False),  # auto on one CPU: no core to gain
        (3, 0, "worker", 1, True),
        (WORKER_FROM, 0, "inline", 2, False),
    ],
)
def test_where_pull_probes_run(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    http: int,
    mqtt: int,
    where: str | None,
    cpus: int,
    in_worker: bool,
) -> None:
    monkeypatch.setattr(service, "cpus", lambda: cpus)
    settings = parse(site(db_url, http=http, mqtt=mqtt, where=where))
    assert settings.config.monitor.pull_probes == (where or "auto")
    assert _in_worker(settings) is in_worker


def test_an_unknown_place_is_refused_with_its_key(db_url: str) -> None:
    with pytest.raises(ConfigError, match=r"monitor\.pull_probes"):
        parse(site(db_url, http=1, where="elsewhere"))


def test_a_reload_keeps_the_running_objects_of_unchanged_subjects(db_url: str) -> None:
    running = parse(site(db_url, http=3, mqtt=2)).config
    text = site(db_url, http=3, mqtt=2).replace("http://127.0.0.1:9/1", "http://127.0.0.1:9/one")
    reloaded = parse(text).config
    assert reuse_unchanged(running, reloaded) == 4
    by_id = {d.id: d for d in reloaded.devices}
    assert by_id["http-1"] is not running.devices[1]  # changed: the new one
    assert str(getattr(by_id["http-1"].probe, "url", "")).endswith("/one")
    same = [d for d in reloaded.devices if d.id != "http-1"]
    assert all(any(d is r for r in running.devices) for d in same)


HOOK_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


async def test_a_spare_worker_the_config_does_not_want_is_ended(db_url: str) -> None:
    settings = parse(site(db_url, http=3))  # auto, a small site: the probes run inline
    spare = WorkerProcess()
    monitor = service.MonitorService(
        settings, TicketStore(open_database(settings.store_url)), spare=spare
    )
    assert isinstance(monitor.pulls, InlinePulls)
    assert not process_alive(spare.pid)


@pytest.mark.parametrize(
    ("mqtt", "hooks", "where", "cpus", "in_worker"),
    [
        (DELIVERY_WORKER_FROM, 1, None, 2, True),  # auto, a large site with an endpoint
        (DELIVERY_WORKER_FROM - 1, 1, None, 2, False),  # auto, a smaller site
        (DELIVERY_WORKER_FROM, 0, None, 2, False),  # auto, nothing to deliver to
        (DELIVERY_WORKER_FROM, 1, None, 1, False),  # auto on one CPU: no core to gain
        (0, 0, "worker", 1, True),
        (DELIVERY_WORKER_FROM, 1, "inline", 2, False),
    ],
)
def test_where_webhook_delivery_runs(
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    mqtt: int,
    hooks: int,
    where: str | None,
    cpus: int,
    in_worker: bool,
) -> None:
    monkeypatch.setattr(app, "cpus", lambda: cpus)
    text = site(db_url, http=0, mqtt=mqtt)
    text += "".join(
        f'[[webhooks]]\nname = "hook-{n}"\nurl = "http://127.0.0.1:9/{n}"\nsecret_env = "HOOK"\n'
        for n in range(hooks)
    )
    if where:
        text += f'[webhook_delivery]\nprocess = "{where}"\n'
    settings = parse(text, env={"HOOK": HOOK_SECRET})
    assert settings.config.webhook_delivery.process == (where or "auto")
    assert app.delivery_in_worker(settings) is in_worker


def test_an_unknown_delivery_place_is_refused_with_its_key(db_url: str) -> None:
    text = site(db_url, http=1) + '[webhook_delivery]\nprocess = "thread"\n'
    with pytest.raises(ConfigError, match=r"webhook_delivery\.process"):
        parse(text)


async def test_each_subject_gets_its_own_windows_or_the_defaults(db_url: str) -> None:
    text = site(db_url, http=3, mqtt=1, where="inline").replace(
        'id = "http-1"', 'id = "http-1"\ndebounce = "7m"\nflap_threshold = 9'
    )
    settings = parse(text.replace("[monitor]", '[monitor]\ndebounce = "2m"'))
    monitor = service.MonitorService(settings, TicketStore(open_database(settings.store_url)))
    subjects = {key.id: tracked.windows for key, tracked in monitor.monitor.subjects().items()}
    assert subjects["http-1"].debounce == timedelta(minutes=7)
    assert subjects["http-1"].flap_threshold == 9
    assert subjects["http-0"].debounce == timedelta(minutes=2)  # the [monitor] default
    assert subjects["http-0"] is subjects["http-2"]  # one object for equal windows
    assert subjects["http-0"].confirm_by_checks  # a pull subject: confirmed by checks
    assert subjects["mqtt-0"].debounce == timedelta(minutes=2)
    assert not subjects["mqtt-0"].confirm_by_checks  # time-based


def with_spaces(text: str, *, declared: bool) -> str:
    """`site`'s devices in two spaces: floor-1 declared (when `declared`), floor-2 implied."""
    text = text.replace('id = "mqtt-0"', 'id = "mqtt-0"\nspace = "floor-1"')
    text = text.replace('id = "mqtt-1"', 'id = "mqtt-1"\nspace = "floor-2"')
    if declared:
        text += '\n[[spaces]]\norg = "acme"\nid = "floor-1"\nname = "First floor"\n'
    return text


async def test_a_reload_adds_and_removes_spaces(db_url: str, store: TicketStore) -> None:
    plain = parse(site(db_url, http=1, mqtt=2, where="inline"))
    monitor = service.MonitorService(plain, store)
    tracked = monitor.monitor.subjects()
    assert not [key for key in tracked if key.type == "space"]

    changes = await monitor.apply(
        parse(with_spaces(site(db_url, http=1, mqtt=2, where="inline"), declared=True))
    )
    assert changes["added"] == ["acme/space/floor-1", "acme/space/floor-2"]
    tracked = monitor.monitor.subjects()
    names = {key.id: t.name for key, t in tracked.items() if key.type == "space"}
    assert names == {"floor-1": "First floor", "floor-2": "floor-2"}
    device = next(key for key in tracked if key.id == "mqtt-0")
    assert [p.id for p in monitor.monitor.dependencies.parents(device)] == ["floor-1"]

    changes = await monitor.apply(parse(site(db_url, http=1, mqtt=2, where="inline")))
    assert changes["removed"] == ["acme/space/floor-1", "acme/space/floor-2"]
    assert not [key for key in monitor.monitor.subjects() if key.type == "space"]
    assert monitor.monitor.dependencies.parents(device) == ()


async def test_a_reload_applies_the_configs_maintenance_windows(
    db_url: str, store: TicketStore
) -> None:
    text = site(db_url, http=2, where="inline")
    monitor = service.MonitorService(parse(text), store)
    key = next(k for k in monitor.monitor.subjects() if k.id == "http-0")
    assert monitor.monitor.maintenance_until(key) is None
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = (now - timedelta(hours=1)).isoformat(), (now + timedelta(days=1)).isoformat()
    window = (
        '\n[[maintenance]]\norg = "acme"\nsubject = "http-0"\nreason = "swap"\n'
        f"start = {start}\nend = {end}\n"
    )
    await monitor.apply(parse(text + window))
    assert [w.id for w in monitor.monitor.maintenance.windows("acme")] == ["config-1"]
    assert monitor.monitor.maintenance_until(key) is not None
    assert monitor.monitor.subjects()[key].state.held_by == "maintenance/config-1"
    await monitor.apply(parse(text))
    assert monitor.monitor.maintenance_until(key) is None
    assert monitor.monitor.subjects()[key].state.held_by is None
