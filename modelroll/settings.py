"""Typed settings read once from `MODELROLL_*` environment variables.

With no environment at all modelroll runs embedded: SQLite and artifacts under
`./.modelroll/`, the in-process live channel. `MODELROLL_DATABASE_URL` and
`MODELROLL_REDIS_URL` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELROLL_", extra="ignore")

    home: Path = Field(default=Path(".modelroll"), description="Embedded state directory.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = SQLite in home.")
    redis_url: str = Field(default="", description="redis://...; empty = in-process live channel.")
    redis_prefix: str = Field(default="modelroll:", description="Prefix of every Redis key.")
    redis_timeout_s: float = Field(default=1.0, gt=0, le=60)
    live_samples_max_len: int = Field(default=1_000_000, ge=1, description="Samples kept in the live log.")
    live_predictions_max_len: int = Field(
        default=1_000_000, ge=1, description="In-process channel only: predictions kept for the feedback join "
        "(oldest dropped first); Redis bounds them by their TTL and its own maxmemory.")
    artifacts_dir: Path | None = Field(default=None, description="Default: home/artifacts.")
    input_dir: Path | None = Field(default=None, description=(
        "The only folder whose files the ops API reads when a request names one (an optimization's eval_data, by a "
        "path relative to it); default: home/inputs."))
    retention_days: int = Field(
        default=30, ge=0, le=36500, description="Raw sample windows of finished rollouts (latencies, labels by "
        "request) and delivered webhook notifications older than this are purged; decisions and their evidence "
        "are kept. 0 = as soon as the rollout finishes.")

    # router
    router_host: str = "127.0.0.1"
    router_port: int = Field(default=8080, ge=0, le=65535)
    router_threads: int = Field(default=1, ge=1, le=256, description="onnxruntime intra-op threads.")
    router_max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Largest request body the router reads: 413 above it, by "
        "Content-Length before reading, or as soon as a streamed body passes it.")
    router_read_timeout_s: float = Field(
        default=30.0, gt=0, le=600, description="A request body not whole this many seconds after the router starts "
        "reading it is a 408 and its connection is closed (a client declaring more than it sends); reads are checked "
        "every quarter of it (at most every second), so the answer comes within 1.25 times of it.")
    router_candidate_timeout_s: float = Field(default=2.0, gt=0)
    router_shadow_max_concurrency: int = Field(default=4, ge=0)
    router_sample_buffer: int = Field(default=100_000, ge=100)
    router_flush_interval_s: float = Field(default=0.2, gt=0)
    router_memory_interval_s: float = Field(default=2.0, gt=0)
    router_breaker_failures: int = Field(default=20, ge=1)
    router_runner: str = Field(
        default="subprocess", pattern="^(inline|subprocess)$", description="subprocess: each variant in its own "
        "process, whose memory is measured exactly (what the memory gate needs); inline: in the router's process, "
        "faster, but no variant's own memory can be measured (memory is then gated on the offline figure or held).")
    router_inline_max_ms: float = Field(
        default=2.0, ge=0, description="Inline runner only: an in-process model whose runs stay under this runs on "
        "the event loop itself, saving a thread hand-off per request; 0 = always on the thread pool.")
    feedback_ttl_s: int = Field(default=24 * 3600, ge=1)

    # controller
    controller_host: str = "127.0.0.1"
    controller_port: int = Field(default=8081, ge=0, le=65535)
    reconcile_interval_s: float = Field(default=1.0, gt=0)
    leader_lease_s: float = Field(default=10.0, gt=0)
    controller_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, description="Largest request body the controller reads (413 above it, refused "
        "by Content-Length before reading, or as soon as a chunked body passes it); ops API bodies are a few KB.")
    controller_read_timeout_s: float = Field(
        default=10.0, gt=0, le=600, description="The whole request body must arrive within this many seconds of "
        "its headers, else 408 and the connection is closed (a client declaring more than it sends).")
    admin_token: str = Field(default="", description="Bootstrap admin bearer token.")
    allow_anonymous_viewer: bool = True
    webhook_url: str = ""
    public_url: str = Field(default="", description=(
        "The controller's address as people reach it, for links to status pages in webhook notifications; default "
        "http://CONTROLLER_HOST:CONTROLLER_PORT."))

    # optimizer worker
    job_visibility_timeout_s: float = Field(default=600.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    eval_timeout_s: float = Field(default=600.0, gt=0)
    eval_max_time_s: float = Field(default=10.0, gt=0, description="Timed runs per batch size stop after this.")
    eval_min_runs: int = Field(default=60, ge=1, description="Timed runs per batch size at least.")
    worker_host: str = "127.0.0.1"
    worker_port: int = Field(default=8082, ge=0, le=65535, description="Prometheus /metrics of the worker; 0 = off.")

    log_level: str = "INFO"

    @field_validator("database_url", "redis_url")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @property
    def embedded(self) -> bool:
        return not self.redis_url

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'modelroll.db').resolve()}"

    @property
    def status_page_url(self) -> str:
        """Where a browser finds the status pages (MODELROLL_PUBLIC_URL, else the controller's own address)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "localhost" if self.controller_host in ("0.0.0.0", "::", "") else self.controller_host
        return f"http://{host}:{self.controller_port}"

    @property
    def effective_artifacts_dir(self) -> Path:
        return self.artifacts_dir if self.artifacts_dir is not None else self.home / "artifacts"

    @property
    def effective_input_dir(self) -> Path:
        return self.input_dir if self.input_dir is not None else self.home / "inputs"
