"""Service settings from the environment (`EDGETUNE_*`); one `Settings`, checked at once."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LOOPBACK_NAMES = {"localhost", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class DataLayout:
    """Where everything lives in the server's data directory; the one place that knows."""

    root: Path

    @classmethod
    def of_artifacts(cls, artifact_dir: str | Path) -> DataLayout:
        """The layout whose `artifacts` is `artifact_dir`, for a caller given only that."""
        path = Path(artifact_dir)
        if path.name != "artifacts":
            raise ValueError(f"artifact_dir is {str(path)!r}, but must be a data directory's "
                             "`artifacts` folder; pass `layout=Settings().layout` instead")
        return cls(path.parent)

    @property
    def database(self) -> Path:
        """The SQLite file, when no database URL is set."""
        return self.root / "edgetune.db"

    @property
    def artifacts(self) -> Path:
        """Exported models, content-addressed (`storage.artifacts`)."""
        return self.root / "artifacts"

    @property
    def datasets(self) -> Path:
        """Dataset files a spec names (`trainers.datasets`)."""
        return self.root / "datasets"

    @property
    def models(self) -> Path:
        """Teacher models a spec names (`trainers`)."""
        return self.root / "models"

    @property
    def supernets(self) -> Path:
        """Trained one-shot supernets, by content hash (`trainers.supernet`): a job that names
        the same space, data and training settings reuses one instead of training it."""
        return self.root / "supernets"

    @property
    def token(self) -> Path:
        """The token a development server writes for the SDK and the CLI."""
        return self.root / "token"

    @property
    def ray(self) -> Path:
        """Ray Tune's experiment folders."""
        return self.root / "ray"

    def cache(self, study_name: str) -> Path:
        """A trainer's cache for one job (`Trainer.cache_dir`)."""
        return self.root / "cache" / study_name


class PoolSettings(BaseSettings):
    """The PostgreSQL connection pool of each engine. Every engine reads these from the
    environment when it is made (`edgetune.storage.db.engine_kwargs`), so the API, its workers
    and their trial processes, started with one environment, all size their pools alike. Each
    process holds two engines per database (edgetune's and Optuna's): size the server's
    `max_connections` for processes x 2 x (pool + overflow)."""

    model_config = SettingsConfigDict(env_prefix="EDGETUNE_", extra="ignore")

    db_pool_size: int = Field(
        default=5, ge=1, le=1000,
        description="Connections an engine keeps open to PostgreSQL (SQLAlchemy `pool_size`).",
    )
    db_max_overflow: int = Field(
        default=10, ge=0, le=1000,
        description="Connections an engine may open beyond its pool when busy "
                    "(`max_overflow`); closed again when returned.",
    )


class DatasetSettings(BaseSettings):
    """The bound on a dataset's memory. It is checked where a dataset is checked, the API at
    submission and the trial that loads it (`edgetune.trainers.datasets.max_dataset_bytes`),
    which read it from the environment they share, as `PoolSettings`."""

    model_config = SettingsConfigDict(env_prefix="EDGETUNE_", extra="ignore")

    max_dataset_bytes: int = Field(
        default=2**31, ge=1 << 20, le=1 << 40,
        description="The most memory one dataset may take (inputs as float32, labels as "
                    "int64, both splits), generated or loaded: a spec asking for more is "
                    "refused with 422, a file holding more fails its trial (default 2 GiB).",
    )


class Settings(PoolSettings, DatasetSettings):
    """Every knob of the server and its workers (`EDGETUNE_*`, as `PoolSettings` and
    `DatasetSettings`). Paths are resolved when read."""

    env: Literal["development", "production"] = "development"
    data_dir: Path = Field(default=Path("edgetune-data"), description="SQLite file, artifacts.")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; defaults to SQLite in the data directory."
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=0, le=64, description="Worker processes `serve` starts.")
    job_lease_s: float = Field(default=60.0, ge=5, description="How long a job stays claimed.")
    poll_interval_s: float = Field(default=1.0, gt=0, le=60)
    latency_threads: int = Field(default=1, ge=1, le=256)
    latency_warmup: int = Field(default=10, ge=0, le=10_000)
    latency_min_repeats: int = Field(default=30, ge=1, le=1_000_000)
    latency_min_time_s: float = Field(default=0.2, ge=0, le=600)
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    max_upload_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024,
        description="The largest model `POST /api/v1/probes` accepts; every other request "
                    "body stays under `max_body_bytes`.",
    )
    upload_quota_bytes: int = Field(
        default=1 << 30, ge=1024,
        description="Bytes of uploaded probe models one tenant may hold at once; past it an "
                    "upload answers 413. Models no probe names are collected.",
    )
    upload_total_bytes: int = Field(
        default=16 << 30, ge=1024,
        description="Bytes of uploaded probe models all tenants together may hold; past it an "
                    "upload answers 413 (tokens of several tenants share this bound).",
    )
    upload_quota_count: int = Field(
        default=256, ge=1, le=1_000_000,
        description="Uploaded probe models one tenant may hold at once; past it an upload "
                    "answers 413.",
    )
    probe_max_live: int = Field(
        default=1000, ge=1, le=1_000_000,
        description="Ad-hoc probes one tenant may have waiting for an agent (pending or "
                    "leased) at once; past it `POST /probes` answers 429. One model asked with "
                    "many configurations counts once per probe.",
    )
    probe_max_input_elements: int = Field(
        default=1 << 25, ge=1, le=1 << 40,
        description="The most input elements (batch_size x input_shape) a probe may ask an "
                    "agent to build; more answers 422.",
    )
    latency_timeout_s: float = Field(
        default=120.0, gt=0, le=86_400,
        description="Wall-clock seconds a worker's own measurement (device `local`) may take "
                    "before its measuring process is killed and the trial fails.",
    )
    latency_memory_bytes: int = Field(
        default=4 << 30, ge=1 << 28,
        description="Address space (RLIMIT_AS) of a worker's measuring process (device "
                    "`local`, on the CPU).",
    )
    device_offline_after_s: float = Field(
        default=30.0, gt=0, le=86_400,
        description="A device without a heartbeat for this long shows offline.",
    )
    probe_lease_s: float = Field(
        default=60.0, gt=0, le=86_400,
        description="How long an agent holds a probe before another agent may take it over; "
                    "an agent renews it with each heartbeat while it measures, so keep it "
                    "several of the agents' heartbeats long.",
    )
    worker_trials: int | None = Field(
        default=None, ge=1, le=1024,
        description="The most trials one worker runs at once (its share of its machine); "
                    "unset: as many as a job's parallelism. Workers share a job's parallelism.",
    )
    # --- sharing workers between jobs and tenants (see edgetune/search/capacity.py) -----
    worker_max_trials: int = Field(
        default_factory=lambda: max(2, os.cpu_count() or 1), ge=1, le=1024,
        description="The most trial processes one worker runs at once, over all the jobs it "
                    "runs together (default: the machine's CPUs, at least 2).",
    )
    worker_spare_trials: int = Field(
        default=1, ge=0, le=1024,
        description="Of those, slots a worker keeps for jobs that run no trial yet, so that a "
                    "newly submitted job starts at once beside a big one (at most "
                    "worker_max_trials - 1 are kept).",
    )
    tenant_max_trials: int | None = Field(
        default=64, ge=1, le=100_000,
        description="The most trials of one tenant running at once, over every worker of the "
                    "database; unset: no limit but the workers'.",
    )
    probe_timeout_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="How long a trial waits for a registered device to measure its model "
                    "before it fails with the reason.",
    )
    probe_expire_s: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="How long a probe may go unmeasured after its request (no agent took it, "
                    "or its agents died) before it fails with the reason and its uploaded "
                    "model no longer counts against the quota. Keep it above "
                    "`probe_timeout_s`, which a trial waits.",
    )
    auth: bool = Field(
        default=True,
        description="Require a bearer token on every route but /health; off is allowed on "
                    "loopback addresses in development only.",
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="A secret the server installs at start as an admin token of tenant "
                    "`default` (deployments set it from a secret store).",
    )
    rate_limit_per_s: float = Field(
        default=100.0, ge=0, le=1_000_000,
        description="Requests per second one token may make to one API process (a token "
                    "bucket); 0 turns rate limiting off.",
    )
    rate_limit_burst: int = Field(
        default=400, ge=1, le=1_000_000,
        description="How many requests a token may make at once before the rate applies.",
    )
    ray_address: str | None = Field(
        default=None,
        description="Ray cluster for jobs on the ray backend: `host:6379` (its GCS; this "
                    "machine must be a node of it) or `ray://host:10001` (Ray Client, needs "
                    "`ray[client]`); unset starts a local Ray in the worker.",
    )

    # --- bounds on what one caller can make the API do (issue 15) ----------------------------
    max_spec_bytes: int = Field(
        default=256 * 1024, ge=1024, le=64 * 1024 * 1024,
        description="The largest JobSpec `POST /api/v1/jobs` accepts, in bytes of the body "
                    "(413 above).",
    )
    max_active_jobs_per_tenant: int = Field(
        default=100, ge=1, le=1_000_000,
        description="Queued and running jobs one tenant may have at once; a submission past "
                    "it answers 409 until one ends.",
    )
    max_jobs_page: int = Field(
        default=100, ge=1, le=1000,
        description="The largest `limit` of `GET /api/v1/jobs` (422 above).",
    )
    events_max_streams_per_token: int = Field(
        default=16, ge=1, le=100_000,
        description="Event streams (`GET /jobs/{id}/events`) one token may hold open on one "
                    "API process (429 above).",
    )
    events_max_streams: int = Field(
        default=256, ge=1, le=100_000,
        description="Event streams one API process holds open in all (429 above).",
    )
    events_min_interval_s: float = Field(
        default=0.5, ge=0.05, le=60,
        description="The shortest poll interval of an event stream: a smaller `interval_s` "
                    "is raised to it.",
    )
    auth_failures_per_s: float = Field(
        default=5.0, gt=0, le=1_000_000,
        description="Requests without a valid token one client address may make per second "
                    "(a token bucket) before its unknown tokens are refused with 429 unchecked.",
    )
    auth_failures_burst: int = Field(
        default=200, ge=1, le=1_000_000,
        description="Requests without a valid token one client address may make at once.",
    )
    predictor_max_graph_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024, le=4 * 1024**3,
        description="ONNX graphs larger than this are left out of a device's latency "
                    "predictor (reading one costs time and memory in the API).",
    )
    predictor_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="How long `GET /devices/{id}/predictor` waits for a fit before it answers "
                    "503 (the fit goes on, and a later request gets it).",
    )
    predictor_graph_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="How long reading one ONNX graph's features may take (in a child process "
                    "of the API, killed past it); the graph is then left out of the fit.",
    )
    orphan_study_grace_s: float = Field(
        default=60.0, ge=0, le=86_400,
        description="At start, the API deletes the studies made for a job whose row was never "
                    "stored (a server stopped in between) once they are still orphans this "
                    "much later.",
    )

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        if not self.auth and not is_loopback(self.host):
            raise ValueError(
                f"host is {self.host!r}, but authentication is off (EDGETUNE_AUTH=false): "
                "without it edgetune listens on loopback addresses only (127.0.0.1, ::1, "
                "localhost)"
            )
        if self.env == "production":
            if self.database_url is None:
                raise ValueError("in production, set EDGETUNE_DATABASE_URL explicitly")
            if not self.auth:
                raise ValueError("in production, authentication cannot be turned off")
        if self.admin_token is not None:
            secret = self.admin_token.get_secret_value()
            if not 32 <= len(secret) <= 256 or any(c.isspace() for c in secret):
                raise ValueError("admin_token must be 32-256 characters without spaces")
        return self

    @property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @property
    def layout(self) -> DataLayout:
        """The data directory's layout: artifacts, datasets, models, token..."""
        return DataLayout(self.resolved_data_dir)

    @property
    def url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.layout.database}"

    @property
    def token_file(self) -> Path:
        """Where a development server writes the token the SDK and CLI pick up."""
        return self.layout.token

    @property
    def artifact_dir(self) -> Path:
        return self.layout.artifacts
