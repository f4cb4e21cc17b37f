"""TLS facts for HTTP probes: per-probe SSL contexts and the peer certificate's notAfter.

The session's `PeerCertResponse` keeps the DER bytes of the certificate each answer came
with; notAfter is read from them, so it is known even when verification is off (a self-signed
device certificate still expires). Only the few fields needed to reach `validity` are walked;
anything unexpected yields None, never an exception.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from pathlib import Path

import aiohttp


def ssl_context(
    *, verify: bool, ca_file: str | None, base_dir: Path | None
) -> ssl.SSLContext | bool:
    """What to pass as aiohttp's `ssl=`: True (the session's default verification) unless a
    CA file is given or verification is off. Raises ValueError naming the CA file when it cannot
    be loaded, so the config layer can report it with its key path."""
    if verify and ca_file is None:
        return True
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    assert ca_file is not None
    path = Path(ca_file)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        context.load_verify_locations(cafile=str(path))
    except OSError as exc:
        raise ValueError(
            f"ca_file: cannot read {path} ({exc.strerror or type(exc).__name__})"
        ) from None
    except ssl.SSLError:
        raise ValueError(f"ca_file: {path} holds no PEM certificate") from None
    return context


class PeerCertResponse(aiohttp.ClientResponse):
    """A response that remembers the peer certificate of its connection (DER bytes).

    Given to the shared session as `response_class`: the connection is handed back to the pool
    as soon as a small body has arrived, so the certificate must be taken when the response
    starts, while the response still holds its connection.
    """

    peer_der: bytes | None = None

    async def start(self, connection: aiohttp.connector.Connection) -> aiohttp.ClientResponse:
        if self.url.scheme != "https":  # no certificate to take: the common case on a site
            return await super().start(connection)
        transport = connection.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
            self.peer_der = ssl_object.getpeercert(binary_form=True)
        return await super().start(connection)


def peer_not_after(response: aiohttp.ClientResponse) -> datetime | None:
    """The notAfter of the certificate the server presented, or None (plain HTTP, unknown,
    or a session made without PeerCertResponse)."""
    der = getattr(response, "peer_der", None)
    return certificate_not_after(der) if der else None


def certificate_not_after(der: bytes) -> datetime | None:
    """notAfter of an X.509 certificate in DER (RFC 5280 4.1), or None if it cannot be read."""
    try:
        _, pos, _ = _tlv(der, 0)  # Certificate ::= SEQUENCE
        _, pos, _ = _tlv(der, pos)  # tbsCertificate ::= SEQUENCE
        tag, _, end = _tlv(der, pos)
        if tag == 0xA0:  # [0] EXPLICIT version, absent in v1 certificates
            pos = end
        for _field in ("serialNumber", "signature", "issuer"):
            _, _, pos = _tlv(der, pos)
        tag, pos, _ = _tlv(der, pos)  # validity ::= SEQUENCE { notBefore, notAfter }
        if tag != 0x30:
            return None
        _, _, pos = _tlv(der, pos)
        tag, start, end = _tlv(der, pos)
        return _time(tag, der[start:end].decode("ascii"))
    except (IndexError, ValueError):
        return None


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 0 < size <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > len(der):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _time(tag: int, text: str) -> datetime | None:
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ; years 50-99 are 19xx (RFC 5280 4.1.2.5.1)
        parsed = datetime.strptime(text, "%y%m%d%H%M%SZ")
        if parsed.year >= 2050:
            parsed = parsed.replace(year=parsed.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        parsed = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        return None
    return parsed.replace(tzinfo=UTC)
