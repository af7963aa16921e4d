"""Response bodies of the JSON endpoints (the image endpoints return image bytes)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kind_serve.model import Mode

IMAGE_ID_PATTERN = r"^[0-9a-f]{64}$"
EXAMPLE_ID = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def example(body: dict[str, Any]) -> ConfigDict:
    """A model config whose JSON schema shows ``body`` as the example of the model."""
    return ConfigDict(json_schema_extra={"examples": [body]})


class ImageLinks(BaseModel):
    image: str = Field(description="GET: the stored image bytes")
    enhance: str = Field(description="POST: enhance the stored image")
    decompose: str = Field(description="GET: decompose the stored image")


class StoredImage(BaseModel):
    """An image kept in the store; its id is the SHA-256 of its bytes."""

    model_config = example(
        {
            "id": EXAMPLE_ID,
            "width": 640,
            "height": 480,
            "format": "jpeg",
            "bytes": 83125,
            "links": {
                "image": f"/images/{EXAMPLE_ID}",
                "enhance": f"/enhance?image_id={EXAMPLE_ID}",
                "decompose": f"/decompose?image_id={EXAMPLE_ID}",
            },
        }
    )

    id: str = Field(pattern=IMAGE_ID_PATTERN, description="SHA-256 of the stored bytes, lower-case hex")
    width: int = Field(ge=1, description="width as stored (before EXIF orientation)")
    height: int = Field(ge=1, description="height as stored (before EXIF orientation)")
    format: str = Field(description="decoder that recognised the data, e.g. png, jpeg")
    bytes: int = Field(ge=1, description="size of the stored data")
    links: ImageLinks


class DecompositionLinks(BaseModel):
    """Where each component of a decomposition can be fetched (PNG images) and all of them as a zip."""

    model_config = example(
        {
            "image_id": EXAMPLE_ID,
            "alpha": 3.0,
            "mode": "photo",
            "model_version": "kind-sice-1",
            "components": {
                "R": f"/decompose/{EXAMPLE_ID}/R.png?alpha=3.0",
                "L": f"/decompose/{EXAMPLE_ID}/L.png?alpha=3.0",
                "L_adj": f"/decompose/{EXAMPLE_ID}/L_adj.png?alpha=3.0",
            },
            "all": f"/decompose/{EXAMPLE_ID}/all.zip?alpha=3.0",
        }
    )

    image_id: str = Field(pattern=IMAGE_ID_PATTERN)
    alpha: float | None = Field(description="α of the adjusted illumination; null when none was asked for")
    mode: Mode
    model_version: str
    components: dict[str, str] = Field(description="component name (R, L, L_adj) → URL of its PNG")
    all: str = Field(description="URL of a zip archive holding every component PNG plus manifest.json")


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    detail: str | None = None
