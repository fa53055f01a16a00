"""Experiment tracking: the run's name, the trackers it reports to, and SwanLab's settings."""
from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, field_serializer, model_validator

from medscale.recipe.base import Section

# Each tracker: the modules that make it work (any one of them), and the command that installs it.
TRACKER_INSTALL = {"swanlab": (("swanlab",), "pip install swanlab"),
                   "tensorboard": (("tensorboard", "tensorboardX"), "pip install tensorboard"),
                   "mlflow": (("mlflow",), "pip install mlflow-skinny"),
                   "wandb": (("wandb",), "pip install wandb"),
                   "trackio": (("trackio",), "pip install trackio")}
TRACKERS = tuple(TRACKER_INSTALL)
Tracker = Literal[TRACKERS]  # type: ignore[valid-type]  # the names, spelled once


class SwanLab(Section):
    project: str = Field(description="SwanLab project the run is logged to")
    experiment: str | None = Field(None, description="experiment name (default: track.run_name or the recipe name)")
    workspace: str | None = Field(None, description="SwanLab workspace (default: your own)")
    mode: Literal["cloud", "local", "offline", "disabled"] = Field(
        "cloud", description="cloud falls back to offline when no API key is configured")


class TrackSection(Section):
    run_name: str | None = Field(None, description="name of the run in logs and trackers (default: the recipe name)")
    report_to: list[Tracker] = Field(
        default_factory=lambda: ["swanlab"],
        description="trackers rank 0 logs to, any of swanlab, tensorboard, mlflow, wandb, trackio; local files by "
                    "default: tensorboard event files in <output_dir>/tensorboard, an MLflow store in "
                    "<output_dir>/mlflow, W&B offline in <output_dir>/wandb; [] logs to none")
    project: str | None = Field(None, description="the MLflow experiment, W&B and trackio project (default: the "
                                                  "recipe name); SwanLab's is track.swanlab.project")
    mlflow_uri: str | None = Field(None, description="an MLflow tracking server to log to instead of the local store "
                                                     "(e.g. http://mlflow.lab:5000); its password is never logged")
    wandb_mode: Literal["offline", "online"] = Field(
        "offline", description="online uploads as it logs (needs WANDB_API_KEY); offline: `wandb sync` later")
    swanlab: SwanLab | None = Field(None, description="SwanLab's project and mode; SwanLab logs when report_to names "
                                                      "it and this is set (null: off)")

    @field_serializer("report_to")
    def _as_it_acts(self, value: list[str]) -> list[str]:
        """SwanLab with null settings is off (the default), and is written so: a resolved recipe reloads the same."""
        return [t for t in value if t != "swanlab" or self.swanlab is not None]

    @model_validator(mode="after")
    def _swanlab_named(self) -> "TrackSection":
        if "report_to" in self.model_fields_set and "swanlab" in self.report_to and self.swanlab is None:
            raise ValueError("track.report_to names swanlab but track.swanlab is null: set "
                             "track.swanlab={project: NAME} or drop swanlab from track.report_to")
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"track.report_to names a tracker twice: {self.report_to}")
        return self

    def tracker_problems(self) -> list[str]:
        """The trackers this run logs to that are not installed here, each with the command that installs it."""
        return [f"track.report_to names {name}, which is not installed: {TRACKER_INSTALL[name][1]} (or drop it "
                f"from track.report_to)" for name in self.trackers()
                if not any(importlib.util.find_spec(m) for m in TRACKER_INSTALL[name][0])]

    def trackers(self) -> list[str]:
        """The trackers this run logs to: report_to, less SwanLab where its settings are null."""
        return [t for t in self.report_to if t != "swanlab" or (self.swanlab and self.swanlab.mode != "disabled")]
