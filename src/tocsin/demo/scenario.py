"""The timeline: a script of steps that break and mend parts of the simulated site.

A `Step` happens `at` scenario seconds after the start; `speed` divides every time (speed 5: a
step at 100 s happens after 20 real seconds). Targets:

=====================  ==========================================================
``http:<device id>``   ``ok``, ``error`` (HTTP 503), ``hang``, ``degraded`` (bad JSON)
``cloud``              ``revoke``, ``restore`` (the integration's bearer token)
``snmp``               ``stop``, ``start`` (the agent; a restart resets sysUpTime)
``mqtt:<device id>``   ``kill`` (connection dropped: Last Will), ``revive``
=====================  ==========================================================

Steps whose part of the site is absent (no MQTT broker) are skipped. With a `period` the script
repeats forever, so the demo keeps showing opens, resolves and reopens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from tocsin.demo.mqtt import MqttSite
from tocsin.demo.site import MODES, Mode, SimulatedSite
from tocsin.demo.snmp_agent import SnmpAgent

CLOUD_NAME = "BMS cloud API"
SNMP_NAME = "Core switch"
DEMO_PERIOD = 180.0


@dataclass(frozen=True)
class Step:
    at: float
    """Scenario seconds after the start."""
    target: str
    action: str
    say: str | None = None
    """The line printed when it happens; None: a default one; "": silent."""


def flap(
    target: str,
    start: float,
    stop: float,
    every: float,
    *,
    say: str | None = None,
    end_say: str | None = None,
) -> list[Step]:
    """Up for `every` seconds, down for `every`, ... from `start` until `stop`, where it ends
    up for good. Only the first and the last step print (`say`, `end_say`)."""
    steps: list[Step] = []
    at, up = start, True
    while at < stop:
        steps.append(Step(at, target, "ok" if up else "error", "" if steps else say))
        at += every
        up = not up
    steps.append(Step(stop, target, "ok", end_say))
    return steps


def demo_script() -> list[Step]:
    """The demo's first three minutes (it repeats with DEMO_PERIOD). With the demo's windows
    (debounce 10 s, recovery 10 s, reopen window 2 m, probes every 2 s):

    - the cloud token is revoked at 10 s and restored at 40 s: a credentials ticket opens
      (~21 s) and auto-resolves (~51 s);
    - chiller-2 fails at 15 s, recovers at 45 s (resolved ~56 s), fails again at 80 s, inside
      the reopen window, so the same ticket reopens (~91 s), and resolves again (~111 s);
    - the door controller is down from 20 s (ticket ~31 s), then flaps until 75 s: one note,
      no resolve/reopen churn; resolved once it has been quiet for the flap window;
    - the core switch (SNMP) is off from 30 s to 60 s: ticket, then resolved, reboot noted;
    - the air handler (MQTT) dies at 40 s (Last Will) and comes back at 70 s;
    - the boiler meter reports "degraded" at 50 s, then hangs at 65 s (a comment: the nature
      of the failure changed), and is fine from 85 s.
    """
    return [
        Step(10, "cloud", "revoke"),
        Step(15, "http:chiller-2", "error"),
        Step(20, "http:door-controller", "error"),
        Step(30, "snmp", "stop"),
        *flap(
            "http:door-controller",
            35,
            75,
            3,
            say="Door controller, east wing starts flapping: up, down, up, down, ...",
            end_say="Door controller, east wing is stable again",
        ),
        Step(40, "cloud", "restore"),
        Step(40, "mqtt:air-handler", "kill"),
        Step(45, "http:chiller-2", "ok"),
        Step(50, "http:boiler-meter", "degraded"),
        Step(60, "snmp", "start"),
        Step(65, "http:boiler-meter", "hang"),
        Step(70, "mqtt:air-handler", "revive"),
        Step(80, "http:chiller-2", "error", "Chiller 2 fails again, inside the reopen window"),
        Step(85, "http:boiler-meter", "ok"),
        Step(100, "http:chiller-2", "ok"),
    ]


class Scenario:
    """Plays a script against the site's parts until stopped."""

    def __init__(
        self,
        script: Sequence[Step],
        *,
        site: SimulatedSite | None = None,
        snmp: SnmpAgent | None = None,
        mqtt: MqttSite | None = None,
        speed: float = 1.0,
        period: float | None = None,
        out: Callable[[str], None] | None = print,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.steps = sorted(script, key=lambda s: s.at)
        if period is not None and self.steps and period <= self.steps[-1].at:
            raise ValueError("the period must be longer than the script")
        for step in self.steps:
            self._check(step)
        self.site = site
        self.snmp = snmp
        self.mqtt = mqtt
        self.speed = speed
        self.period = period
        self.applied: list[Step] = []
        self.played = asyncio.Event()
        """Set once a script without a period has played to its end."""
        self._out = out
        self._monotonic = monotonic

    @staticmethod
    def _check(step: Step) -> None:
        kind, _, name = step.target.partition(":")
        actions: dict[str, set[str]] = {
            "http": set(MODES),
            "cloud": {"revoke", "restore"},
            "snmp": {"stop", "start"},
            "mqtt": {"kill", "revive"},
        }
        allowed = actions.get(kind)
        named = kind in ("http", "mqtt")
        if allowed is None or step.action not in allowed or bool(name) != named:
            raise ValueError(f"not a scenario step: {step.target} {step.action}")

    async def run(self, stop: asyncio.Event) -> None:
        """Play the script (repeating with `period`) until `stop` is set."""
        start = self._monotonic()
        cycle = 0
        while True:
            offset = cycle * (self.period or 0.0)
            for step in self.steps:
                delay = start + (offset + step.at) / self.speed - self._monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    return
                await self.apply(step)
            if self.period is None:
                self.played.set()
                await stop.wait()
                return
            cycle += 1

    async def apply(self, step: Step) -> None:
        """Do one step now (and print its line); a step for an absent part does nothing."""
        kind, _, name = step.target.partition(":")
        text: str | None
        if kind == "http" and self.site is not None and name in self.site.devices:
            self.site.set_mode(name, cast(Mode, step.action))
            text = _http_text(self.site.devices[name].name, step.action)
        elif kind == "cloud" and self.site is not None:
            if step.action == "revoke":
                self.site.revoke_token()
                text = f"{CLOUD_NAME}: the provider revokes tocsin's token (401 from now on)"
            else:
                self.site.restore_token()
                text = f"{CLOUD_NAME}: a new token is in place (the old one works again)"
        elif kind == "snmp" and self.snmp is not None:
            if step.action == "stop":
                await self.snmp.stop()
                text = f"{SNMP_NAME} (SNMP) powers off: no more answers"
            else:
                await self.snmp.start()
                text = f"{SNMP_NAME} (SNMP) is back; it rebooted, so its sysUpTime starts over"
        elif kind == "mqtt" and self.mqtt is not None and name in self.mqtt.devices:
            device = self.mqtt.devices[name].name
            if step.action == "kill":
                self.mqtt.kill(name)
                text = f"{device} (MQTT) loses power: the broker publishes its Last Will"
            else:
                await self.mqtt.revive(name)
                text = f"{device} (MQTT) reconnects and says online"
        else:
            return
        self.applied.append(step)
        line = text if step.say is None else step.say
        if line and self._out is not None:
            self._out(f"{datetime.now().astimezone():%H:%M:%S}  site     {line}")


def _http_text(name: str, action: str) -> str:
    return {
        "ok": f"{name} is healthy again",
        "error": f"{name} starts failing (HTTP 503)",
        "hang": f"{name} stops answering (requests hang)",
        "degraded": f'{name} reports "degraded" (its health JSON is not ok)',
    }[action]
