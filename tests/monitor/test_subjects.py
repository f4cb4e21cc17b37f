"""What people see of the monitor: GET /subjects and `tocsin subjects`, `tocsin ping-url`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from tests.conftest import Api, config_text
from tocsin.cli import main
from tocsin.monitor.maintenance import Subject, Target, Window
from tocsin.monitor.runtime import HealthMonitor
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.probes.push import PushRegistry, PushSpec
from tocsin.tickets.store import TicketStore
from tocsin.tracker import Windows

CAM = SubjectKey("acme", "device", "cam-1")
DOOR = SubjectKey("acme", "device", "door-2")
OTHER_ORG = SubjectKey("beta", "device", "pump")
SWITCH = SubjectKey("acme", "device", "sw-1")
BEHIND = SubjectKey("acme", "device", "cam-9")  # depends on the switch
FAILED = Observation(
    Health.UNHEALTHY, "HTTP 503 in 3 ms", kind_hint="device_offline", error_class="http_status"
)


async def seed(store: TicketStore) -> None:
    clock = [100.0]
    monitor = HealthMonitor(store, monotonic=lambda: clock[0])
    subjects = [(CAM, "Lobby camera"), (DOOR, "Back door"), (OTHER_ORG, "Pump")]
    for key, name in [*subjects, (SWITCH, "Lobby switch"), (BEHIND, "Stair camera")]:
        monitor.configure(key, name, Windows())
    monitor.set_parents({BEHIND: [SWITCH], DOOR: [SWITCH]})
    await monitor.restore()
    await monitor.handle_observation(CAM, FAILED)
    await monitor.handle_observation(SWITCH, FAILED)  # it holds the cameras behind it
    await monitor.handle_observation(BEHIND, FAILED)
    await monitor.handle_observation(DOOR, Observation(Health.HEALTHY, "HTTP 200 in 2 ms"))
    await monitor.save(force=True)


async def test_the_api_lists_each_subjects_health_for_the_tokens_org_only(
    api: Api, store: TicketStore
) -> None:
    await seed(store)
    status, body = await api.call("GET", "/api/v1/orgs/acme/subjects", token="acme-read")
    assert status == 200
    by_id = {s["subject"]["id"]: s for s in body["subjects"]}  # type: ignore[union-attr]
    assert set(by_id) == {"cam-1", "cam-9", "door-2", "sw-1"}
    assert by_id["cam-1"]["health"] == "failing"  # in debounce
    assert by_id["cam-1"]["last_result"]["detail"] == "HTTP 503 in 3 ms"
    assert by_id["cam-1"]["ticket_seq"] is None
    assert by_id["cam-1"]["no_ticket_because"] is None  # its own debounce: no other reason
    assert by_id["door-2"]["health"] == "up"
    assert by_id["door-2"]["subject"]["name"] == "Back door"
    assert by_id["door-2"]["no_ticket_because"] is None  # held, but healthy: nothing to say
    assert by_id["cam-9"]["health"] == "failing"
    assert by_id["cam-9"]["no_ticket_because"] == "parent sw-1"
    status, _ = await api.call("GET", "/api/v1/orgs/beta/subjects", token="acme-read")
    assert status == 404
    status, _ = await api.call("GET", "/api/v1/orgs/acme/subjects", token=None)
    assert status == 401


async def test_the_cli_shows_subjects(store: TicketStore, db_url: str, tmp_path: Path) -> None:
    await seed(store)
    config = tmp_path / "tocsin.toml"
    config.write_text(config_text(db_url))
    # The CLI runs its own event loop: call it from a thread, as a shell would from outside.
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["subjects", "--config", str(config), "--org", "acme", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["subject"]["id"] for r in rows] == ["cam-1", "cam-9", "door-2", "sw-1"]
    assert rows[1]["no_ticket_because"] == "parent sw-1"
    table = await asyncio.to_thread(
        CliRunner(env={"COLUMNS": "200"}).invoke,
        main,
        ["subjects", "--config", str(config), "--org", "acme"],
    )
    assert table.exit_code == 0
    assert "debounce" in table.output  # the table may wrap "(in debounce)"
    assert "none: parent sw-1" in table.output


def test_ping_url_prints_the_key_the_daemon_will_accept(db_url: str, tmp_path: Path) -> None:
    config = tmp_path / "tocsin.toml"
    config.write_text(
        config_text(
            db_url,
            extra="""
[[devices]]
org = "acme"
id = "backup-job"
name = "Nightly backup"
probe = { type = "push", timeout = "26h" }
""",
        )
    )
    result = CliRunner().invoke(
        main, ["ping-url", "backup-job", "--config", str(config), "--org", "acme"]
    )
    assert result.exit_code == 0, result.output
    url = result.output.strip()
    assert url.startswith("http://tocsin.test/ping/")
    secret = (tmp_path / "push-secret").read_bytes().strip()
    registry = PushRegistry(secret)
    key = registry.register(
        SubjectKey("acme", "device", "backup-job"),
        PushSpec(type="push", timeout="26h"),
        now_mono=0.0,
    )  # type: ignore[arg-type]
    assert url.endswith("/" + key)
    assert registry.ping(key, 1.0) == SubjectKey("acme", "device", "backup-job")
    missing = CliRunner().invoke(
        main, ["ping-url", "nope", "--config", str(config), "--org", "acme"]
    )
    assert missing.exit_code == 2


async def test_the_cli_says_until_when_a_maintenance_window_holds_a_subject(
    store: TicketStore, db_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(hours=1), now + timedelta(hours=3)
    window = Window(
        id="config-1",
        org="acme",
        target=Target(subject="cam-1"),
        start=start,
        end=end,
        source="config",
    )
    monitor = HealthMonitor(store)  # the real clocks: the CLI reads the wall clock
    monitor.configure(CAM, "Lobby camera", Windows(debounce=timedelta(0)))
    monitor.set_maintenance([Subject(CAM)], [window])
    await monitor.restore()
    await monitor.handle_observation(CAM, FAILED)
    await monitor.tick()  # past its debounce (none): unreachable, held by the window
    await monitor.save(force=True)
    config = tmp_path / "tocsin.toml"
    config.write_text(
        config_text(
            db_url,
            extra=f"""
[[devices]]
org = "acme"
id = "cam-1"
name = "Lobby camera"
probe = {{ type = "http", url = "http://127.0.0.1:9/" }}
[[maintenance]]
org = "acme"
subject = "cam-1"
start = {start.isoformat()}
end = {end.isoformat()}
""",
        )
    )
    result = await asyncio.to_thread(
        CliRunner().invoke, main, ["subjects", "--config", str(config), "--org", "acme", "--json"]
    )
    assert result.exit_code == 0, result.output
    [row] = [r for r in json.loads(result.output) if r["subject"]["id"] == "cam-1"]
    assert row["health"] == "unreachable"
    assert row["maintenance_until"] == end.isoformat().replace("+00:00", ".000Z")
    assert row["no_ticket_because"] == f"maintenance until {row['maintenance_until']}"
