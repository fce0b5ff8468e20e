"""Settings: HEADSCOPE_* environment variables, overridable by command-line flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything an operator can set. The model comes only from here, never from a request."""

    model_config = SettingsConfigDict(env_prefix="HEADSCOPE_", extra="ignore")

    model: str = Field("smollm2-135m", min_length=1, description="registry name, local directory, or hub id")
    device: str = Field("auto", pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$", description="auto, cpu, mps, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device_map: Literal["auto", "balanced", "balanced_low_0", "sequential"] | None = None
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)

    max_tokens: int = Field(2048, ge=1, description="longest text accepted, in tokens")
    max_body_bytes: int = Field(1_000_000, ge=1024)
    max_map_cells: int = Field(
        2048 * 2048, ge=1, description="most attention weights one response may carry (default: one 2048-token map)"
    )
    queue_size: int = Field(16, ge=1, description="requests waiting for the model before 503")
    queue_timeout_s: float = Field(60.0, gt=0, description="a request waiting longer is dropped with 503")
    retry_after_s: int = 2
    cache_entries: int = Field(16, ge=1)
    cache_bytes: int = Field(2 << 30, ge=1)
    warmup: bool = True

    data_dir: Path = Field(Path("data"), description="embedded store of corpus datasets and jobs")
    max_dataset_texts: int = Field(10_000, ge=1, description="most texts one dataset may hold")
    max_upload_bytes: int = Field(20_000_000, ge=1024, description="body limit of a dataset upload")

    ray_address: str | None = Field(
        None,
        pattern=r"^(local|auto|ray://.+|[^\s/]+:\d+)$",
        description='Ray cluster for corpus jobs: "local" starts one on this host, "auto", "ray://host:port" or '
        "host:port joins one; unset: jobs run in the model worker",
    )
    ray_workers: int | None = Field(None, ge=1, description="Ray actors holding the model (default: one per GPU, or 1)")
    ray_gpus_per_worker: float | None = Field(
        None,
        ge=0,
        description="GPUs per Ray actor (default: 1 on a cluster with GPUs, else 0); above 1 the model is spread "
        "over them",
    )

    api_key: SecretStr | None = None
    cors_origins: list[str] = []
