"""What goes into the registry and what comes out of it: plain dataclasses, so callers never handle ORM rows or
untyped dicts. Writes take JobSpec / AttemptInfo / CheckpointInfo / ResultInfo / MetricRow / SweepInfo; reads
return JobView (with its AttemptView and CheckpointView lists), ResultView, MetricRow and SweepView. `to_dict()` is
the JSON shape of `medscale jobs ... --json`."""
from __future__ import annotations

import math
from dataclasses import KW_ONLY, asdict, dataclass, field
from datetime import datetime, timezone

from medscale.jobkind import JobKind
from medscale.status import AttemptStatus, JobStatus
from medscale.verdicts import ResultRole


def utcnow() -> datetime:
    """Naive UTC (SQLite has no time zones, and one convention beats two)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


@dataclass
class JobSpec:
    """A job's identity (name + output dir) and what was asked of it."""

    name: str
    output_dir: str
    launcher: str
    recipe_yaml: str
    fingerprint: str
    _: KW_ONLY
    kind: JobKind = JobKind.TRAIN
    launcher_options: dict = field(default_factory=dict)  # what `jobs resume` asks the launcher for again

    def __post_init__(self):
        self.kind = JobKind(self.kind)  # from a journal, a registry row or a caller: the enum, or an error


@dataclass
class AttemptInfo:
    """One execution of a job. `launcher_ids` holds whatever ids its launcher has (slurm_job_id, ray_job_id, ...)."""

    number: int
    launcher: str
    host: str
    pid: int
    fingerprint: str
    _: KW_ONLY
    world_size: int = 1
    launcher_ids: dict = field(default_factory=dict)
    resumed_from: str | None = None
    status: AttemptStatus = AttemptStatus.RUNNING
    step: int = 0
    exit_reason: str | None = None
    recipe_changes: list[str] = field(default_factory=list)  # resume-safe keys changed since the checkpoint
    started_at: datetime = field(default_factory=utcnow)
    ended_at: datetime | None = None

    def __post_init__(self):
        self.status = AttemptStatus(self.status)  # from a journal, a registry row or a caller: the enum, or an error

    def to_json(self) -> dict:
        return {k: (iso(v)[:-1] if isinstance(v, datetime) else v.value if k == "status" else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "AttemptInfo":
        """From a journal entry; journals of format 1 kept SLURM/Ray ids in columns of their own."""
        d = dict(d)
        ids = dict(d.pop("launcher_ids", None) or {})
        for legacy in ("slurm_job_id", "ray_job_id"):
            if d.get(legacy):
                ids[legacy] = d[legacy]
            d.pop(legacy, None)
        for k in ("started_at", "ended_at"):
            if d.get(k):
                d[k] = datetime.fromisoformat(d[k].rstrip("Z"))
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known}, launcher_ids=ids)


@dataclass(kw_only=True)
class CheckpointInfo:
    step: int
    path: str
    verified: bool
    attempt_number: int
    metrics: dict = field(default_factory=dict)
    size_bytes: int = 0
    created_at: datetime = field(default_factory=utcnow)


@dataclass(kw_only=True)
class AttemptView:
    number: int
    status: AttemptStatus  # LOST when a running attempt stopped beating or its process is gone
    launcher: str
    host: str
    pid: int
    world_size: int
    launcher_ids: dict
    resumed_from: str | None
    step: int
    fingerprint: str
    exit_reason: str | None
    recipe_changes: list[str]
    started_at: str | None
    heartbeat_at: str | None
    ended_at: str | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class CheckpointView:
    step: int
    path: str
    verified: bool
    attempt: int
    metrics: dict
    size_bytes: int
    created_at: str | None
    deleted: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(kw_only=True)
class JobView:
    id: int
    name: str
    kind: JobKind
    output_dir: str
    status: JobStatus | AttemptStatus  # AttemptStatus.LOST: running, but its attempt went silent
    launcher: str
    launcher_options: dict
    fingerprint: str
    attempts: int
    step: int
    latest_checkpoint: str | None
    latest_metrics: dict
    cancel_requested: bool
    created_at: str | None
    updated_at: str | None
    attempt_list: list[AttemptView] = field(default_factory=list)
    checkpoints: list[CheckpointView] = field(default_factory=list)
    recipe_yaml: str = ""

    def to_dict(self, brief: bool = False) -> dict:
        d = asdict(self)
        if brief:
            for k in ("attempt_list", "checkpoints", "recipe_yaml"):
                d.pop(k)
        return d


@dataclass(kw_only=True)
class ResultInfo:
    """One measurement to record (see models.Result)."""

    model: str
    base_path: str
    benchmark: str
    fingerprint: str
    mode: str
    n: int
    role: ResultRole = ResultRole.TUNED
    adapter_path: str | None = None
    kind: str = "benchmark"
    shots: int = 0
    step: int | None = None
    checkpoint: str | None = None
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    loss: float | None = None
    figures: dict = field(default_factory=dict)
    outcomes: list = field(default_factory=list)

    def __post_init__(self):
        self.role = ResultRole(self.role)  # from a registry row or a caller: the enum, or an error


@dataclass
class ResultView(ResultInfo):
    id: int = 0
    job_id: int | None = None
    created_at: str | None = None

    def to_dict(self, outcomes: bool = False) -> dict:
        d = asdict(self)
        if not outcomes:
            d.pop("outcomes")
        return d


METRIC_COLUMNS = ("loss", "eval_loss", "learning_rate", "grad_norm", "epoch")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class MetricRow:
    """What a run logged at one optimizer step (models.Metric). A non-finite value (a diverged loss) is stored as
    missing, and named in `values["nonfinite"]`."""

    step: int
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    _: KW_ONLY
    epoch: float | None = None
    values: dict = field(default_factory=dict)

    @classmethod
    def from_log(cls, step: int, logs: dict) -> "MetricRow":
        """A Trainer log entry (`on_log`'s logs, or a `trainer_state.json` log_history entry) as a row: the known
        figures in their columns, every other number in `values`; text and nested values are left out."""
        row, nonfinite = cls(step=int(step)), []
        for k, v in logs.items():
            if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not _finite(v):
                nonfinite.append(k)
            elif k in METRIC_COLUMNS:
                setattr(row, k, float(v))
            else:
                row.values[k] = v
        if nonfinite:
            row.values["nonfinite"] = nonfinite
        return row

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SweepBase:
    """A base model a sweep's fine-tunes are ranked against: an entry of a sweep row's `bases`."""

    label: str
    path: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class TrialCell:
    """A trial's cell of the grid as a sweep row keeps it (its `cell`, and each entry of `grid`): the trial's label,
    base recipe and overrides, its label on each axis, its note and the base model it is ranked against. A cell an
    older version (or a hand) wrote reads with these defaults."""

    label: str = ""
    recipe: str = ""
    overrides: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    note: str | None = None
    base: str = ""

    @classmethod
    def of(cls, stored: dict) -> "TrialCell":
        return cls(**{k: v for k, v in stored.items() if k in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SweepInfo:
    """A sweep as it is stored: its definition (YAML as given), the expanded grid (a TrialCell's JSON per trial)
    and the base models it is ranked against (a SweepBase's JSON each)."""

    name: str
    definition_yaml: str
    grid: list = field(default_factory=list)
    bases: list = field(default_factory=list)


@dataclass
class TrialView:
    label: str
    cell: dict
    error: str | None
    job: JobView

    @property
    def trial_cell(self) -> TrialCell:
        """`cell` (the row's JSON, as `to_dict` shows it) typed."""
        return TrialCell.of(self.cell)

    def to_dict(self) -> dict:
        return {"label": self.label, "cell": self.cell, "error": self.error, "job": self.job.to_dict(brief=True)}


@dataclass(kw_only=True)
class SweepView(SweepInfo):
    id: int = 0
    created_at: str | None = None
    updated_at: str | None = None
    trials: list[TrialView] = field(default_factory=list)

    def base_models(self) -> list[SweepBase]:
        """`bases` (the row's JSON) typed."""
        return [SweepBase(**b) for b in self.bases]

    def to_dict(self) -> dict:
        return {"id": self.id, "name": self.name, "grid": self.grid, "bases": self.bases,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "trials": [t.to_dict() for t in self.trials], "definition_yaml": self.definition_yaml}
