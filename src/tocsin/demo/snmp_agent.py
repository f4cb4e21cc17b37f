"""A small SNMP agent in-process: pysnmp's command responder on a loopback UDP port.

It answers v2c GET/GETNEXT for the community `public` (read-only, the MIB-2 subtree), so
sysUpTime.0 and the rest of the system group come from pysnmp's own SNMPv2-MIB instances.
`stop()` closes its socket (requests then go unanswered, as with a powered-off switch) and
`start()` brings it back on the same port with a fresh engine, so its sysUpTime starts over,
which the SNMP probe notes as a reboot.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from pysnmp.carrier.asyncio.dgram import udp  # type: ignore[import-untyped]
from pysnmp.entity import config, engine  # type: ignore[import-untyped]
from pysnmp.entity.rfc3413 import cmdrsp, context  # type: ignore[import-untyped]

SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
_MIB2 = (1, 3, 6, 1, 2, 1)
_V2C = 2  # the security model of SNMPv2c in VACM


class SnmpAgent:
    """One agent; `port=0` picks a free UDP port on the first `start()` and keeps it."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, community: str = "public"):
        self.host = host
        self.port = port
        self.community = community
        self._engine: object | None = None

    @property
    def running(self) -> bool:
        return self._engine is not None

    async def start(self) -> None:
        """Answer requests from now on (a no-op when already running)."""
        if self._engine is not None:
            return
        sock = await self._bind()
        self.port = int(sock.getsockname()[1])
        snmp_engine = engine.SnmpEngine()
        try:
            transport = udp.UdpTransport().open_server_mode(sock=sock)
            config.add_transport(snmp_engine, udp.DOMAIN_NAME, transport)
            config.add_v1_system(snmp_engine, "demo-area", self.community)
            config.add_vacm_user(snmp_engine, _V2C, "demo-area", "noAuthNoPriv", _MIB2)
            snmp_context = context.SnmpContext(snmp_engine)
            cmdrsp.GetCommandResponder(snmp_engine, snmp_context)
            cmdrsp.NextCommandResponder(snmp_engine, snmp_context)
            cmdrsp.BulkCommandResponder(snmp_engine, snmp_context)
            snmp_engine.open_dispatcher()
        except BaseException:
            sock.close()
            raise
        self._engine = snmp_engine

    async def stop(self) -> None:
        """Stop answering; the port is free until the next `start()`."""
        snmp_engine, self._engine = self._engine, None
        if snmp_engine is not None:
            snmp_engine.close_dispatcher()  # type: ignore[attr-defined]
            await asyncio.sleep(0)  # the UDP transport closes on the loop's next turn

    async def _bind(self) -> socket.socket:
        """A UDP socket on host:port; a port just given up may take a moment to be free."""
        for attempt in range(40):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind((self.host, self.port))
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE or self.port == 0 or attempt == 39:
                    raise
                await asyncio.sleep(0.05)
                continue
            return sock
        raise AssertionError("unreachable")

    async def __aenter__(self) -> SnmpAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
