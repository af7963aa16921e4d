"""The HTTP/1.1 parser uvicorn runs for the service, with a bound on the request line and headers.

uvicorn's default parser (httptools) accepts a request line and headers of any size and count: a 2 MB
header line or 20,000 fields are read into memory and reach the app. h11 bounds the bytes buffered before
a request's head is complete (``h11_max_incomplete_event_size``); over it, this protocol answers
``431`` problem+json instead of uvicorn's plain-text ``400``. The count of fields, and the size of heads
that fit the parser's bound but not ``max_header_bytes``, are checked by :class:`service.middleware.UploadGate`.
"""

from __future__ import annotations

import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .config import Settings
from .errors import PROBLEM_JSON, TYPE_BASE


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol answering malformed requests with problem+json (431 for oversized heads)."""

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        limit = self.config.h11_max_incomplete_event_size or 0
        if limit and len(buffered) > limit:
            status, title, kind = 431, "Request Header Fields Too Large", "headers-too-large"
            detail = f"the request line and headers exceed {limit} bytes"
        else:
            status, title, kind = 400, "Bad Request", "bad-http-request"
            detail = "the request is not valid HTTP/1.1"
        body = json.dumps({"type": TYPE_BASE + kind, "title": title, "status": status, "detail": detail}).encode()
        headers = [
            (b"content-type", PROBLEM_JSON.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        for event in (h11.Response(status_code=status, headers=headers, reason=title), h11.Data(data=body)):
            self.transport.write(self.conn.send(event))
        self.transport.write(self.conn.send(h11.EndOfMessage()))
        self.transport.close()


def server_options(settings: Settings) -> dict[str, Any]:
    """``uvicorn.Config`` keywords that apply ``settings``' limits on the request head."""
    return {"http": LimitedH11Protocol, "h11_max_incomplete_event_size": settings.max_header_bytes}
