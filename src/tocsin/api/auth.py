"""Bearer tokens: each names one org and one scope; compared by SHA-256 digest in constant time.

Scopes: `read` reads; `write` (people and their tools) reads and does everything; `workflow`
reads, opens workflow tickets, comments and resolves, as the product's workflow actions do.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from aiohttp import web

from tocsin.api.errors import ApiError
from tocsin.config import ApiToken, Scope
from tocsin.tickets.model import Actor, ActorType

GRANTS: dict[Scope, frozenset[str]] = {
    "read": frozenset({"read"}),
    "write": frozenset({"read", "write"}),
    "workflow": frozenset({"read", "workflow"}),
}


class TokenBook:
    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = tuple(tokens)

    def identify(self, presented: str) -> ApiToken | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found: ApiToken | None = None
        for token in self._tokens:  # no early exit: the time spent does not depend on a match
            if hmac.compare_digest(digest, token.sha256):
                found = token
        return found


def authenticate(request: web.Request, book: TokenBook) -> ApiToken:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    challenge = {"WWW-Authenticate": 'Bearer realm="tocsin"'}
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN", headers=challenge)
    token = book.identify(presented.strip())
    if token is None:
        raise ApiError(401, "unauthorized", "the token is not valid", headers=challenge)
    return token


def require(token: ApiToken, org: str, needs: frozenset[str]) -> None:
    """The token must belong to `org` (else the org does not exist for it) and hold a scope."""
    if token.org != org:
        raise ApiError(404, "org_not_found", f"no org {org!r}", "org")
    if not GRANTS[token.scope] & needs:
        wanted = " or ".join(sorted(needs))
        raise ApiError(
            403, "forbidden", f"this needs a {wanted} token; {token.name!r} is {token.scope}"
        )


def actor_for(token: ApiToken, name: str | None = None) -> Actor:
    kind = ActorType.WORKFLOW if token.scope == "workflow" else ActorType.USER
    return Actor(kind, name or token.name)
