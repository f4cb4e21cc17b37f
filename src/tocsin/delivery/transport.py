"""One webhook attempt over HTTP: POST the body, follow no redirect, give up at the timeout.

Any 2xx is success. Everything else raises DeliveryError, which says whether trying again can
help (`permanent`) and how long the receiver asked us to wait (`retry_after`, from Retry-After
on 429 and 503). aiohttp's exceptions end here. Messages name what went wrong, never the URL:
chat webhook URLs are secrets themselves.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp

from tocsin import __version__
from tocsin.delivery.schedule import parse_retry_after
from tocsin.tickets.store import Clock, utcnow

USER_AGENT = f"tocsin/{__version__} (webhooks)"
# Read at most this much of an answer: enough to keep the connection reusable, no more.
MAX_ANSWER_BYTES = 64 * 1024
RETRY_AFTER_STATUSES = frozenset({429, 503})


class DeliveryError(Exception):
    """An attempt failed. `permanent`: retrying cannot help (410 Gone). `status`: the HTTP
    status when there was an answer. `retry_after`: the receiver's requested wait."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        status: int | None = None,
        retry_after: timedelta | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.status = status
        self.retry_after = retry_after


@dataclass(frozen=True)
class Answer:
    status: int
    latency: float  # seconds


class Transport:
    """A shared aiohttp session (connection reuse across attempts), opened on first use."""

    def __init__(self, *, limit: int = 100, clock: Clock = utcnow) -> None:
        self._limit = limit
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], time_limit: float
    ) -> Answer:
        """Send one attempt; return the 2xx answer or raise DeliveryError."""
        session = self._open()
        started = time.perf_counter()
        try:
            async with session.post(
                url,
                data=body,
                headers=dict(headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=time_limit),
            ) as response:
                await response.content.read(MAX_ANSWER_BYTES)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            raise DeliveryError(f"no answer within {time_limit:g}s") from None
        except aiohttp.ClientConnectorCertificateError:
            raise DeliveryError("cannot connect: the TLS certificate did not verify") from None
        except aiohttp.ClientConnectorError as exc:
            raise DeliveryError(f"cannot connect: {_reason(exc.os_error)}") from None
        except aiohttp.ServerDisconnectedError:
            raise DeliveryError("the receiver closed the connection without answering") from None
        except aiohttp.InvalidURL:
            raise DeliveryError("the URL is not valid", permanent=True) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(f"HTTP failure: {type(exc).__name__}") from None
        latency = time.perf_counter() - started
        if 200 <= status < 300:
            return Answer(status, latency)
        raise error_for_status(status, retry_after, self._clock())

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._limit, limit_per_host=0),
                headers={"User-Agent": USER_AGENT},
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session


def error_for_status(status: int, retry_after: str | None, now: datetime) -> DeliveryError:
    """What a non-2xx answer means for the delivery."""
    if status == 410:
        return DeliveryError(
            "410 Gone: the receiver retired this endpoint", permanent=True, status=410
        )
    if 300 <= status < 400:
        return DeliveryError(f"HTTP {status}: redirects are not followed", status=status)
    wait = parse_retry_after(retry_after, now) if status in RETRY_AFTER_STATUSES else None
    return DeliveryError(f"HTTP {status}", status=status, retry_after=wait)


def _reason(error: OSError) -> str:
    """Why a connection failed, without the address (str(error) names host and port)."""
    if isinstance(error, socket.gaierror):
        return "the host name does not resolve"
    if error.errno:
        return os.strerror(error.errno)
    return type(error).__name__
