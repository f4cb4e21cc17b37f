"""Who is signing in, behind a reverse proxy or not: the address sign-in attempts take turns by."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from tests.pages.conftest import serving, site_config, token_value
from tocsin.config import parse
from tocsin.tickets.store import TicketStore
from tocsin.web.throttle import client_address

PROXIES = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("127.0.0.1")]


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "client"),
    [
        pytest.param("203.0.113.5", [], PROXIES, "203.0.113.5", id="no-proxy"),
        pytest.param("10.1.1.1", ["198.51.100.7"], PROXIES, "198.51.100.7", id="one-proxy"),
        pytest.param(
            "10.1.1.1", ["198.51.100.7, 10.2.2.2"], PROXIES, "198.51.100.7", id="two-proxies"
        ),
        pytest.param(
            "10.1.1.1", ["1.2.3.4, 198.51.100.7"], PROXIES, "198.51.100.7", id="client-forged"
        ),
        pytest.param("10.1.1.1", ["junk"], PROXIES, "10.1.1.1", id="junk-hop"),
        pytest.param("10.1.1.1", [], PROXIES, "10.1.1.1", id="proxy-without-header"),
        pytest.param("203.0.113.5", ["1.2.3.4"], PROXIES, "203.0.113.5", id="untrusted-peer"),
        pytest.param("10.1.1.1", ["198.51.100.7"], [], "10.1.1.1", id="none-trusted"),
    ],
)
def test_the_client_is_the_nearest_hop_that_is_not_a_trusted_proxy(
    peer: str, forwarded: list[str], trusted: list[ipaddress.IPv4Network], client: str
) -> None:
    headers = CIMultiDict(("X-Forwarded-For", value) for value in forwarded)
    request = make_mocked_request("POST", "/login", headers=headers)
    request = request.clone(remote=peer)
    assert client_address(request, trusted) == client


async def test_behind_a_trusted_proxy_one_guesser_does_not_hold_back_another_client(
    db_url: str, store: TicketStore
) -> None:
    text = site_config(db_url).replace(
        'login_delay = "0s"', 'login_delay = "1s"\ntrusted_proxies = ["127.0.0.1"]'
    )
    async with serving(parse(text), store) as site:
        browser = await site.browser()  # one connection pool; the proxy says who is who
        await browser.get("/login")

        async def post(token: str, address: str) -> float:
            started = time.monotonic()
            async with browser.session.post(
                site.base + "/login",
                data={"csrf": browser.csrf, "token": token},
                headers={"X-Forwarded-For": address},
                allow_redirects=False,
            ) as response:
                await response.read()
            return time.monotonic() - started

        wrong = [post("wrong", "198.51.100.7") for _ in range(3)]
        guesses = asyncio.gather(*wrong)
        await asyncio.sleep(0.2)  # the guesses are queued
        right = await post(token_value("ops"), "203.0.113.9")
        assert right < 1.0  # not behind the guesser's three seconds
        assert max(await guesses) >= 3.0  # the guesser's own attempts took turns
