"""`tocsin demo`: the real command on a compressed scenario, and its simulator pieces.

The end-to-end test runs `python -m tocsin demo --speed 5` (windows and timeline five times
faster) and reads its output until every behaviour the demo promises has been printed, then
stops it with SIGINT. MQTT devices take part when a broker can be had (the demo starts
mosquitto when it is installed); the test asserts on them only when the demo says they run.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    UdpTransportTarget,
    get_cmd,
)
from standardwebhooks import Webhook

from tocsin.demo import (
    Scenario,
    SimulatedSite,
    SnmpAgent,
    Step,
    WebhookReceiver,
    demo_script,
    flap,
)
from tocsin.demo.run import DEMO_TOKEN, new_webhook_secret

DEADLINE = 50.0  # the compressed scenario shows everything within ~25 s of the start

WEBHOOK_LINE = re.compile(
    r"^\d\d:\d\d:\d\d  webhook  (?P<type>ticket\.\w+)\s+#(?P<seq>\d+)\s+"
    r"(?P<subject_type>device|integration) (?P<subject>\S+) \(.*\)  (?P<state>\w+)  "
    r"(?P<detail>.*?)  signature (?P<signature>OK|BAD)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Seen:
    """What the demo's output has shown so far."""

    lines: list[str] = field(default_factory=list)
    api: str | None = None
    mqtt: bool | None = None
    opened: dict[int, tuple[str, str]] = field(default_factory=dict)  # seq: (subject, kind)
    auto_resolved: set[int] = field(default_factory=set)
    reopened: set[int] = field(default_factory=set)
    bad_signatures: list[str] = field(default_factory=list)
    verified: int = 0

    def add(self, line: str) -> None:
        self.lines.append(line)
        if line.startswith("  API "):
            self.api = line.split()[-1]
        if line.startswith("  MQTT "):
            self.mqtt = line.split()[1] != "none"
        match = WEBHOOK_LINE.match(line)
        if match is None:
            assert "signature BAD" not in line, line
            return
        if match["signature"] == "BAD":
            self.bad_signatures.append(line)
            return
        self.verified += 1
        seq, kind = int(match["seq"]), match["type"]
        if kind == "ticket.opened":
            self.opened[seq] = (match["subject"], match["detail"])
        elif kind == "ticket.resolved" and match["detail"] == "by health monitor":
            self.auto_resolved.add(seq)
        elif kind == "ticket.reopened":
            self.reopened.add(seq)

    def seqs_of(self, subject: str, kind: str | None = None) -> set[int]:
        return {s for s, (subj, k) in self.opened.items() if subj == subject and kind in (None, k)}

    def missing(self) -> list[str]:
        """What has not been shown yet (empty: everything)."""
        wanted = {
            "the start-up lines": self.api is not None and self.mqtt is not None,
            "a device ticket opened": bool(self.seqs_of("chiller-2")),
            "a device ticket auto-resolved": bool(self.seqs_of("chiller-2") & self.auto_resolved),
            "a resolved ticket reopened, then auto-resolved again": any(
                seq in self.reopened
                and self.lines.index(self._line("ticket.reopened", seq))
                < self._last_index("ticket.resolved", seq)
                for seq in self.seqs_of("chiller-2")
            ),
            "the credentials ticket opened and auto-resolved": bool(
                self.seqs_of("bms-cloud", "integration_credentials_invalid") & self.auto_resolved
            ),
            "the SNMP device's ticket opened and auto-resolved": bool(
                self.seqs_of("core-switch") & self.auto_resolved
            ),
        }
        if self.mqtt:
            wanted["the MQTT device's Last Will ticket"] = bool(
                self.seqs_of("air-handler") & self.auto_resolved
            )
        return [what for what, done in wanted.items() if not done]

    def _line(self, kind: str, seq: int) -> str:
        return next(x for x in self.lines if (m := WEBHOOK_LINE.match(x)) and _is(m, kind, seq))

    def _last_index(self, kind: str, seq: int) -> int:
        found = [
            i
            for i, x in enumerate(self.lines)
            if (m := WEBHOOK_LINE.match(x)) and _is(m, kind, seq)
        ]
        return found[-1] if found else -1


def _is(match: re.Match[str], kind: str, seq: int) -> bool:
    return match["type"] == kind and int(match["seq"]) == seq


async def _api_tickets(url: str) -> list[dict[str, object]]:
    headers = {"Authorization": f"Bearer {DEMO_TOKEN}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        assert answer.status == 200, await answer.text()
        body = await answer.json()
    tickets: list[dict[str, object]] = body["tickets"]
    return tickets


async def test_demo_opens_resolves_and_reopens_tickets_and_prints_verified_webhooks(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"
    stderr = (tmp_path / "demo.stderr").open("wb")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tocsin", "demo", "--speed", "5", "--duration", "55"),
        *("--listen", "127.0.0.1:0", "--state-dir", str(state)),
        # Nothing listens there: the demo starts its own mosquitto, or runs without MQTT.
        *("--mqtt-port", str(free_port())),
        stdout=asyncio.subprocess.PIPE,
        stderr=stderr,
    )
    assert process.stdout is not None
    seen = Seen()
    started = time.monotonic()
    try:
        async with asyncio.timeout(DEADLINE):
            while seen.missing():
                raw = await process.stdout.readline()
                if not raw:
                    raise AssertionError("the demo exited early")
                seen.add(raw.decode().rstrip("\n"))
            assert seen.api is not None
            # While it runs, the API answers with the printed token, and the CLI hint works.
            assert await _api_tickets(seen.api)
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(15):
            rest = await process.stdout.read()
            code = await process.wait()
    except BaseException:
        if process.returncode is None:
            process.kill()
            await process.wait()
        stderr.close()
        print("\n".join(seen.lines))
        print("stderr:", (tmp_path / "demo.stderr").read_text(errors="replace")[-3000:])
        print("missing:", seen.missing(), f"after {time.monotonic() - started:.1f} s")
        raise
    stderr.close()
    for line in rest.decode().splitlines():
        seen.add(line)
    assert code == 0, (tmp_path / "demo.stderr").read_text()
    assert not seen.bad_signatures
    assert seen.verified >= 8
    assert any(line.startswith("tocsin demo stopped:") for line in seen.lines)

    # The state folder was kept: the CLI reads the demo's tickets from its config.
    listing = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tocsin", "tickets", "list", "--json"),
        *("--config", str(state / "tocsin-demo.toml")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await listing.communicate()
    assert listing.returncode == 0, err.decode()
    listed = json.loads(out)
    tickets = listed["tickets"] if isinstance(listed, dict) else listed
    assert {t["seq"] for t in tickets} >= set(seen.opened)


async def test_the_demo_stops_by_itself_after_its_duration(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tocsin", "demo", "--duration", "2", "--speed", "10"),
        *("--listen", "127.0.0.1:0", "--mqtt-port", str(free_port())),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    text = out.decode()
    assert "tocsin demo: a simulated site" in text
    assert "tocsin demo stopped:" in text


# -- the pieces -------------------------------------------------------------------------------


async def test_the_receiver_accepts_standard_webhooks_signatures_and_rejects_forgeries() -> None:
    secret = new_webhook_secret()
    lines: list[str] = []
    body = {
        "type": "ticket.opened",
        "timestamp": "2026-01-01T12:00:00.000Z",
        "data": {
            "org": "demo",
            "ticket": {
                "seq": 7,
                "state": "open",
                "kind": "device_offline",
                "subject": {"type": "device", "id": "chiller-2", "name": "Chiller 2"},
            },
            "event": {"type": "opened", "actor": {"type": "health_monitor", "name": "hm"}},
        },
    }
    payload = json.dumps(body)
    now = datetime.now(UTC)
    good = Webhook(secret).sign("msg_1", now, payload)
    forged = Webhook(new_webhook_secret()).sign("msg_2", now, payload)
    stale_at = datetime.fromtimestamp(now.timestamp() - 3600, UTC)
    stale = Webhook(secret).sign("msg_3", stale_at, payload)
    async with WebhookReceiver(secret, out=lines.append) as receiver, aiohttp.ClientSession() as s:
        statuses = []
        for msg_id, sig, at in (
            ("msg_1", good, now),
            ("msg_1", good, now),
            ("msg_2", forged, now),
            ("msg_3", stale, stale_at),
        ):
            headers = {
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(at.timestamp())),
                "webhook-signature": sig,
                "content-type": "application/json",
            }
            async with s.post(receiver.url, data=payload, headers=headers) as answer:
                statuses.append(answer.status)
    assert statuses == [204, 204, 401, 401]
    assert [d.verified for d in receiver.deliveries] == [True, True, False, False]
    assert receiver.deliveries[1].repeat
    assert "ticket.opened" in lines[0]
    assert "#7" in lines[0]
    assert "device chiller-2 (Chiller 2)" in lines[0]
    assert "signature OK" in lines[0]
    assert "(a repeat)" in lines[1]
    assert "signature BAD: signature mismatch" in lines[2]
    assert "signature BAD: timestamp" in lines[3]


async def _snmp_answers(engine: object, port: int) -> bool:
    target = await UdpTransportTarget.create(("127.0.0.1", port), timeout=0.5, retries=0)
    error, status, _, binds = await get_cmd(
        engine,
        CommunityData("public", mpModel=1),
        target,
        ContextData(),
        ObjectType(ObjectIdentity("1.3.6.1.2.1.1.3.0")),
    )
    return error is None and not status and len(binds) == 1


async def test_the_scenario_drives_the_site_and_the_snmp_agent() -> None:
    site = SimulatedSite(8)
    agent = SnmpAgent()
    printed: list[str] = []
    script = [
        Step(0.0, "http:chiller-2", "error"),
        Step(0.1, "snmp", "stop"),
        Step(0.2, "cloud", "revoke"),
        Step(0.2, "mqtt:air-handler", "kill"),  # no MQTT here: skipped
        *flap("http:sensor-008", 0.3, 0.6, 0.1, say="", end_say=""),
    ]
    engine = SnmpEngine()
    async with site, agent, aiohttp.ClientSession() as session:
        assert await _snmp_answers(engine, agent.port)
        stop = asyncio.Event()
        scenario = Scenario(script, site=site, snmp=agent, speed=2.0, out=printed.append)
        async with asyncio.timeout(10):
            task = asyncio.create_task(scenario.run(stop))
            await scenario.played.wait()
            stop.set()
            await task
        assert len(scenario.applied) == len(script) - 1  # no MQTT here
        assert len(printed) == 3  # the flap's steps are silent
        assert site.modes["chiller-2"] == "error"
        assert site.modes["sensor-008"] == "ok"
        async with session.get(site.device_url("chiller-2")) as answer:
            assert answer.status == 503
        async with session.get(site.device_url("lobby-panel")) as answer:
            assert answer.status == 200
        headers = {"Authorization": f"Bearer {site.cloud_token}"}
        async with session.get(site.cloud_url, headers=headers) as answer:
            assert answer.status == 401
        site.restore_token()
        async with session.get(site.cloud_url, headers=headers) as answer:
            assert answer.status == 200
        assert not agent.running
        assert not await _snmp_answers(engine, agent.port)
        await agent.start()  # the same port again
        assert await _snmp_answers(engine, agent.port)
    engine.close_dispatcher()


def test_the_demo_script_restores_everything_before_it_repeats() -> None:
    last: dict[str, str] = {}
    for step in sorted(demo_script(), key=lambda s: s.at):
        last[step.target] = step.action
    assert all(action in ("ok", "restore", "start", "revive") for action in last.values()), last
