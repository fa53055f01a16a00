"""Experiment tracking: the run's name and SwanLab."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from medscale.recipe.base import Section


class SwanLab(Section):
    project: str = Field(description="SwanLab project the run is logged to")
    experiment: str | None = Field(None, description="experiment name (default: track.run_name or the recipe name)")
    workspace: str | None = Field(None, description="SwanLab workspace (default: your own)")
    mode: Literal["cloud", "local", "offline", "disabled"] = Field(
        "cloud", description="cloud falls back to offline when no API key is configured")


class TrackSection(Section):
    run_name: str | None = Field(None, description="name of the run in logs and trackers (default: the recipe name)")
    swanlab: SwanLab | None = Field(None, description="log to SwanLab (null: off)")
