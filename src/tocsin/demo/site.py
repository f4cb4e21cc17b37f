"""The simulated site's HTTP side: devices answering a health URL, and a cloud API whose token
can be revoked.

One aiohttp server on loopback (port 0: any free port) serves

- ``GET /devices/{id}/health`` for each device: ``200 {"status": "ok"}`` while healthy; a device
  switched to a failing mode answers ``503`` (``error``), ``200 {"status": "degraded"}``
  (``degraded``: a body expectation fails) or nothing at all until the client gives up
  (``hang``);
- ``GET /cloud/api/v1/me`` with ``Authorization: Bearer <token>``: ``200`` while the token is
  valid, ``401`` once it is revoked (until it is restored);
- ``GET /`` with every device's mode and the token's state, for a curious human.

The scenario (or a benchmark) drives it with `set_mode`, `revoke_token` and `restore_token`. A
harness can serve routes of its own beside these (`extra_routes`, e.g. control endpoints when
the site runs in another process) and have every health answer close its connection
(`close_connections`), so that each check opens a new TCP connection as it would to a separate
host rather than reusing a keep-alive connection to the one loopback server.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web

Mode = Literal["ok", "error", "hang", "degraded"]
MODES: tuple[Mode, ...] = get_args(Mode)
DEVICE_PATH = "/devices/{id}/health"  # DEVICE_PATH.format(id=...) is a device's path
CLOUD_PATH = "/cloud/api/v1/me"


@dataclass(frozen=True)
class SimDevice:
    """An HTTP device of the simulated site: its id (the URL's and the subject's) and name."""

    id: str
    name: str
    space: str | None = None


# The demo's devices; `make_devices(n)` adds plain sensors past these.
NAMED_DEVICES: tuple[SimDevice, ...] = (
    SimDevice("lobby-panel", "Lobby fire panel", "lobby"),
    SimDevice("chiller-2", "Chiller 2", "plant room"),
    SimDevice("door-controller", "Door controller, east wing", "east wing"),
    SimDevice("boiler-meter", "Boiler room energy meter", "boiler room"),
    SimDevice("elevator-1", "Elevator 1 controller", "core"),
    SimDevice("parking-gate", "Parking gate", "car park"),
)


def make_devices(count: int) -> list[SimDevice]:
    """`count` devices: the named demo devices first, then `sensor-007`, `sensor-008`, ..."""
    if count < 0:
        raise ValueError("the number of devices cannot be negative")
    devices = list(NAMED_DEVICES[:count])
    for n in range(len(devices) + 1, count + 1):
        devices.append(SimDevice(f"sensor-{n:03d}", f"Sensor {n}"))
    return devices


class SimulatedSite:
    """HTTP devices and a cloud API on one loopback server; `start()` binds it.

    `devices` is a number (see `make_devices`) or the devices themselves. Every device starts
    healthy and the cloud token valid.

    `extra_routes` (aiohttp route definitions such as ``web.post(path, handler)``) are served
    beside the site's own. `close_connections` answers every device health check with
    ``Connection: close``; it is an attribute that may also be switched while the site runs.
    """

    def __init__(
        self,
        devices: int | Sequence[SimDevice] = len(NAMED_DEVICES),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cloud_token: str | None = None,
        hang_seconds: float = 30.0,
        extra_routes: Iterable[web.AbstractRouteDef] = (),
        close_connections: bool = False,
    ) -> None:
        listed = make_devices(devices) if isinstance(devices, int) else list(devices)
        self.devices: dict[str, SimDevice] = {d.id: d for d in listed}
        if len(self.devices) != len(listed):
            raise ValueError("device ids must be unique")
        self.modes: dict[str, Mode] = dict.fromkeys(self.devices, "ok")
        self.cloud_token = cloud_token or f"demo-cloud-{secrets.token_urlsafe(18)}"
        self.token_valid = True
        self.requests: Counter[str] = Counter()  # answers given, by device id and "cloud"
        self.close_connections = close_connections
        self._extra_routes = tuple(extra_routes)
        self._host = host
        self._port = port
        self._hang_seconds = hang_seconds
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- control --------------------------------------------------------------------------

    def set_mode(self, device_id: str, mode: Mode) -> None:
        if device_id not in self.devices:
            raise KeyError(f"no simulated device {device_id!r}")
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        self.modes[device_id] = mode

    def fail(self, device_ids: Sequence[str], mode: Mode = "error") -> None:
        for device_id in device_ids:
            self.set_mode(device_id, mode)

    def recover(self, device_ids: Sequence[str]) -> None:
        self.fail(device_ids, "ok")

    def revoke_token(self) -> None:
        self.token_valid = False

    def restore_token(self) -> None:
        self.token_valid = True

    # -- addresses ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("the site is not started")
        host, port = self._runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def device_url(self, device_id: str) -> str:
        return self.base_url + DEVICE_PATH.format(id=device_id)

    @property
    def cloud_url(self) -> str:
        return self.base_url + CLOUD_PATH

    # -- the server -----------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get(DEVICE_PATH, self._health)
        app.router.add_get(CLOUD_PATH, self._cloud)
        app.router.add_get("/", self._overview)
        app.add_routes(self._extra_routes)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def close(self) -> None:
        self._closing.set()  # hung answers return at once
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimulatedSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _health(self, request: web.Request) -> web.Response:
        response = await self._health_answer(request.match_info["id"])
        if self.close_connections:
            response.force_close()
        return response

    async def _health_answer(self, device_id: str) -> web.Response:
        mode = self.modes.get(device_id)
        if mode is None:
            return web.Response(status=404, text=f"no device {device_id}\n")
        self.requests[device_id] += 1
        if mode == "hang":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self._hang_seconds)
            return web.json_response({"status": "late"}, status=504)
        if mode == "error":
            return web.json_response({"status": "failing", "error": "pump fault"}, status=503)
        if mode == "degraded":
            return web.json_response({"status": "degraded", "detail": "sensor drift"})
        return web.json_response({"status": "ok"})

    async def _cloud(self, request: web.Request) -> web.Response:
        self.requests["cloud"] += 1
        expected = f"Bearer {self.cloud_token}"
        given = request.headers.get("Authorization", "")
        if self.token_valid and secrets.compare_digest(given.encode(), expected.encode()):
            return web.json_response({"account": "tocsin-demo", "scopes": ["read:alarms"]})
        return web.json_response(
            {"error": "invalid_token", "error_description": "the access token was revoked"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )

    async def _overview(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "devices": {
                    d.id: {"name": d.name, "mode": self.modes[d.id]} for d in self.devices.values()
                },
                "cloud_token": "valid" if self.token_valid else "revoked",
            }
        )
