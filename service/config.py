"""Service settings: one pydantic-settings model read from ``KIND_*`` environment variables.

Built once in :func:`service.app.create_app` and kept on ``app.state``; nothing reads the environment at
import time. Every field is listed in docs/service.md ("Settings").
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from kind_serve.model.precision import SETTINGS as PRECISION_SETTINGS
from kind_serve.model.tiling import MIN_TILE, check_tiling

from .prescan import ScanLimits

MiB = 1024 * 1024
# the bundle shipped beside the packages, found wherever `kind serve` is started (not relative to the CWD)
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "kind-sice"


def _split_list(value: object) -> object:
    """Values separated by commas or newlines ("a,b", a file's lines) as lists; JSON and Python lists pass through."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All knobs of ``kind serve``; environment variables are the field names upper-cased with ``KIND_``."""

    # hide_input_in_errors: a rejected value (a token, a password) never appears in an error message
    model_config = SettingsConfigDict(
        env_prefix="KIND_", env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # model and devices
    checkpoint: Path = Field(SHIPPED_CHECKPOINT, description="checkpoint bundle directory (default: the shipped one)")
    device: str = Field("auto", description="'auto' (every CUDA device, else CPU), 'cpu', 'cuda' or 'cuda:0,cuda:1'")
    precision: str = Field(
        "auto",
        description="auto (fp16 on tensor-core GPUs, bf16 on CPUs with bf16 instructions, else fp32), fp32, fp16 or "
        "bf16; a precision the device only emulates runs slower and is reported in the log and /readyz",
    )
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = all cores")
    tile_size: int | None = Field(None, ge=MIN_TILE, le=4096, description="tile side for large images; None = bundle's")
    tile_overlap: int | None = Field(None, ge=0, le=1024, description="tile overlap in pixels; None = bundle's")
    warmup: bool = Field(True, description="run a small batch through each worker before reporting ready")

    # batching and admission
    max_batch_size: int = Field(8, ge=1, le=256, description="items (images or tiles) per batch; 1 = no batching")
    max_queue_delay_ms: float = Field(5.0, ge=0, le=1000, description="longest extra wait to fill a batch")
    batch_pixel_budget: int = Field(3_000_000, ge=4096, description="pixels per batch (bounds activation memory)")
    bucket_multiple: int = Field(32, ge=1, le=512, description="pad sides up to this multiple so sizes batch")
    max_pending_requests: int = Field(16, ge=1, description="admitted requests (queued or running); more get 503")
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="shortest deadline per request; longer work gets work_margin × its estimate"
    )
    max_sync_work_s: float = Field(
        600.0, gt=0, le=86400, description="estimated model time a synchronous request may take; more → 413 or 503"
    )
    max_job_work_s: float = Field(3600.0, gt=0, le=86400, description="estimated model time a job may take; more → 413")
    work_margin: float = Field(2.0, ge=1, le=10, description="deadline = this × estimated work (queue ahead + own)")
    max_jobs: int = Field(
        32,
        ge=1,
        description="jobs queued or running at once, every replica on the store together (their uploads wait in "
        "the store); one client may hold client_share of them; more → 503 / 429",
    )
    job_workers: int = Field(2, ge=1, le=64, description="jobs one replica runs at once; the others wait in the queue")
    job_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description="a running job's lease, renewed every third of it: a job whose replica stops renewing (crash, "
        "kill, lost Redis) is taken by another replica after this",
    )
    job_max_attempts: int = Field(
        3, ge=1, le=20, description="times a job is started before a lapsed lease fails it (with the reason)"
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with 503 queue-full answers")
    shutdown_grace_s: float = Field(30.0, ge=0, description="time to finish in-flight requests on SIGTERM")

    # input limits
    max_upload_bytes: int = Field(64 * MiB, ge=1024, description="request body limit; more → 413")
    max_megapixels: float = Field(50.0, gt=0, le=1000, description="decoded image size limit; more → 413")
    max_inflight_megapixels: float = Field(
        100.0,
        gt=0,
        description="decoded megapixels of admitted images being processed at once (bounds memory); more → 503; "
        "one client may hold client_share of it (429), and a larger image is refused (413)",
    )
    decode_workers: int = Field(
        2, ge=1, le=64, description="processes decoding uploads at once, each capped; more decodes wait for one"
    )
    decode_memory_mb: int = Field(
        1024, ge=128, description="memory one decode may allocate (address-space limit of its process); more → 413"
    )
    decode_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="wall time one decode may take; longer → the decoder is killed, 422"
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
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="time from a request's first byte to the end of its headers; more → 408, closed"
    )
    idle_timeout_s: int = Field(
        5,
        ge=1,
        le=300,
        description="time a connection may stay silent before a request (after connecting or a response: the "
        "keep-alive timeout); then it is closed",
    )
    max_connections: int = Field(
        512, ge=1, le=100_000, description="open HTTP connections; one more is answered 503 and closed at once"
    )
    max_metadata_segments: int = Field(
        256, ge=16, description="JPEG segments, PNG/WebP chunks, GIF extensions or TIFF tags besides pixels; more → 422"
    )
    max_metadata_bytes: int = Field(MiB, ge=64 * 1024, description="metadata bytes (EXIF, ICC, XMP, text); more → 422")
    max_jpeg_scans: int = Field(100, ge=1, description="scans of a progressive JPEG; more → 422")
    client_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="largest share of admission slots, job slots, upload budget and image store one client may hold "
        "(a client: its bearer token when auth is on, else its address); more → 429",
    )

    # image store
    redis_url: str | None = Field(None, repr=False, description="redis://[user@]host:port/db; unset = in-process store")
    redis_password: SecretStr | None = Field(None, description="password of the Redis user (from a secret)")
    store_key: SecretStr | None = Field(
        None,
        min_length=32,
        description="HMAC key signing every stored entry (≥ 32 characters, from a secret); required with "
        "redis_url; unset = a random key per process",
    )
    store_max_bytes: int = Field(256 * MiB, ge=MiB, description="in-process store capacity (LRU by bytes)")
    store_ttl_s: int = Field(3600, ge=1, description="lifetime of stored images and derived results")
    redis_timeout_s: float = Field(2.0, gt=0, description="socket timeout for Redis operations")
    parts_cache_bytes: int = Field(
        512 * MiB,
        ge=0,
        description="memory per replica for the α-independent parts of stored images (22 bytes per pixel), so a "
        "new α costs only the adjustment net and the composition; LRU; 0 = off",
    )

    # security and HTTP
    host: str = Field("127.0.0.1", description="address to listen on; beyond loopback, auth tokens are required")
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list, repr=False, description="bearer tokens; empty = no auth (probes always open)"
    )
    allow_anonymous_network_access: bool = Field(
        False,
        description="serve without auth tokens on a non-loopback host: anyone who reaches the port may use the API",
    )
    metrics_require_auth: bool = Field(
        True, description="/metrics on the API port needs a bearer token when auth is on"
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="serve /metrics on this port instead (no auth; bound to metrics_host)"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the metrics_port listener")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins; empty = CORS closed"
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto "
        "are believed; empty = none: the client is the connection's peer",
    )
    strip_metadata: bool = Field(
        False, description="drop the input's EXIF (camera, date, GPS) from every output, as strip_metadata=true does"
    )
    demo: bool = Field(True, description="serve the demo page at / (it calls the API, under the API's auth)")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    json_logs: bool = Field(True, description="one JSON object per log line")

    @field_validator("auth_tokens", "cors_origins", "trusted_proxies", mode="before")
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
                raise ValueError("CORS origins must be '*' or start with http:// or https://")
        return origins

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, proxies: list[str]) -> list[str]:
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    "trusted proxies must be IP addresses or CIDR networks (no '*' or host names): any client the "
                    "list admits can claim any address in X-Forwarded-For"
                ) from None
        return proxies

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        if value not in PRECISION_SETTINGS:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_SETTINGS)}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        for part in value.split(","):
            name = part.strip()
            if not (name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())):
                raise ValueError("device must be auto, cpu, cuda or cuda:N[,cuda:M]")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("redis_url")
    @classmethod
    def _redis(cls, value: str | None) -> str | None:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.tile_size and self.tile_overlap is not None:  # else checked at start-up against the bundle's
            check_tiling(self.tile_size, self.tile_overlap)
        if "*" in self.cors_origins and self.auth_tokens:
            raise ValueError("a wildcard CORS origin with bearer-token auth is unsafe; list the allowed origins")
        if not self.auth_tokens and not is_loopback(self.host) and not self.allow_anonymous_network_access:
            raise ValueError(
                "host is not a loopback address and no auth tokens are set: anyone reaching the port could use "
                "the API. Set KIND_AUTH_TOKENS, or KIND_ALLOW_ANONYMOUS_NETWORK_ACCESS=true to serve everyone"
            )
        if self.redis_url and self.store_key is None:
            raise ValueError(
                "store_key is required with redis_url: replicas sign what they store with it and ignore entries "
                "without a valid signature. Set KIND_STORE_KEY (≥ 32 random characters, the same on every replica)"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, ValueFiles(settings_cls), dotenv_settings, file_secret_settings

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


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # another host name: it may resolve to any interface


class ValueFiles(PydanticBaseSettingsSource):
    """``KIND_<NAME>_FILE=/path``: the setting's value is the file's content (Docker and Kubernetes secrets).

    Environment variables win over files; a named file that cannot be read is an error, never an empty value.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = f"KIND_{field_name.upper()}_FILE"
        path = os.environ.get(variable)
        if not path:
            return None, field_name, False
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsError(f"{variable}: cannot read the file ({reason})") from None
        return text.rstrip("\n"), field_name, False  # as `$(cat file)` reads it in start-redis.sh

    def __call__(self) -> dict[str, Any]:
        values = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                values[name] = value
        return values


def explain(exc: ValueError) -> str:
    """A settings error as one line per problem naming the setting and the rule, never the value given."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        loc = ".".join(str(part) for part in error["loc"])
        field = loc.split(".")[0]
        name = f"{field} (KIND_{field.upper()})" if field in Settings.model_fields else "settings"
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
