"""The SNMP engine's UDP socket is read dry on each wake-up: answers that queued while the loop
was busy are all handed to pysnmp in the next turn, not one per loop turn (asyncio's own
datagram transport), which let the kernel's buffer overflow at 10,000 SNMP subjects."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from pysnmp.carrier.asyncio.dgram.udp import UdpAsyncioTransport  # type: ignore[import-untyped]

from tocsin.probes.snmp import _DrainingUdp

QUEUED = 100


async def turns_to_read(transport_class: type[Any]) -> list[int]:
    """Queue QUEUED datagrams while the loop is blocked; how many arrived after each turn."""
    loop = asyncio.get_running_loop()
    got: list[bytes] = []
    protocol = transport_class()
    protocol.register_callback(lambda _t, _address, datagram: got.append(datagram))
    transport, _ = await loop.create_datagram_endpoint(
        lambda: protocol, local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    try:
        address = transport.get_extra_info("sockname")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for n in range(QUEUED):  # the loop does not run meanwhile: all of them queue
                sender.sendto(f"answer {n}".encode(), address)
        counts = []
        for _ in range(5):
            await asyncio.sleep(0)
            counts.append(len(got))
        assert got[: len(set(got))] == [f"answer {n}".encode() for n in range(len(set(got)))]
        return counts
    finally:
        transport.close()


async def test_every_queued_answer_is_read_in_one_wake_up() -> None:
    counts = await turns_to_read(_DrainingUdp)
    assert counts[-1] == QUEUED
    assert counts[2] == QUEUED  # readable, read, handed on: within three turns


async def test_asyncio_alone_reads_one_per_turn() -> None:
    # The baseline the draining transport exists for: still far from done after five turns.
    counts = await turns_to_read(UdpAsyncioTransport)
    assert counts[-1] < 10
