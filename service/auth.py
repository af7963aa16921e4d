"""Bearer-token authentication: the configured tokens, and the check every API request passes once.

A token is known by its SHA-256 digest only, and names a store scope (an HMAC under the store key) that keeps
one client's stored images from another's; :mod:`service.admission` counts a request's shares by that scope.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Request

from .config import Settings
from .problems import Problem


class Tokens:
    """The configured bearer tokens as SHA-256 digests, and the store scope of each.

    A presented token is hashed and compared with every digest (``compare_digest``, no early exit), so the
    time taken depends neither on which token nearly matched nor on their lengths.
    """

    def __init__(self, tokens: list[str], store_key: bytes) -> None:
        self._digests = [hashlib.sha256(t.encode()).digest() for t in tokens]
        self._scopes = [hmac.new(store_key, b"scope\0" + t.encode(), hashlib.sha256).hexdigest()[:24] for t in tokens]

    def match(self, presented: str) -> str | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for d, scope in zip(self._digests, self._scopes, strict=True):
            if hmac.compare_digest(digest, d):
                found = scope
        return found


def bearer_scope(authorization: str, tokens: Tokens) -> str | None:
    """The store scope of the configured token an ``Authorization`` header value presents, or None."""
    scheme, _, token = authorization.partition(" ")
    return tokens.match(token.strip()) if scheme.lower() == "bearer" else None


def check_token(request: Request, settings: Settings) -> str:
    """401 unless the request carries a configured bearer token; the token's store scope ("" when auth is off).
    Checked once per request (the upload gate before a body, then the routes and the store read it back)."""
    if not settings.auth_enabled:
        return ""
    if checked := getattr(request.state, "client_scope", None):
        return str(checked)
    scope = bearer_scope(request.headers.get("authorization", ""), request.app.state.tokens)
    if scope is None:
        detail = "a valid bearer token is required: send 'Authorization: Bearer <token>'"
        challenge = {"WWW-Authenticate": 'Bearer realm="kind"'}
        raise Problem(401, "Unauthorized", detail, kind="unauthorized", headers=challenge)
    request.state.client_scope = scope
    return scope
