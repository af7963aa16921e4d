"""The service's error record: :class:`Problem`, an RFC 9457 problem (``application/problem+json``).

A leaf: the batcher, the store, decoding and the routes raise problems without depending on the web framework;
:mod:`service.errors` renders them as responses.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field
from typing import Any

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://kind-serve.invalid/problems/"  # stable identifiers, not fetched by clients


@dataclass(eq=False)  # eq=False: compared and hashed by identity, as exceptions are
class Problem(Exception):
    """An HTTP error with an RFC 9457 body; ``kind`` becomes the ``type`` URI and the metrics reason."""

    status: int
    title: str
    detail: str
    _: KW_ONLY
    kind: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.detail)

    def body(self, instance: str | None = None, request_id: str | None = None) -> dict[str, Any]:
        """The RFC 9457 body: every problem+json the service sends, from the app or its HTTP server, is this."""
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.kind if self.kind else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance is not None:
            body["instance"] = instance
        if request_id:
            body["request_id"] = request_id
        return {**body, **self.extra}


def upload_too_large(limit: int) -> Problem:
    return Problem(413, "Content Too Large", f"the upload exceeds the limit of {limit} bytes", kind="too-large-upload")
