"""A job's record in its output dir: the file names, atomic writes, the journal and the run summary.

The output dir is the source of truth; the registry is an index of it plus live heartbeats, rebuilt from here
by `medscale jobs sync` whenever it was unreachable or lost.

- `medscale_job.json` (the journal): the job (name, kind, launcher and its options, fingerprint), every attempt,
  and every step that ever had a verified checkpoint (so a job whose checkpoints were all damaged is never
  silently restarted from zero). Rewritten atomically at each attempt's start and end and at each save.
- `recipe.resolved.yaml`: the recipe of the newest attempt (each checkpoint keeps a copy of its own).
- `run_summary.json`: what a finished run tells its user (the typed RunSummary below).
"""
from __future__ import annotations

import json
import os
import shlex
import tempfile
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer

from medscale.jobs.errors import JobStateError
from medscale.jobs.kinds import JobKind
from medscale.paths import PRIVATE, plain_mode  # noqa: F401  (PRIVATE: the record's writers import it here)
from medscale.registry.records import AttemptInfo, JobSpec
from medscale.verdicts import RunVerdicts

JOURNAL = "medscale_job.json"
RECIPE_FILE = "recipe.resolved.yaml"
SUMMARY = "run_summary.json"
LOSS_PLOT = "loss.png"
TRAINER_STATE = "trainer_state.json"
JOURNAL_FORMAT = 2


# --------------------------------------------------------------------------- atomic writes

def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Temp file + fsync + rename + directory fsync: a crash leaves the old file or the new one, never half. A
    failed write (disk full) leaves no temp file behind. `mode` defaults to what open() would give."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, plain_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(path: Path, obj, mode: int | None = None) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False), mode)


# --------------------------------------------------------------------------- the journal

@dataclass
class Journal:
    """`medscale_job.json`: the job and its attempts, as the output dir records them."""

    name: str
    output_dir: str
    kind: JobKind = JobKind.TRAIN
    launcher: str = "python"
    launcher_options: dict = field(default_factory=dict)
    _: KW_ONLY
    fingerprint: str = ""
    verified_steps: list[int] = field(default_factory=list)  # every step that ever had a verified checkpoint
    attempts: list[AttemptInfo] = field(default_factory=list)
    stopped_early: str | None = None  # why a sweep's scheduler ended this job for good (never resumed)

    def __post_init__(self):
        self.kind = JobKind(self.kind)  # a journal's plain value, or an error

    @property
    def last(self) -> AttemptInfo | None:
        return self.attempts[-1] if self.attempts else None

    def spec(self, recipe_yaml: str) -> JobSpec:
        return JobSpec(self.name, self.output_dir, self.launcher, recipe_yaml, self.fingerprint, kind=self.kind,
                       launcher_options=self.launcher_options)

    def to_json(self) -> dict:
        return {"format": JOURNAL_FORMAT, "name": self.name, "kind": self.kind.value, "output_dir": self.output_dir,
                "launcher": self.launcher, "launcher_options": self.launcher_options,
                "fingerprint": self.fingerprint, "verified_steps": self.verified_steps,
                "attempts": [a.to_json() for a in self.attempts],
                **({"stopped_early": self.stopped_early} if self.stopped_early else {})}

    @classmethod
    def from_json(cls, d: dict) -> "Journal":
        return cls(name=d["name"], output_dir=d.get("output_dir", ""), kind=d.get("kind", JobKind.TRAIN),
                   launcher=d.get("launcher", "python"), launcher_options=d.get("launcher_options") or {},
                   fingerprint=d.get("fingerprint", ""), verified_steps=list(d.get("verified_steps") or []),
                   attempts=[AttemptInfo.from_json(a) for a in d.get("attempts", [])],
                   stopped_early=d.get("stopped_early"))

    def save(self) -> None:
        write_json_atomic(Path(self.output_dir) / JOURNAL, self.to_json())


def read_journal(output_dir: str | Path) -> Journal | None:
    """The journal of an output dir, or None when it has none (not a medscale output dir, or nothing ran there)."""
    path = Path(output_dir) / JOURNAL
    if not path.is_file():
        return None
    try:
        return Journal.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # not JSON, or JSON that is no journal
        why = f"{type(e).__name__}: {e}".splitlines()[0]
        raise JobStateError(f"{path} is not a readable job record ({why}): restore it, or move it aside "
                            f"(mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bad')}) and run again: it "
                            f"resumes from the newest verified checkpoint") from None


def find_output_dirs(root: Path, depth: int = 4) -> list[Path]:
    """Every output dir (a folder holding a journal) under `root`, at most `depth` levels down (runs/NAME,
    runs/sweeps/SWEEP/TRIAL, ...); a checkpoint folder is never descended into."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("checkpoint-"):
            continue
        if (entry / JOURNAL).is_file():
            found.append(entry)
        elif depth > 1:
            found += find_output_dirs(entry, depth - 1)
    return found


def trainer_log(output_dir: str | Path) -> list[dict]:
    """The Trainer's log history of a job: from the newest `trainer_state.json` among the output dir (written at the
    end) and its checkpoints (a run that has not finished), [] when there is none."""
    best: tuple[int, list] = (-1, [])
    out = Path(output_dir)
    for path in [out / TRAINER_STATE, *out.glob(f"checkpoint-*/{TRAINER_STATE}")]:
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(state, dict) and state.get("global_step", -1) > best[0]:
            best = (state["global_step"], list(state.get("log_history") or []))
    return best[1]


# --------------------------------------------------------------------------- the run summary

class AsWritten(BaseModel):
    """Written back as it was read or built: a field a file of an older version did not hold stays absent (not a
    default), so a summary or plan read and saved again keeps its layout."""

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        fields = type(self).model_fields
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set or k not in fields}


class SourceCount(AsWritten):
    """One data source's records after sampling, and the bad records skipped in it."""

    model_config = ConfigDict(extra="forbid")

    records: int
    bad_records: int = 0


class SplitStats(AsWritten):
    """A split's data as tokenizing counted it (medscale.data.pipeline): what data.max_length and data.truncation
    dropped or cut, the tokens, and the packing where it packs. Keys a newer pipeline counts are kept as read."""

    model_config = ConfigDict(extra="allow")

    records: int = 0
    kept: int = 0
    dropped: int = 0
    truncated: int = 0
    max_length: int | None = None
    truncation: str = "drop"
    tokens: int = 0
    max_tokens: int = 0
    mean_tokens: float = 0.0
    label_tokens: int = 0
    bad_records: int = 0
    formats: dict[str, int] = {}
    sources: list[SourceCount] | None = None
    no_reasoning_dropped: int = 0
    packs: int | None = None
    pack_tokens: int | None = None
    packing_efficiency: float | None = None
    samples_per_pack: float | None = None


class RunData(AsWritten):
    """The data a run trained on: each split's counts and the tokenized cache it loaded."""

    model_config = ConfigDict(extra="allow")

    train: SplitStats | None = None
    eval: SplitStats | None = None
    cache: str | None = None

    def splits(self) -> list[tuple[str, SplitStats]]:
        return [(name, split) for name, split in (("train", self.train), ("eval", self.eval)) if split is not None]


class RunPaths(AsWritten):
    """Where a finished run's files are."""

    model_config = ConfigDict(extra="forbid")

    adapter: str
    checkpoints: list[str] = []
    trainer_state: str
    loss_plot: str
    swanlab: str | None = None


class RunSummary(RunVerdicts):
    """`run_summary.json`: what a finished run tells its user, typed so every reader sees the same fields: its
    benchmark verdicts and forgetting guard (`benchmarks`, `control`) are RunVerdicts'. Throughput fields are absent
    on CPU where they cannot be measured (peak memory, MFU)."""

    model_config = ConfigDict(extra="forbid")

    recipe: str
    fingerprint: str
    host: str
    attempt: int
    resumed_from: str | None = None
    world_size: int
    steps_per_rank: list[int]
    global_step: int
    epochs: float
    train_runtime_s: float | None = None
    wall_s: float
    loss_first: float | None = None
    loss_last: float | None = None
    train_loss_mean: float | None = None
    eval_loss_base: float | None = None
    eval_loss_final: float | None = None
    eval_loss_best: float | None = None
    eval_loss_change_pct: float | None = None
    verdict: str
    trainable_params: int
    total_params: int
    data: RunData
    tokens_per_s: float | None = None
    tokens_per_s_per_device: float | None = None
    samples_per_s: float | None = None
    peak_mem_alloc_gb: float | None = None
    peak_mem_reserved_gb: float | None = None
    mfu: float | None = None
    first_step_s: float | None = None
    finished_from_checkpoint: str | None = None  # a run killed after its last save was finished from it
    paths: RunPaths

    def save(self, output_dir: Path) -> None:
        write_text_atomic(output_dir / SUMMARY, self.model_dump_json(indent=2))

    @classmethod
    def load(cls, output_dir: str | Path) -> "RunSummary | None":
        """The summary of a finished run (this version's or the previous one's); None before it finished, or for a
        job of no output dir ("")."""
        path = Path(output_dir) / SUMMARY
        if not output_dir or not path.is_file():
            return None
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as e:
            first = e.errors()[0]
            why = ".".join(map(str, first["loc"])) + (": " if first["loc"] else "") + first["msg"]
            why += f" and {e.error_count() - 1} more" if e.error_count() > 1 else ""
            raise JobStateError(f"{path} is not a readable run summary ({why}): restore it, or move it aside "
                                f"(mv {shlex.quote(str(path))} {shlex.quote(str(path) + '.bad')}); nothing else "
                                f"of the job depends on it") from None
