"""Query parameters shared by the image routes, each parsed once here into the value the work uses.

``alpha`` becomes a :class:`model.LightLevel` (a bad value raises :class:`model.AlphaError`, answered 422 by
:mod:`service.errors`); ``mode`` defaults to the served bundle's.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query

from kind_serve.model import ALPHA_MAX, ALPHA_MIN, LightLevel, Mode
from kind_serve.model.multires import FAST_MIN_PIXELS, Quality

from ..deps import EngineDep
from ..schemas import IMAGE_ID_PATTERN

# a preview below 64 px shows nothing of the photo; above 4096 px it costs what the full image would
PREVIEW_MIN = 64
PREVIEW_MAX = 4096

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
    str | None,
    Query(description=f"also return L adjusted to this light level ({RANGE})", max_length=32),
]
ModeText = Annotated[
    Mode | None,
    Query(description="'photo' keeps bright regions natural; 'paper' is the authors' R̂·L̂; default: the bundle's"),
]
ImageIdQuery = Annotated[
    str | None, Query(description="id of a stored image (POST /images) instead of an upload", pattern=IMAGE_ID_PATTERN)
]

PreviewQuery = Annotated[
    int | None,
    Query(
        ge=PREVIEW_MIN,
        le=PREVIEW_MAX,
        description=(
            f"answer a preview: the image downscaled (never enlarged) so that its longest side is at most this "
            f"many pixels ({PREVIEW_MIN}..{PREVIEW_MAX}), then enhanced; a stored image's preview parts are kept "
            "for re-lighting like the full image's"
        ),
        examples=[1024],
    ),
]

QualityQuery = Annotated[
    Quality,
    Query(
        description=(
            f"'fast': on images above {FAST_MIN_PIXELS / 1e6:g} MP the networks run at half resolution, 2–3× "
            "faster with softer fine texture; 'full': at full resolution"
        ),
    ),
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
