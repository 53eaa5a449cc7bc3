"""What the REST API answers: one family of models per resource, shared by server and SDK."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edgetune.spec import JobSpec

JobStatusName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TrialStateName = Literal["running", "waiting", "complete", "pruned", "fail"]


class JobProgress(BaseModel):
    n_trials: int = Field(description="The trial budget.")
    complete: int = 0
    pruned: int = 0
    failed: int = Field(default=0, description="Trials that failed by their parameters.")
    running: int = 0
    retried: int = Field(
        default=0, description="Trials failed by the infrastructure (a worker stopped or died); "
        "run again, they do not use budget.",
    )

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed

    @classmethod
    def from_counts(cls, n_trials: int, counts: dict[str, int]) -> JobProgress:
        """From `storage.trials.trial_state_counts` for one study."""
        return cls(
            n_trials=n_trials,
            complete=counts.get("COMPLETE", 0),
            pruned=counts.get("PRUNED", 0),
            failed=counts.get("FAIL", 0),
            running=counts.get("RUNNING", 0),
            retried=counts.get("FAIL_INFRA", 0),
        )


class JobSummary(BaseModel):
    """A job as listed: everything but its spec (`GET /jobs/{id}` has that)."""

    id: str
    name: str
    status: JobStatusName
    study_name: str = Field(description="The job's Optuna study, on the service's database.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None
    progress: JobProgress


class JobPublic(JobSummary):
    spec: JobSpec


class JobsPublic(BaseModel):
    data: list[JobSummary] = Field(description="Without specs; read a job for its spec.")
    count: int = Field(description="How many jobs match, across all pages.")


class TrialPublic(BaseModel):
    number: int
    state: TrialStateName
    params: dict[str, Any]
    values: dict[str, float] | None = Field(description="Objective values by metric name.")
    metrics: dict[str, float] = Field(description="Everything the trial measured.")
    intermediate_values: dict[int, float] = Field(description="Validation accuracy by epoch.")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    error: str | None = None
    user_attrs: dict[str, Any] = Field(default_factory=dict)


class TrialsPublic(BaseModel):
    data: list[TrialPublic]
    count: int


# --- ask/tell ------------------------------------------------------------------------------
Metric = Annotated[str, Field(min_length=1, max_length=128)]


class AskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    client_id: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$",
        description="Who asks: the same client asking again gets its unfinished trial back.",
    )


class AskedTrialPublic(BaseModel):
    job_id: str
    number: int
    params: dict[str, Any]
    resumed: bool = Field(description="True when this is the client's unfinished trial again.")


class ReportCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    step: int = Field(ge=0, le=10_000_000, description="The epoch (or other step) reported.")
    values: dict[Metric, float] = Field(
        max_length=8, description="The objectives' values at this step, by objective name."
    )


class ReportPublic(BaseModel):
    should_stop: bool = Field(description="The job's pruner says stop: tell the trial pruned.")


class TellCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    state: Literal["complete", "pruned", "failed"] = "complete"
    values: dict[Metric, float] = Field(
        default_factory=dict, max_length=8,
        description="The objectives' final values by name; all of them when complete.",
    )
    metrics: dict[Metric, float] = Field(
        default_factory=dict, max_length=64, description="Anything else the trial measured.",
    )
    error: str | None = Field(default=None, max_length=4000, description="Why it failed.")


class ObjectivePublic(BaseModel):
    name: str
    direction: Literal["minimize", "maximize"]


class ParetoTrial(BaseModel):
    number: int
    params: dict[str, Any]
    values: dict[str, float]
    metrics: dict[str, float]
    rank: int = Field(description="0 on the Pareto front; feasible trials rank first.")
    crowding_distance: float | None = Field(
        description="Spread within the trial's front; null for a boundary point (infinite)."
    )
    hv_contribution: float | None = Field(
        default=None,
        description="Hypervolume only this trial adds to the feasible front; null off it.",
    )
    knee: bool = Field(default=False, description="The front's knee: the balanced trade-off.")
    feasible: bool
    violation: float = Field(description="Total constraint violation; 0 when feasible.")


class ParetoPublic(BaseModel):
    job_id: str
    objectives: list[ObjectivePublic]
    reference_point: dict[str, float] = Field(
        default_factory=dict,
        description="The hypervolume's reference point, per objective: given, or the worst "
        "value seen plus 10% of the range.",
    )
    hypervolume: float | None = Field(default=None, description="Of the feasible front.")
    data: list[ParetoTrial] = Field(description="By rank, then by the first objective.")
    count: int = Field(default=0, description="Trials selected, across all pages.")
    offset: int = 0
    limit: int = 100
    n_complete: int = Field(description="Completed trials ranked.")
    front_size: int


class HypervolumePoint(BaseModel):
    trial_number: int
    completed_at: datetime | None
    hypervolume: float = Field(description="Of the feasible front once this trial completed.")


class HypervolumePublic(BaseModel):
    job_id: str
    objectives: list[ObjectivePublic]
    reference_point: dict[str, float]
    data: list[HypervolumePoint] = Field(description="In the order trials completed.")


# --- devices and probes --------------------------------------------------------------------
DeviceStatusName = Literal["online", "offline"]
ProbeStatusName = Literal["pending", "leased", "done", "failed"]
AgentId = Annotated[str, Field(min_length=1, max_length=128, description="Who measures: the "
                               "agent's own id, the same for all its calls.")]


class DeviceCreate(BaseModel):
    """What an agent registers (or re-attaches to, by name) for its device."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    runtimes: list[str] = Field(
        default_factory=lambda: ["onnxruntime"], min_length=1, max_length=16,
        description="The runtimes the agent measures with, in its order of preference.",
    )
    hardware: dict[str, Any] = Field(
        default_factory=dict, description="What the agent found: CPU model, cores, memory, "
        "accelerator, library versions.",
    )
    threads: int = Field(default=1, ge=1, le=1024, description="Threads a measurement uses.")


class DevicePublic(BaseModel):
    id: str
    name: str
    runtimes: list[str]
    hardware: dict[str, Any]
    threads: int
    status: DeviceStatusName = Field(
        description="online while its agent heartbeats (within `device_offline_after_s`)."
    )
    last_heartbeat: datetime | None = None
    created_at: datetime


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


class ProbeResult(BaseModel):
    """A measurement, in milliseconds per inference of one batch; agents may add fields."""

    model_config = ConfigDict(extra="allow")

    p50_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    n: int = Field(description="Timed runs.")
    threads: int | None = Field(default=None, description="Threads the measurement used.")


class ProbeCreate(BaseModel):
    """The measurement an ad-hoc probe asks for; the model itself is the request body."""

    model_config = ConfigDict(extra="forbid")

    device: str = Field(min_length=1, max_length=128, description="The device's name or id.")
    runtime: str = "onnxruntime"
    input_shape: list[int] = Field(
        min_length=1, max_length=16,
        description="One input's shape without the batch dimension, e.g. [3, 224, 224].",
    )
    batch_size: int = Field(default=1, ge=1, le=65_536)
    threads: int | None = Field(default=None, ge=1, le=1024,
                                description="Default: the device's thread count.")
    warmup: int | None = Field(default=None, ge=0, le=10_000)
    min_repeats: int | None = Field(default=None, ge=1, le=1_000_000)
    min_time_s: float | None = Field(default=None, ge=0, le=600)


class ProbePublic(BaseModel):
    id: str
    device_id: str
    artifact_sha256: str
    runtime: str
    input_shape: list[int] = Field(description="Without the batch dimension.")
    batch_size: int
    threads: int
    warmup: int
    min_repeats: int
    min_time_s: float
    status: ProbeStatusName
    attempts: int = Field(description="Leases handed out so far.")
    lease_owner: str | None = Field(default=None, description="Of a done probe: who measured.")
    lease_expires_at: datetime | None = None
    result: ProbeResult | None = None
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class ProbesPublic(BaseModel):
    data: list[ProbePublic]
    count: int


class ProbeLease(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: AgentId


class ProbeComplete(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: AgentId
    result: dict[str, Any] = Field(description="p50_ms, p90_ms, mean_ms, std_ms (finite, "
                                   ">= 0) and n; anything else the agent adds is kept.")


class ProbeFail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: AgentId
    reason: str = Field(min_length=1, max_length=4000)


class PredictorPublic(BaseModel):
    """A device's latency predictor, fitted on its done probes, and its cross-validated error."""

    device_id: str
    kind: str = Field(description="The model: `additive` or `log-ridge`.")
    n_probes: int = Field(description="Done probes it learned from.")
    n_skipped: int = Field(description="Done probes left out: their artifact is gone or is "
                                       "not ONNX.")
    features: list[str] = Field(description="The graph features it uses.")
    folds: int = Field(description="Cross-validation folds the error comes from.")
    mape: float = Field(description="Mean absolute percentage error of p50, in %.")
    within_10pct: float = Field(description="Share of predictions within ±10% of p50.")
    spearman: float | None = Field(description="Rank correlation of predicted and measured "
                                               "p50; null when either is constant.")


# --- tokens --------------------------------------------------------------------------------
ScopeName = Literal["user", "agent", "admin"]


class TokenCreate(BaseModel):
    """A new token of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    scope: ScopeName = Field(description="user: searches; agent: a device's agent; admin: both, "
                                         "and tokens.")
    name: str = Field(default="", max_length=128, description="What the token is for.")


class TokenPublic(BaseModel):
    id: str
    tenant: str
    scope: ScopeName
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class TokenCreated(TokenPublic):
    token: str = Field(description="The secret: shown this once, stored only as a hash.")


class TokensPublic(BaseModel):
    data: list[TokenPublic]
    count: int


class HealthPublic(BaseModel):
    status: Literal["ok"]
    version: str
    database: str = Field(description="The database backend: sqlite or postgresql.")


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorPublic(BaseModel):
    detail: str | list[ErrorDetail]
