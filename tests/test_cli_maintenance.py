"""`tocsin maintenance add|list|remove` on a real config file and a real SQLite file: the
config's windows are listed with the store's, bad input is one line naming the option and
writes nothing."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.conftest import Api, config_text
from tocsin.cli import main
from tocsin.db.engine import Database
from tocsin.monitor import maintenance_store

SUBJECTS = """
[[devices]]
org = "acme"
id = "cam-1"
name = "Camera 1"
space = "b2-f3"
labels = { rack = "A3" }
probe = { type = "push", timeout = "5m" }

[[integrations]]
org = "acme"
id = "bms"
name = "BMS"
check = { type = "http", url = "https://bms.example.org/me", auth = { bearer_env = "PATH" } }

[[spaces]]
org = "acme"
id = "b2"
name = "Building 2"

[[maintenance]]
org = "acme"
space = "b2-f3"
cron = "0 2 * * sun"
duration = "2h"
reason = "weekly patching"

[[maintenance]]
org = "beta"
labels = { rack = "A3" }
cron = "* * * * *"
duration = "1h"
"""


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    file = tmp_path / "tocsin.toml"
    file.write_text(config_text(db_url, extra=SUBJECTS), encoding="utf-8")
    return file


def invoke(*args: str) -> Result:
    env = {"TOCSIN_CONFIG": None, "COLUMNS": "200"}
    return CliRunner().invoke(main, list(args), env=env)


def maintenance(config: Path, command: str, *args: str) -> Result:
    return invoke("maintenance", command, "--config", str(config), "--org", "acme", *args)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def listed(config: Path) -> list[dict[str, Any]]:
    windows: list[dict[str, Any]] = json.loads(ok(maintenance(config, "list", "--json")).stdout)
    return windows


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def upgraded(config_file: Path) -> Path:
    ok(invoke("db", "upgrade", "--config", str(config_file)))
    return config_file


def later(**delta: float) -> str:
    moment = datetime.now(UTC) + timedelta(**delta)
    return moment.isoformat().replace("+00:00", "Z")


def test_add_list_and_remove(upgraded: Path) -> None:
    config = listed(upgraded)
    assert [(w["id"], w["source"], w["space"]) for w in config] == [("config-1", "config", "b2-f3")]
    assert config[0]["active"] is (config[0]["next_start"] is None)

    now = json.loads(
        ok(maintenance(upgraded, "add", "--subject", "cam-1", "--for", "2h", "--json")).stdout
    )
    assert (now["id"], now["source"], now["subject"], now["active"]) == ("1", "api", "cam-1", True)
    assert now["until"] == now["end"]
    assert now["created_by"].endswith("(cli)")

    weekly = ok(
        maintenance(
            upgraded,
            "add",
            "--space",
            "b2",
            "--cron",
            "30 1 * * sat",
            "--duration",
            "90m",
            "--reason",
            "UPS test",
        )
    )
    assert "added maintenance window 2: space b2, cron 30 1 * * sat (UTC) for 1h30m" in one_line(
        weekly.stdout
    )
    start, end = later(days=2), later(days=2, hours=4)
    racks = ok(
        maintenance(
            upgraded,
            "add",
            "--label",
            "rack=A3",
            "--label",
            "floor=2",
            "--start",
            start,
            "--end",
            end,
            "--json",
        )
    )
    rack = json.loads(racks.stdout)
    assert rack["labels"] == {"rack": "A3", "floor": "2"}
    assert (rack["active"], rack["next_start"]) == (False, rack["start"])
    assert datetime.fromisoformat(rack["start"]) == datetime.fromisoformat(start)

    windows = listed(upgraded)
    assert [w["id"] for w in windows] == ["config-1", "1", "2", "3"]
    assert windows[2]["reason"] == "UPS test"
    table = one_line(ok(maintenance(upgraded, "list")).stdout)
    for text in (
        "id",
        "covers",
        "when",
        "active",
        "reason",
        "config-1",
        "space b2-f3",
        "cron 0 2 * * sun (UTC) for 2h",
        "weekly patching",
        "subject cam-1",
        "active until",
        "labels floor=2, rack=A3",
        "next ",
    ):
        assert text in table, text

    removed = ok(maintenance(upgraded, "remove", "1"))
    assert "removed maintenance window 1" in removed.stdout
    assert [w["id"] for w in listed(upgraded)] == ["config-1", "2", "3"]
    again = maintenance(upgraded, "remove", "1")
    assert again.exit_code == 2
    assert "no maintenance window '1' in org 'acme'" in again.stderr
    assert again.stderr.count("\n") == 1


def test_a_config_window_is_removed_from_the_config_file_only(upgraded: Path) -> None:
    result = maintenance(upgraded, "remove", "config-1")
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        "error: config-1: defined in the config file; remove it there"
    )
    assert [w["id"] for w in listed(upgraded)] == ["config-1"]


def test_another_orgs_windows_are_not_listed_or_removed(upgraded: Path) -> None:
    ok(maintenance(upgraded, "add", "--subject", "cam-1", "--for", "1h"))
    beta = ["--config", str(upgraded), "--org", "beta"]
    windows = json.loads(ok(invoke("maintenance", "list", *beta, "--json")).stdout)
    assert [(w["id"], w["labels"], w["active"]) for w in windows] == [
        ("config-1", {"rack": "A3"}, True)
    ]
    assert invoke("maintenance", "remove", *beta, "1").exit_code == 2
    assert [w["id"] for w in listed(upgraded)] == ["config-1", "1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--subject", "cam-1", "--space", "b2", "--for", "1h"],
            "--subject: give exactly one of subject, space or labels",
            id="subject-and-space",
        ),
        pytest.param(
            ["--for", "1h"],
            "--subject: give exactly one of subject, space or labels",
            id="no-target",
        ),
        pytest.param(
            ["--subject", "cam-1"],
            "--start: give start and end, or cron and duration",
            id="no-when",
        ),
        pytest.param(
            ["--subject", "cam-1", "--start", later(hours=2), "--end", later(hours=1)],
            "--end: must be after start",
            id="end-before-start",
        ),
        pytest.param(
            ["--subject", "cam-1", "--start", later(hours=2)],
            "--end: give start and end",
            id="start-without-end",
        ),
        pytest.param(
            ["--subject", "cam-1", "--start", "2026-12-24T18:00:00", "--end", later(hours=1)],
            "--start: needs a UTC offset, e.g. 2026-12-24T18:00:00Z",
            id="start-without-offset",
        ),
        pytest.param(
            ["--subject", "cam-1", "--start", "tomorrow", "--end", later(hours=1)],
            "--start: not an RFC 3339 date-time, e.g. 2026-12-24T18:00:00Z",
            id="start-not-a-date",
        ),
        pytest.param(
            ["--subject", "cam-1", "--cron", "0 2 * *", "--duration", "1h"],
            "--cron: not a crontab schedule (5 fields, UTC): Wrong number of fields; got 4, "
            "expected 5",
            id="bad-cron",
        ),
        pytest.param(
            ["--subject", "cam-1", "--cron", "0 0 30 2 *", "--duration", "1h"],
            "--cron: '0 0 30 2 *' never fires (no such date)",
            id="cron-never-fires",
        ),
        pytest.param(
            ["--subject", "cam-1", "--cron", "0 2 * * *"],
            "--duration: give cron and duration",
            id="cron-without-duration",
        ),
        pytest.param(
            ["--subject", "cam-1", "--cron", "0 2 * * *", "--duration", "soon"],
            "--duration: 'soon' is not a duration: write a number and a unit (ms, s, m, h, d), "
            "e.g. '90s'",
            id="bad-duration",
        ),
        pytest.param(
            ["--subject", "cam-1", "--for", "0s"],
            "--for: must be positive and at most 366 days",
            id="for-zero",
        ),
        pytest.param(
            ["--subject", "cam-1", "--for", "99999999999d"],
            "--for: too long",
            id="for-beyond-timedelta",
        ),
        pytest.param(
            ["--subject", "cam-1", "--for", "1h", "--start", later(hours=1)],
            "--for: give --for, or --start and --end, not both",
            id="for-and-start",
        ),
        pytest.param(
            ["--subject", "cam-1", "--for", "1h", "--cron", "0 2 * * *"],
            "--for: give --for, or --cron and --duration, not both",
            id="for-and-cron",
        ),
        pytest.param(
            ["--label", "rack", "--for", "1h"],
            "--label: 'rack' is not key=value",
            id="label-without-value",
        ),
        pytest.param(
            ["--subject", "nope", "--for", "1h"],
            "--subject: no subject 'nope' in org 'acme'",
            id="unknown-subject",
        ),
        pytest.param(
            ["--space", "cam-1", "--for", "1h"],
            "--space: no space 'cam-1' in org 'acme'",
            id="unknown-space",
        ),
        pytest.param(
            ["--subject", "cam/1", "--for", "1h"],
            "--subject: 'cam/1' is not a subject id (no '/', 1-128 characters)",
            id="subject-not-an-id",
        ),
        pytest.param(
            ["--subject", "cam-1", "--for", "1h", "--reason", "r" * 501],
            "--reason: at most 500 characters",
            id="reason-too-long",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_writes_nothing(
    upgraded: Path, args: list[str], message: str
) -> None:
    result = maintenance(upgraded, "add", *args)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stderr == f"error: {message}\n"
    assert [w["id"] for w in listed(upgraded)] == ["config-1"]


def test_an_unknown_org_and_an_unknown_option_are_usage_errors(upgraded: Path) -> None:
    result = invoke("maintenance", "list", "--config", str(upgraded), "--org", "nope")
    assert result.exit_code == 2
    assert "--org: no org 'nope'" in result.stderr
    result = maintenance(upgraded, "add", "--subject", "cam-1", "--for", "1h", "--colour", "red")
    assert result.exit_code == 2
    assert "No such option '--colour'" in result.stderr
    assert [w["id"] for w in listed(upgraded)] == ["config-1"]


def test_an_old_schema_is_refused(config_file: Path) -> None:
    for result in (
        maintenance(config_file, "list"),
        maintenance(config_file, "add", "--subject", "cam-1", "--for", "1h"),
    ):
        assert result.exit_code == 1, result.stdout
        assert "run `tocsin db upgrade` first" in result.stderr


async def test_the_api_lists_what_the_cli_added(
    api: Api, database: Database, db_url: str, tmp_path: Path
) -> None:
    """The store is shared: the daemon's API (and monitor) see the CLI's windows."""
    config = tmp_path / "cli.toml"
    config.write_text(config_text(db_url, extra=SUBJECTS), encoding="utf-8")
    args = ["maintenance", "add", "--config", str(config), "--org", "acme"]
    result = await asyncio.to_thread(
        CliRunner().invoke, main, [*args, "--subject", "bms", "--for", "1h", "--json"]
    )
    assert result.exit_code == 0, result.output
    added = json.loads(result.stdout)
    status, body = await api.call("GET", "/api/v1/orgs/acme/maintenance", token="acme-read")
    assert status == 200
    assert body == {"windows": [added]}
    assert [w.id for w in await maintenance_store.load(database.read)] == [added["id"]]
