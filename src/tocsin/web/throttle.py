"""Failed sign-ins are slowed: attempts from one address take turns."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator, Sequence

from aiohttp import web


class LoginQueues:
    """Per client address, a lock held while a sign-in (and a failure's wait) runs, so guesses
    from one address wait their turn; an address's entry goes once nobody there waits. Behind
    a reverse proxy, name it in [web] trusted_proxies (see `client_address`), else every
    client has the proxy's address, and so one queue."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[None]:
        lock, waiting = self._entries.setdefault(client, (asyncio.Lock(), [0]))
        waiting[0] += 1
        try:
            async with lock:
                yield
        finally:
            waiting[0] -= 1
            if not waiting[0]:
                del self._entries[client]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.BaseRequest, trusted: Sequence[Network]) -> str:
    """Who is signing in: the peer, or, when the peer is a trusted reverse proxy, the nearest
    X-Forwarded-For hop that is not one (a client cannot push itself to the front: hops are
    read from the proxy's end, and whatever a client wrote stands behind what proxies added)."""
    peer = request.remote or "unknown"
    if not trusted or not _within(peer, trusted):
        return peer
    hops = [
        hop.strip()
        for header in request.headers.getall("X-Forwarded-For", [])
        for hop in header.split(",")
    ]
    for hop in reversed(hops):
        if not _within(hop, trusted):
            return hop if _address(hop) is not None else peer
    return peer


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _within(text: str, networks: Sequence[Network]) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)
