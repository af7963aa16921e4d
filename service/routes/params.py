"""What the image routes share: query parameters parsed once into the values the work uses, and the source.

``alpha`` becomes a :class:`model.LightLevel` (a bad value raises :class:`model.AlphaError`, answered 422 by
:mod:`service.errors`); ``mode`` defaults to the served bundle's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, LightLevel, Mode
from kind_serve.model.multires import FAST_MIN_PIXELS, Quality

from .. import payloads
from ..batcher import Ticket
from ..deps import EngineDep, admitted, drop_on_disconnect
from ..store import Store

# a preview below 64 px shows nothing of the photo; above 4096 px it costs what the full image would
PREVIEW_MIN = 64
PREVIEW_MAX = 4096
IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
RANGE = f"'auto' or a number in [{ALPHA_MIN:g}, {ALPHA_MAX:g}]"

AlphaText = Annotated[
    str,
    Query(
        description=f"light level: {RANGE}; > 1 brightens, 'auto' chooses it per image",
        examples=["auto", "3.5"],
        openapi_examples={
            "auto": {"summary": "chosen per image", "value": "auto"},
            "fixed": {"summary": "brighten 3.5×", "value": "3.5"},
        },
        max_length=32,
    ),
]
OptionalAlphaText = Annotated[
    str | None, Query(description=f"also return L adjusted to this light level ({RANGE})", max_length=32)
]
ModeText = Annotated[
    Mode | None,
    Query(description="'photo' keeps bright regions natural; 'paper' is the authors' R̂·L̂; default: the bundle's"),
]
ImageIdQuery = Annotated[
    str | None, Query(description="id of a stored image (POST /images) instead of an upload", pattern=IMAGE_ID_PATTERN)
]
ImageIdPath = Annotated[str, Path(pattern=IMAGE_ID_PATTERN, description="id of a stored image: SHA-256 of its bytes")]
PreviewQuery = Annotated[
    int | None,
    Query(
        ge=PREVIEW_MIN,
        le=PREVIEW_MAX,
        description="answer a preview: the image downscaled to at most this many pixels on its longest side",
        examples=[1024],
    ),
]
QualityQuery = Annotated[
    Quality,
    Query(description=f"'fast': networks at half resolution on images above {FAST_MIN_PIXELS / 1e6:g} MP"),
]


def light_level(alpha: AlphaText = "auto") -> LightLevel:
    return LightLevel.parse(alpha)


def optional_light_level(alpha: OptionalAlphaText = None) -> LightLevel | None:
    return None if alpha is None else LightLevel.parse(alpha)


def output_mode(engine: EngineDep, mode: ModeText = None) -> Mode:
    return mode or engine.served.defaults.mode


LightDep = Annotated[LightLevel, Depends(light_level)]
OptionalLightDep = Annotated[LightLevel | None, Depends(optional_light_level)]
ModeDep = Annotated[Mode, Depends(output_mode)]


@contextlib.asynccontextmanager
async def source(request: Request, image_id: str | None, store: Store) -> AsyncIterator[tuple[Ticket, bytes]]:
    """An admitted ticket and the image (stored, or the upload); its queued work is dropped if the client leaves."""
    async with admitted(request) as ticket:
        data = await payloads.source_bytes(request, image_id, store, request.app.state.settings)
        async with drop_on_disconnect(request, ticket):
            yield ticket, data
