"""The metric a sweep's trials are ranked by: one typed value from the sweep file (`metric:`) or `sweep show
--metric` to the leaderboard that sorts on it, and the eval loss ASHA stops trials on; never a bare name compared
where it is used."""
from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_serializer, model_validator


class MetricKind(str, Enum):
    """What a metric name measures, which decides its direction and how its values read."""

    EVAL_LOSS = "eval_loss"  # a trial's last held-out loss (a base's: its trials' step-0 loss)
    CONTROL = "control"  # the forgetting guard's regression of the control set
    BENCHMARK = "benchmark"  # accuracy on a benchmark, named by its name or path

    def __str__(self) -> str:
        return self.value


class SweepMetric(BaseModel):
    """A ranking metric: `eval_loss`, `control`, or a benchmark. Written as its name (the sweep file's layout)."""

    model_config = ConfigDict(frozen=True)

    name: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, v):
        if isinstance(v, str) and not v.strip():
            raise ValueError("empty: name eval_loss, control or a benchmark")
        return {"name": v} if isinstance(v, str) else v

    @model_serializer
    def _as_name(self) -> str:
        return self.name

    @property
    def kind(self) -> MetricKind:
        return MetricKind(self.name) if self.name in (MetricKind.EVAL_LOSS, MetricKind.CONTROL) \
            else MetricKind.BENCHMARK

    @property
    def lower_is_better(self) -> bool:
        return self.kind is not MetricKind.BENCHMARK

    @property
    def mode(self) -> str:
        """Ray Tune's word for the direction."""
        return "min" if self.lower_is_better else "max"

    @property
    def heading(self) -> str:
        """The leaderboard's column for it."""
        return {MetricKind.EVAL_LOSS: "eval loss", MetricKind.CONTROL: "control regression"}.get(
            self.kind, f"{self.name} acc %")

    def measures(self, benchmark: str) -> bool:
        """Whether a stored result's benchmark (a name or a file path) is this metric's."""
        return benchmark == self.name or Path(benchmark).stem == self.name or benchmark.endswith(f"/{self.name}")

    @classmethod
    def of_definition(cls, definition_yaml: str) -> "SweepMetric":
        """The metric a sweep definition the registry kept names: eval_loss where it names none, or where the text
        (an older version's) no longer reads."""
        import yaml

        try:
            return _Named.model_validate(yaml.safe_load(definition_yaml) or {}).metric or EVAL_LOSS
        except (yaml.YAMLError, ValidationError):
            return EVAL_LOSS


EVAL_LOSS = SweepMetric(name=MetricKind.EVAL_LOSS.value)


class _Named(BaseModel):
    """The one key of a stored sweep definition the leaderboard reads (the rest may be any version's)."""

    metric: SweepMetric | None = None
