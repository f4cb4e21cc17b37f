"""The command line on a real config file and a real SQLite file; `tocsin run` once for real."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner, Result

from tests.conftest import config_text, token_value
from tocsin.cli import main


@pytest.fixture
def config_file(tmp_path: Path, db_url: str) -> Path:
    file = tmp_path / "tocsin.toml"
    file.write_text(config_text(db_url), encoding="utf-8")
    return file


def invoke(*args: str) -> Result:
    env = {"TOCSIN_CONFIG": None}  # only what the test passes
    return CliRunner().invoke(main, list(args), env=env)


def tickets(config: Path, *args: str) -> Result:
    return invoke("tickets", args[0], "--config", str(config), "--org", "acme", *args[1:])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def as_json(result: Result) -> Any:
    return json.loads(ok(result).stdout)


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def upgraded(config_file: Path) -> Path:
    result = ok(invoke("db", "upgrade", "--config", str(config_file)))
    assert "schema at revision" in result.stdout
    return config_file


def open_user_ticket(config: Path, *extra: str) -> dict[str, Any]:
    return as_json(
        tickets(
            config,
            "open",
            "--subject-type",
            "space",
            "--subject-id",
            "lobby",
            "--subject-name",
            "Lobby",
            "--description",
            "It is cold",
            "--json",
            *extra,
        )
    )


def open_workflow_ticket(config: Path, *extra: str) -> Result:
    return tickets(
        config,
        "open",
        "--source",
        "workflow",
        "--kind",
        "bms_alarm",
        "--dedup-key",
        "bms-chiller-2",
        "--subject-type",
        "integration",
        "--subject-id",
        "bms",
        "--subject-name",
        "BMS",
        *extra,
    )


# -- db upgrade and tickets ----------------------------------------------------------------------


def test_db_upgrade_is_idempotent(config_file: Path) -> None:
    first = ok(invoke("db", "upgrade", "--config", str(config_file)))
    second = ok(invoke("db", "upgrade", "--config", str(config_file)))
    assert first.stdout == second.stdout


def test_it_opens_a_user_ticket(upgraded: Path) -> None:
    ticket = open_user_ticket(upgraded, "--as", "Robin")
    assert ticket["seq"] == 1
    assert ticket["org"] == "acme"
    assert ticket["state"] == "open"
    assert ticket["source"] == "user"
    assert ticket["kind"] == "user_report"
    assert ticket["subject"] == {"type": "space", "id": "lobby", "name": "Lobby"}
    assert ticket["description"] == "It is cold"
    assert ticket["url"] == "http://tocsin.test/orgs/acme/tickets/1"
    shown = as_json(tickets(upgraded, "show", "1", "--json"))
    assert shown["timeline"][0]["actor"] == {"type": "user", "name": "Robin"}


def test_it_opens_a_workflow_ticket_and_deduplicates_on_its_key(upgraded: Path) -> None:
    first = ok(open_workflow_ticket(upgraded))
    assert one_line(first.stdout) == "#1 Open (created)"
    again = ok(open_workflow_ticket(upgraded))
    assert one_line(again.stdout) == "#1 Open (deduplicated)"
    ticket = as_json(open_workflow_ticket(upgraded, "--json"))
    assert ticket["source"] == "workflow"
    assert ticket["kind"] == "bms_alarm"
    assert ticket["dedup_key"] == "bms-chiller-2"
    listing = as_json(tickets(upgraded, "list", "--json"))
    assert [t["seq"] for t in listing] == [1]
    shown = as_json(tickets(upgraded, "show", "1", "--json"))
    assert shown["timeline"][0]["actor"] == {"type": "workflow", "name": "cli"}


def test_a_workflow_ticket_needs_a_kind(upgraded: Path) -> None:
    result = tickets(
        upgraded,
        "open",
        "--source",
        "workflow",
        "--subject-type",
        "device",
        "--subject-id",
        "d1",
        "--subject-name",
        "D1",
    )
    assert result.exit_code == 2
    assert "--kind" in result.stderr


def test_a_ticket_round_trips_through_every_command(upgraded: Path) -> None:
    open_user_ticket(upgraded)
    ok(open_workflow_ticket(upgraded))
    me = ("--as", "Pat")

    assert one_line(ok(tickets(upgraded, "start", "2", *me)).stdout) == "#2 In Progress (start)"
    assert one_line(ok(tickets(upgraded, "comment", "2", "on *site*", *me)).stdout) == (
        "#2 In Progress (commented)"
    )
    assert one_line(
        ok(tickets(upgraded, "edit", "2", "--description", "Chiller valve", *me)).stdout
    ) == ("#2 In Progress (edited)")
    resolved = as_json(tickets(upgraded, "resolve", "2", "--comment", "freed", "--json", *me))
    assert resolved["state"] == "resolved"
    assert resolved["resolved_at"] is not None
    assert one_line(ok(tickets(upgraded, "reopen", "2", *me)).stdout) == "#2 Open (reopen)"

    shown = as_json(tickets(upgraded, "show", "2", "--json"))
    assert shown["state"] == "open"
    assert shown["description"] == "Chiller valve"
    timeline = [(e["type"], e["actor"]["name"]) for e in shown["timeline"]]
    assert timeline == [
        ("opened", "cli"),
        ("started", "Pat"),
        ("comment", "Pat"),
        ("description_edited", "Pat"),
        ("resolved", "Pat"),
        ("reopened", "Pat"),
    ]
    assert shown["timeline"][2]["body"] == "on *site*"
    assert shown["timeline"][4]["comment"] == "freed"
    assert shown["timeline"][3]["old_description"] == ""

    human = ok(tickets(upgraded, "show", "2")).stdout
    assert "#2 Open" in human
    assert "Chiller valve" in human
    for event in ("opened", "started", "comment", "resolved", "reopened"):
        assert event in human


def test_list_shows_tickets_newest_first_and_filters(upgraded: Path) -> None:
    open_user_ticket(upgraded)
    ok(open_workflow_ticket(upgraded))
    ok(tickets(upgraded, "resolve", "1"))

    listing = as_json(tickets(upgraded, "list", "--json"))
    assert [t["seq"] for t in listing] == [2, 1]
    assert set(listing[0]) == {
        "org",
        "seq",
        "state",
        "source",
        "kind",
        "subject",
        "description",
        "dedup_key",
        "opened_at",
        "updated_at",
        "resolved_at",
        "url",
    }
    open_only = as_json(tickets(upgraded, "list", "--state", "open", "--json"))
    assert [t["seq"] for t in open_only] == [2]
    both = as_json(tickets(upgraded, "list", "--state", "open", "--state", "resolved", "--json"))
    assert [t["seq"] for t in both] == [2, 1]
    users = as_json(tickets(upgraded, "list", "--source", "user", "--json"))
    assert [t["seq"] for t in users] == [1]
    found = as_json(tickets(upgraded, "list", "-q", "COLD", "--json"))
    assert [t["seq"] for t in found] == [1]
    limited = as_json(tickets(upgraded, "list", "--limit", "1", "--json"))
    assert [t["seq"] for t in limited] == [2]

    table = ok(tickets(upgraded, "list")).stdout
    assert "#2" in table
    assert "#1" in table
    assert table.index("#2") < table.index("#1")
    assert "Resolved" in table


def test_list_says_so_when_there_are_no_tickets(upgraded: Path) -> None:
    assert "no tickets" in ok(tickets(upgraded, "list")).stdout
    assert as_json(tickets(upgraded, "list", "--json")) == []


@pytest.mark.parametrize(
    ("setup", "command", "state"),
    [
        pytest.param([], "reopen", "open", id="reopen-open"),
        pytest.param(["start"], "start", "in_progress", id="start-in-progress"),
        pytest.param(["resolve"], "resolve", "resolved", id="resolve-resolved"),
        pytest.param(["resolve"], "start", "resolved", id="start-resolved"),
    ],
)
def test_an_illegal_transition_exits_2_naming_the_state(
    upgraded: Path, setup: list[str], command: str, state: str
) -> None:
    open_user_ticket(upgraded)
    for step in setup:
        ok(tickets(upgraded, step, "1"))
    before = as_json(tickets(upgraded, "show", "1", "--json"))
    result = tickets(upgraded, command, "1")
    assert result.exit_code == 2
    assert f"that is {state}" in one_line(result.stderr)
    assert "Traceback" not in result.output
    assert as_json(tickets(upgraded, "show", "1", "--json")) == before


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["show", "99"], id="show"),
        pytest.param(["start", "99"], id="start"),
        pytest.param(["resolve", "99"], id="resolve"),
        pytest.param(["reopen", "99"], id="reopen"),
        pytest.param(["comment", "99", "hello"], id="comment"),
        pytest.param(["edit", "99", "--description", "x"], id="edit"),
    ],
)
def test_an_unknown_ticket_exits_2(upgraded: Path, args: list[str]) -> None:
    result = tickets(upgraded, *args)
    assert result.exit_code == 2
    assert "no ticket #99" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("seq", ["0", "-1", "one"])
def test_a_ticket_number_must_be_a_positive_integer(upgraded: Path, seq: str) -> None:
    result = invoke("tickets", "show", "--config", str(upgraded), "--org", "acme", "--", seq)
    assert result.exit_code == 2


def test_an_empty_comment_exits_2(upgraded: Path) -> None:
    open_user_ticket(upgraded)
    result = tickets(upgraded, "comment", "1", "   ")
    assert result.exit_code == 2
    assert "body" in result.stderr


def test_a_user_ticket_refuses_a_free_form_kind(upgraded: Path) -> None:
    result = tickets(
        upgraded,
        "open",
        "--kind",
        "bms_alarm",
        "--subject-type",
        "device",
        "--subject-id",
        "d1",
        "--subject-name",
        "D1",
    )
    assert result.exit_code == 2
    assert "unknown kind" in result.stderr
    assert as_json(tickets(upgraded, "list", "--json")) == []


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["list"], id="list"),
        pytest.param(["show", "1"], id="show"),
        pytest.param(["start", "1"], id="start"),
        pytest.param(
            ["open", "--subject-type", "space", "--subject-id", "x", "--subject-name", "X"],
            id="open",
        ),
    ],
)
def test_tickets_commands_before_db_upgrade_exit_1_saying_to_run_it(
    config_file: Path, args: list[str]
) -> None:
    result = tickets(config_file, *args)
    assert result.exit_code == 1
    assert "tocsin db upgrade" in result.stderr
    assert "Traceback" not in result.output


def test_the_org_must_be_named_when_the_config_has_several(upgraded: Path) -> None:
    result = invoke("tickets", "list", "--config", str(upgraded))
    assert result.exit_code == 2
    assert "--org is required" in result.stderr
    assert "acme, beta" in result.stderr


def test_an_unknown_org_exits_2(upgraded: Path) -> None:
    result = invoke("tickets", "list", "--config", str(upgraded), "--org", "nope")
    assert result.exit_code == 2
    assert "no org 'nope'" in result.stderr


def test_an_org_name_that_looks_like_markup_is_printed_as_is(upgraded: Path) -> None:
    result = invoke("tickets", "list", "--config", str(upgraded), "--org", "[/x]")
    assert result.exit_code == 2
    assert "no org '[/x]'" in result.stderr
    assert "Traceback" not in result.output


def test_the_org_may_be_left_out_when_there_is_one(tmp_path: Path, db_url: str) -> None:
    file = tmp_path / "one.toml"
    file.write_text(f'[store]\nurl = "{db_url}"\n[[orgs]]\nslug = "solo"\nname = "Solo"\n')
    ok(invoke("db", "upgrade", "--config", str(file)))
    ok(
        invoke(
            "tickets",
            "open",
            "--config",
            str(file),
            "--subject-type",
            "other",
            "--subject-id",
            "x",
            "--subject-name",
            "X",
        )
    )
    listing = as_json(invoke("tickets", "list", "--config", str(file), "--json"))
    assert [(t["org"], t["seq"]) for t in listing] == [("solo", 1)]


def test_the_config_may_come_from_the_environment(upgraded: Path) -> None:
    result = CliRunner().invoke(
        main, ["tickets", "list", "--org", "acme", "--json"], env={"TOCSIN_CONFIG": str(upgraded)}
    )
    assert json.loads(ok(result).stdout) == []


def test_a_missing_config_option_is_bad_usage() -> None:
    result = invoke("tickets", "list")
    assert result.exit_code == 2


# -- check-config --------------------------------------------------------------------------------


def test_check_config_accepts_a_valid_file(config_file: Path) -> None:
    result = ok(invoke("check-config", str(config_file)))
    assert "valid (2 orgs, 4 tokens)" in one_line(result.stdout)


def test_check_config_accepts_the_example_config() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    ok(invoke("check-config", str(example)))


def check_config(tmp_path: Path, text: str) -> Result:
    file = tmp_path / "broken.toml"
    file.write_text(text, encoding="utf-8")
    result = invoke("check-config", str(file))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"{file}: invalid config" in result.stderr
    return result


def problem_lines(result: Result) -> list[str]:
    return [line.strip() for line in result.stderr.splitlines()[1:] if line.strip()]


def test_check_config_prints_every_problem_with_its_key_path(tmp_path: Path) -> None:
    text = "\n".join(
        [
            "[server]",
            "listen = 8080",
            "colour = 'red'",
            "[monitor]",
            'debounce = "2x"',
            "[[orgs]]",
            'slug = "Acme!"',
            'name = "Acme"',
            "[[orgs]]",
            'slug = "beta"',
            'name = "Beta"',
            "report_issue = 'yes'",
        ]
    )
    lines = problem_lines(check_config(tmp_path, text))
    assert [line.split(":")[0] for line in lines] == [
        "server.listen",
        "server.colour",
        "monitor.debounce",
        "orgs[0].slug",
        "orgs[1].report_issue",
    ]
    assert "server.colour: unknown key" in lines
    assert any("'2x' is not a duration" in line for line in lines)


def test_check_config_prints_every_secret_problem_with_its_key_path(tmp_path: Path) -> None:
    secret = "the-secret-token-value"
    (tmp_path / "twin").write_text(secret, encoding="utf-8")
    (tmp_path / "twin2").write_text(secret + "\n", encoding="utf-8")
    long_dir = "a-folder-with-a-rather-long-name/and-another-one-below-it"
    text = "\n".join(
        [
            "[[orgs]]",
            'slug = "acme"',
            'name = "Acme"',
            "[[orgs.tokens]]",
            'name = "ops"',
            'scope = "write"',
            f'token_file = "{long_dir}/missing"',
            "[[orgs.tokens]]",
            'name = "bot"',
            'scope = "workflow"',
            'token_env = "TOCSIN_TEST_SURELY_UNSET_VARIABLE"',
            "[[orgs.tokens]]",
            'name = "twin-a"',
            'scope = "read"',
            'token_file = "twin"',
            "[[orgs.tokens]]",
            'name = "twin-b"',
            'scope = "read"',
            'token_file = "twin2"',
        ]
    )
    result = check_config(tmp_path, text)
    lines = problem_lines(result)
    assert lines[0] == (
        f"orgs[0].tokens[0].token_file: cannot read {tmp_path.resolve()}/{long_dir}/missing "
        "(No such file or directory)"
    )
    assert lines[1].startswith("orgs[0].tokens[1].token_env: ")
    assert lines[2].startswith("orgs: the same token is given twice (acme/twin-a and acme/twin-b)")
    assert len(lines) == 3
    assert secret not in result.output


@pytest.mark.parametrize(
    ("text", "path", "says"),
    [
        pytest.param("[server]\nport = 1\n", "server.port", "unknown key", id="unknown-key"),
        pytest.param(
            "[monitor]\ninterval = 30\n", "monitor.interval", "durations are strings", id="type"
        ),
        pytest.param(
            '[monitor]\nrecovery = "2x"\n', "monitor.recovery", "not a duration", id="duration"
        ),
        pytest.param(
            '[[orgs]]\nslug = "Big Co"\nname = "B"\n', "orgs[0].slug", "pattern", id="slug"
        ),
        pytest.param(
            '[[orgs]]\nslug = "a"\nname = "A"\n[[orgs]]\nslug = "a"\nname = "B"\n',
            "orgs",
            "org slugs must be unique: a",
            id="duplicate-slug",
        ),
        pytest.param(
            '[[orgs]]\nslug = "a"\nname = "A"\n[[orgs.tokens]]\nname = "t"\nscope = "read"\n'
            'token_file = "nope"\n',
            "orgs[0].tokens[0].token_file",
            "cannot read",
            id="missing-token-file",
        ),
    ],
)
def test_check_config_names_the_key_of_each_kind_of_problem(
    tmp_path: Path, text: str, path: str, says: str
) -> None:
    [line] = problem_lines(check_config(tmp_path, text))
    assert line.startswith(f"{path}: ")
    assert says in line


def test_check_config_reports_invalid_toml_without_a_traceback(tmp_path: Path) -> None:
    [line] = problem_lines(check_config(tmp_path, "[server\nlisten = 1\n"))
    assert line.startswith("not valid TOML")


def test_check_config_reports_a_file_it_cannot_read(tmp_path: Path) -> None:
    result = invoke("check-config", str(tmp_path / "absent.toml"))
    assert result.exit_code == 2
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.output


# -- the daemon ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def read_until(stream: asyncio.StreamReader, marker: str, seen: list[str]) -> None:
    while True:
        line = (await stream.readline()).decode(errors="replace")
        if not line:
            raise AssertionError("the daemon ended before it was ready:\n" + "".join(seen))
        seen.append(line)
        if marker in line:
            return


async def test_run_serves_until_sigterm_then_exits_0(tmp_path: Path, db_url: str) -> None:
    port = free_port()
    text = config_text(db_url).replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{port}"')
    file = tmp_path / "tocsin.toml"
    file.write_text(text + '[log]\nformat = "json"\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "TOCSIN_CONFIG"}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tocsin",
        "run",
        "--config",
        str(file),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        await asyncio.wait_for(read_until(process.stderr, "tocsin ready", seen), timeout=30)
        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {token_value('acme-read')}"}
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as response:
                assert response.status == 200
                assert (await response.json())["status"] == "ok"
            async with session.get(base + "/readyz") as response:
                assert response.status == 200
            async with session.get(base + "/api/v1/orgs/acme/tickets", headers=headers) as r:
                assert r.status == 200  # the daemon brought the schema up itself
                assert await r.json() == {"tickets": [], "next_cursor": None}
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    log = "".join(seen) + stderr.decode(errors="replace")
    assert process.returncode == 0, log
    assert "tocsin stopped" in log
    assert "Traceback" not in log
