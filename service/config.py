"""Service settings: one pydantic-settings model read from ``KIND_*`` environment variables.

Built once in :func:`service.app.create_app` and kept on ``app.state``; nothing reads the environment at
import time. Every field is listed in docs/service.md ("Settings").
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from kind_serve.model.precision import SETTINGS as PRECISION_SETTINGS
from kind_serve.model.tiling import MIN_TILE

MiB = 1024 * 1024
# the bundle shipped beside the packages, found wherever `kind serve` is started (not relative to the CWD)
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "kind-sice"


class Settings(BaseSettings):
    """All knobs of ``kind serve``; environment variables are the field names upper-cased with ``KIND_``."""

    # hide_input_in_errors: a rejected value (a token, a password) never appears in an error message
    model_config = SettingsConfigDict(
        env_prefix="KIND_", env_file=None, extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # -- model and devices ------------------------------------------------------------------------------
    checkpoint: Path = Field(SHIPPED_CHECKPOINT, description="checkpoint bundle directory (default: the shipped one)")
    device: str = Field("auto", description="'auto' (every CUDA device, else CPU), 'cpu', 'cuda' or 'cuda:0,cuda:1'")
    precision: str = Field(
        "auto",
        description=(
            "auto (fp16 on tensor-core GPUs, bf16 on CPUs with bf16 instructions, else fp32), fp32, fp16 or "
            "bf16; a precision the device only emulates runs slower and is reported in the log and /readyz"
        ),
    )
    tile_size: int | None = Field(
        None,
        ge=MIN_TILE,
        le=4096,
        description="tiles of at most this² pixels for large images (bounds memory); None = the bundle's",
    )
    warmup: bool = Field(True, description="run a small batch through each worker before reporting ready")

    # -- capacity and deadlines ---------------------------------------------------------------------------
    max_batch_size: int = Field(8, ge=1, le=256, description="items (images or tiles) per batch; 1 = no batching")
    max_pending_requests: int = Field(16, ge=1, description="admitted requests (queued or running); more get 503")
    request_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="shortest deadline per request; longer work gets twice its estimate"
    )
    shutdown_grace_s: float = Field(30.0, ge=0, description="time to finish in-flight requests on SIGTERM")
    max_jobs: int = Field(
        32,
        ge=1,
        description=(
            "jobs queued or running at once, every replica on the store together (their uploads wait in the "
            "store); one client may hold client_share of them; more → 503 / 429"
        ),
    )
    job_lease_s: float = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "a running job's lease, renewed every third of it: a job whose replica stops renewing (crash, "
            "kill, lost Redis) is taken by another replica after this"
        ),
    )

    # -- input limits and fairness ------------------------------------------------------------------------
    max_upload_bytes: int = Field(64 * MiB, ge=1024, description="request body limit; more → 413")
    max_megapixels: float = Field(50.0, gt=0, le=1000, description="decoded image size limit; more → 413")
    max_inflight_megapixels: float = Field(
        100.0,
        gt=0,
        description=(
            "decoded megapixels of admitted images being processed at once (bounds memory); more → 503; one "
            "client may hold client_share of it (429), and a larger image is refused (413)"
        ),
    )
    decode_memory_mb: int = Field(
        1024, ge=128, description="memory one decode may allocate (address-space limit of its process); more → 413"
    )
    client_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description=(
            "largest share of admission slots, job slots, upload budget and image store one client may hold "
            "(a client: its bearer token when auth is on, else its address); more → 429"
        ),
    )

    # -- image store --------------------------------------------------------------------------------------
    redis_url: str | None = Field(None, repr=False, description="redis://[user@]host:port/db; unset = in-process store")
    redis_password: SecretStr | None = Field(None, description="password of the Redis user (from a secret)")
    store_key: SecretStr | None = Field(
        None,
        min_length=32,
        description=(
            "HMAC key signing every stored entry (≥ 32 characters, from a secret); required with redis_url; "
            "unset = a random key per process"
        ),
    )
    store_max_bytes: int = Field(256 * MiB, ge=MiB, description="in-process store capacity (LRU by bytes)")
    store_ttl_s: int = Field(3600, ge=1, description="lifetime of stored images and derived results")
    parts_cache_bytes: int = Field(
        512 * MiB,
        ge=0,
        description=(
            "memory per replica for the α-independent parts of stored images (24 bytes per pixel), so a new "
            "α costs only the adjustment net and the composition; LRU; 0 = off"
        ),
    )

    # -- network and security -----------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="address to listen on; beyond loopback, auth tokens are required")
    auth_tokens: Annotated[list[str], NoDecode] = Field(
        [], repr=False, description="bearer tokens; empty = no auth (probes always open)"
    )
    allow_anonymous_network_access: bool = Field(
        False,
        description="serve without auth tokens on a non-loopback host: anyone who reaches the port may use the API",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field([], description="allowed CORS origins; empty = CORS closed")
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        [],
        description=(
            "addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are"
            " believed; empty = none: the client is the connection's peer"
        ),
    )
    metrics_address: str | None = Field(
        None,
        description=(
            "host:port of a separate /metrics listener without auth (then the API port has none); unset = "
            "/metrics on the API port"
        ),
    )

    # -- logging ------------------------------------------------------------------------------------------
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    json_logs: bool = Field(True, description="one JSON object per log line")

    @field_validator("auth_tokens", "cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        """Values separated by commas or newlines ("a,b", a file's lines) as lists; JSON and Python lists pass."""
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]

    @field_validator("auth_tokens")
    @classmethod
    def _strong_tokens(cls, tokens: list[str]) -> list[str]:
        if any(len(token) < 16 or any(c.isspace() for c in token) for token in tokens):
            raise ValueError("auth tokens must be at least 16 characters without whitespace")
        return tokens

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        if any(origin != "*" and not origin.startswith(("http://", "https://")) for origin in origins):
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
        names = [part.strip() for part in value.split(",")]
        if not all(n in ("auto", "cpu", "cuda") or (n.startswith("cuda:") and n[5:].isdigit()) for n in names):
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

    @field_validator("metrics_address")
    @classmethod
    def _metrics_address(cls, value: str | None) -> str | None:
        if value:
            split_address(value)
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
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

    def client_quota(self, total: int) -> int:
        """One client's part of a capacity ``total`` (slots, bytes): ``client_share`` of it, at least 1."""
        return max(1, int(total * self.client_share))


class Limits(BaseModel):
    """Protocol limits and internal capacities: fixed values, not settings (no operator needs to tune them).

    Never read from the environment. :func:`service.app.create_app` takes one (default: these values) and keeps
    it on ``app.state.limits``; tests pass smaller ones to exercise a limit quickly.
    """

    model_config = ConfigDict(frozen=True)

    # HTTP connections and request heads (service.__main__, service.admission)
    idle_timeout_s: int = 5  # a silent connection holds a socket and a slot of max_connections; clients reconnect
    header_timeout_s: float = 10.0  # a head is a few hundred bytes: 10 s covers any real client, not a slowloris
    max_connections: int = 512  # well under common file-descriptor limits (1024), above any real client fan-in
    max_header_bytes: int = 16 * 1024  # browsers send under 8 KiB; twice that leaves room for long cookies
    max_header_fields: int = 100  # browsers and proxies send a few dozen fields
    # request bodies (service.admission)
    upload_timeout_s: float = 120.0  # max_upload_bytes (64 MiB) at ~4 Mbit/s
    upload_grace_s: float = 10.0  # TCP slow start and a phone's radio waking up
    upload_min_bytes_per_s: int = 8192  # a trickle slower than this holds a slot for minutes
    upload_budget_bytes: int = 256 * MiB  # four bodies of max_upload_bytes received at once
    retry_after_s: int = 1  # 503 queue-full clears as soon as one request finishes
    # work admission (service.workload) and jobs (service.jobs)
    max_sync_work_s: float = 600.0  # longer work belongs in a job, which survives a dropped connection
    max_job_work_s: float = 3600.0  # bounds what one job can hold a worker for
    job_workers: int = 2  # one running while the next decodes and queues its tiles
    job_max_attempts: int = 3  # a job that killed two replicas is likely to kill a third
    # model canvas, Redis (service.inference, service.store)
    bucket_multiple: int = 32  # the networks' own multiple: padding to it costs nothing and lets sizes batch
    redis_timeout_s: float = 2.0  # a local Redis answers in milliseconds; longer means it is gone


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9100`` for IPv6) as (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("metrics_address must be host:port, e.g. 0.0.0.0:9100")
    return host.strip("[]"), int(port)


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
        if not (path := os.environ.get(variable)):
            return None, field_name, False
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise SettingsError(f"{variable}: cannot read the file ({reason})") from None
        return text.rstrip("\n"), field_name, False  # as `$(cat file)` reads it in start-redis.sh

    def __call__(self) -> dict[str, Any]:
        found = {name: self.get_field_value(field, name)[0] for name, field in self.settings_cls.model_fields.items()}
        return {name: value for name, value in found.items() if value is not None}


def explain(exc: ValueError) -> str:
    """A settings error as one line per problem naming the setting and the rule, never the value given."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    lines = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        field = str(error["loc"][0]) if error["loc"] else ""
        name = f"{field} (KIND_{field.upper()})" if field in Settings.model_fields else "settings"
        lines.append(f"{name}: {error['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)
