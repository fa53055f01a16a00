"""`run_plan.json`: what pre-flight decided for one launch of a job, so its workers read it instead of deciding again.

Beside the journal in the output dir: the resolved recipe and its fingerprint, the model's folder, the memory plan's
decisions (recompute, packed token budget), the data manifest (files, formats, counts, drops, and the fingerprint that
names its tokenized cache) and the dist context. The local launcher writes it before it starts the processes (its
pre-flight ran on the host they train on); a run started without it (`run()` in-process, `accelerate launch -m
medscale.train` by hand, a SLURM or Ray worker) decides the same once itself and records it here. Plain data,
torch-free. PRIVATE: it holds the resolved recipe.
"""
from __future__ import annotations

import socket
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from medscale.dist import DistContext
from medscale.jobs.record import PRIVATE, AsWritten, SplitStats, write_text_atomic

RUN_PLAN = "run_plan.json"


class MemoryPlan(BaseModel):
    """medscale.plan.Decision as data: what the workers configure from, without planning again."""

    model_config = ConfigDict(extra="forbid")

    gpu_mem_gb: float | None  # the GPU planned for; None: none there, memory is not the limit
    gpus: int
    recompute_layers: int | None  # the first decoder layers recomputed: None = all, 0 = none
    token_budget: int | None  # tokens per packed row; None when the recipe does not pack
    problems: list[str] = []
    micro_batch: int | None = None  # samples per micro-batch and micro-batches per step as decided (None: the
    accumulation: int | None = None  # recipe's); merged where train.merge_accumulation=auto and the plan fits them
    batch_note: str = ""  # that decision and why, for the run's log
    components: dict | None = None  # the plan, component by component (medscale.plan.Plan.to_dict), where made

    @property
    def recompute(self) -> bool:
        return self.recompute_layers != 0

    def batch(self) -> tuple[int, int] | None:
        """(micro-batch, accumulation) for TrainingArguments; None: the recipe's."""
        return (self.micro_batch, self.accumulation) if self.micro_batch else None


class SourceFile(AsWritten):
    """One data source as pre-flight read it: its records and bad records where tokenizing counted them (a cache
    entry written before they were kept has neither)."""

    model_config = ConfigDict(extra="forbid")

    group: str  # data.sources or data.eval_sources
    path: str
    format: str
    records: int | None = None
    bad_records: int | None = None


class DataManifest(BaseModel):
    """The data as pre-flight read and tokenized it: the run loads `cache` (named by `fingerprint`: files,
    tokenizer, options and token budget) instead of tokenizing again."""

    model_config = ConfigDict(extra="forbid")

    fingerprint: str
    cache: str
    files: list[SourceFile]
    splits: dict[str, SplitStats]  # train, and eval where there is one

    @classmethod
    def of(cls, recipe, built) -> "DataManifest":
        """The tokenized data (medscale.data.pipeline.SFTData, cached) as the plan records it."""
        files, counted = [], source_counts(built.stats)
        for group, sources in (("data.sources", recipe.data.sources), ("data.eval_sources", recipe.data.eval_sources)):
            per = counted.get(group) or [{}] * len(sources)
            files += [SourceFile(group=group, path=s.path, format=s.format, **c) for s, c in zip(sources, per)]
        return cls(fingerprint=built.cache.name, cache=str(built.cache), files=files,
                   splits={k: v for k, v in built.stats.items() if isinstance(v, dict)})


def source_counts(stats: dict) -> dict:
    """Records and bad records of each source, as tokenizing counted them ({group: per source}); a group is missing
    from a cache entry written before they were kept (then it is read again)."""
    return {"data.sources": stats["train"].get("sources"), "data.eval_sources": stats.get("eval", {}).get("sources")}


class RunPlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: int = 1
    launch: str | None = None  # the launch it was decided for (its LaunchInfo.launched_at), None: not yet written
    host: str
    recipe: str  # the resolved recipe, YAML
    fingerprint: str
    model_dir: str  # the folder the model and its tokenizer load from, found once (model.resolve)
    memory: MemoryPlan
    data: DataManifest | None = None  # None until the data is tokenized (a worker that decides fills it in)
    dist: DistContext

    @classmethod
    def decided_here(cls, recipe, model_dir: Path, memory: MemoryPlan, data: DataManifest | None = None
                     ) -> "RunPlan":
        return cls(host=socket.gethostname(), recipe=recipe.to_yaml(), fingerprint=recipe.fingerprint(),
                   model_dir=str(model_dir), memory=memory, data=data, dist=DistContext.planned(recipe.dist))

    def made_for(self, fingerprint: str, launch: str | None) -> bool:
        """Decided for this launch of this recipe, on this host: else a worker decides for itself."""
        return (launch is not None and self.launch == launch and self.fingerprint == fingerprint
                and self.host == socket.gethostname())

    def save(self, output_dir: str | Path, launch: str | None) -> None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.launch = launch
        write_text_atomic(out / RUN_PLAN, self.model_dump_json(indent=2), mode=PRIVATE)

    @classmethod
    def load(cls, output_dir: str | Path) -> "RunPlan | None":
        """The output dir's plan; None when there is none or it cannot be read (a worker then decides itself)."""
        path = Path(output_dir) / RUN_PLAN
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
