"""Service settings: one pydantic-settings model read from ``KIND_*`` environment variables.

Built once in :func:`service.app.create_app` and kept on ``app.state``; nothing reads the environment at
import time. Every field is documented in the README's "Service" section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .prescan import ScanLimits

MiB = 1024 * 1024
# the bundle shipped beside the packages, found wherever `kind serve` is started (not relative to the CWD)
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "kind-sice"


def _split_list(value: object) -> object:
    """Comma-separated env values ("a,b") as lists; JSON lists and Python lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All knobs of ``kind serve``; environment variables are the field names upper-cased with ``KIND_``."""

    model_config = SettingsConfigDict(env_prefix="KIND_", env_file=None, extra="ignore", frozen=True)

    # model and devices
    checkpoint: Path = Field(SHIPPED_CHECKPOINT, description="checkpoint bundle directory (default: the shipped one)")
    device: str = Field("auto", description="'auto' (every CUDA device, else CPU), 'cpu', 'cuda' or 'cuda:0,cuda:1'")
    precision: str = Field("fp32", description="fp32, fp16 or bf16 (autocast; fp16/bf16 only pay off on GPUs)")
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = all cores")
    tile_size: int | None = Field(None, ge=64, le=4096, description="tile side for large images; None = bundle's")
    tile_overlap: int | None = Field(None, ge=0, le=1024, description="tile overlap in pixels; None = bundle's")
    warmup: bool = Field(True, description="run a small batch through each worker before reporting ready")

    # batching and admission
    max_batch_size: int = Field(8, ge=1, le=256, description="items (images or tiles) per batch; 1 = no batching")
    max_queue_delay_ms: float = Field(5.0, ge=0, le=1000, description="longest extra wait to fill a batch")
    batch_pixel_budget: int = Field(3_000_000, ge=4096, description="pixels per batch (bounds activation memory)")
    bucket_multiple: int = Field(32, ge=1, le=512, description="pad sides up to this multiple so sizes batch")
    max_pending_requests: int = Field(16, ge=1, description="admitted requests (queued or running); more get 503")
    request_timeout_s: float = Field(60.0, gt=0, le=3600, description="deadline per request; past it → 504")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 queue-full answers")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time to finish in-flight requests on SIGTERM")

    # input limits
    max_upload_bytes: int = Field(64 * MiB, ge=1024, description="request body limit; more → 413")
    max_megapixels: float = Field(50.0, gt=0, le=1000, description="decoded image size limit; more → 413")
    max_inflight_megapixels: float = Field(
        48.0, gt=0, description="megapixels of admitted images being processed at once; more → 503 (bounds memory)"
    )

    # abuse limits: slow uploads, parser bombs, oversized headers, greedy clients (docs/reliability.md)
    upload_timeout_s: float = Field(120.0, gt=0, le=3600, description="time to receive a whole body; past it → 408")
    upload_grace_s: float = Field(10.0, ge=0, description="time before upload_min_bytes_per_s is enforced")
    upload_min_bytes_per_s: int = Field(
        8192, ge=0, description="slowest average upload rate after the grace period; slower → 408 (0 = no minimum)"
    )
    upload_budget_bytes: int = Field(
        256 * MiB, ge=MiB, description="bytes of request bodies being received at once; more → 503"
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=1024 * 1024, description="request line plus headers; more → 431"
    )
    max_header_fields: int = Field(100, ge=8, le=10_000, description="header fields per request; more → 431")
    max_metadata_segments: int = Field(
        256, ge=16, description="JPEG segments, PNG/WebP chunks, GIF extensions or TIFF tags besides pixels; more → 422"
    )
    max_metadata_bytes: int = Field(MiB, ge=64 * 1024, description="metadata bytes (EXIF, ICC, XMP, text); more → 422")
    max_jpeg_scans: int = Field(100, ge=1, description="scans of a progressive JPEG; more → 422")
    client_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="largest share of admission slots, upload budget and image store one client may hold "
        "(a client: its bearer token when auth is on, else its address); more → 429",
    )

    # image store
    redis_url: str | None = Field(None, description="redis://host:port/db; unset = in-process store")
    store_max_bytes: int = Field(256 * MiB, ge=MiB, description="in-process store capacity (LRU by bytes)")
    store_ttl_s: int = Field(3600, ge=1, description="lifetime of stored images and derived results")
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout for Redis operations")

    # security and HTTP
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bearer tokens; empty = no auth (probes always open)"
    )
    metrics_require_auth: bool = Field(False, description="also protect /metrics with the bearer tokens")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins; empty = CORS closed"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    json_logs: bool = Field(True, description="one JSON object per log line")

    @field_validator("auth_tokens", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("auth_tokens")
    @classmethod
    def _strong_tokens(cls, tokens: list[str]) -> list[str]:
        for token in tokens:
            if len(token) < 16 or any(c.isspace() for c in token):
                raise ValueError("auth tokens must be at least 16 characters without whitespace")
        return tokens

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ValueError(f"CORS origins must be '*' or start with http:// or https://, got {origin!r}")
        return origins

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        if value not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        for part in value.split(","):
            name = part.strip()
            if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
                raise ValueError(f"device must be auto, cpu, cuda or cuda:N[,cuda:M], got {value!r}")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
        return value.upper()

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        # tile origins are rounded to multiples of 16 (model/tiling.py), which can eat 16 px of the overlap
        if self.tile_size and self.tile_overlap is not None and self.tile_overlap + 16 >= self.tile_size:
            raise ValueError(f"tile_size ({self.tile_size}) must exceed tile_overlap + 16 ({self.tile_overlap + 16})")
        if "*" in self.cors_origins and self.auth_tokens:
            raise ValueError("a wildcard CORS origin with bearer-token auth is unsafe; list the allowed origins")
        return self

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_tokens)

    @property
    def scan_limits(self) -> ScanLimits:
        return ScanLimits(self.max_metadata_segments, self.max_metadata_bytes, self.max_jpeg_scans)

    def client_quota(self, total: int) -> int:
        """One client's part of a capacity ``total`` (slots, bytes): ``client_share`` of it, at least 1."""
        return max(1, int(total * self.client_share))
