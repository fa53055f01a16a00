"""Processes and machines, and the DeepSpeed ZeRO config (a built-in name or a JSON path, read once here)."""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import ClassVar

from pydantic import Field, ValidationInfo, field_validator

from medscale.paths import shipped
from medscale.recipe.base import Section, is_saved


class DistSection(Section):
    DS_CONFIG_DIR: ClassVar[Path] = shipped("ds_configs")

    num_processes: int = Field(1, ge=1, description="processes (GPUs) on this machine")
    num_machines: int = Field(1, ge=1, description="machines (SLURM nodes, Ray hosts) with num_processes each")
    config: str | None = Field(None, description="accelerate config: a name in cluster/accelerate/ or a path")
    deepspeed: str | None = Field(
        None, description="DeepSpeed ZeRO config: zero2 | zero3 | zero3_offload (in ds_configs/) or a path to a "
                          "JSON; stored as an absolute path. The HF Trainer's own optimizer is used (torch AdamW)")

    @field_validator("deepspeed")
    @classmethod
    def _resolve_deepspeed(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or is_saved(info):
            return v
        builtins = sorted(p.stem for p in cls.DS_CONFIG_DIR.glob("*.json"))
        path = Path(os.path.expanduser(v))
        if path.suffix != ".json":
            if v not in builtins:
                close = difflib.get_close_matches(v, builtins, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"dist.deepspeed: unknown DeepSpeed config '{v}'{hint} (built-in: "
                                 f"{', '.join(builtins)}; or a path to a .json file)")
            path = cls.DS_CONFIG_DIR / f"{v}.json"
        if not path.is_file():
            raise ValueError(f"dist.deepspeed: {path} does not exist (built-in: {', '.join(builtins)})")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"dist.deepspeed: {path} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("zero_optimization"), dict):
            raise ValueError(f"dist.deepspeed: {path} has no zero_optimization section")
        return str(path.resolve())

    def deepspeed_config(self) -> dict:
        """The DeepSpeed JSON as written ("auto" values unfilled); {} without DeepSpeed."""
        return json.loads(Path(self.deepspeed).read_text(encoding="utf-8")) if self.deepspeed else {}

    def zero_stage(self) -> int:
        """ZeRO stage of dist.deepspeed (0 without DeepSpeed)."""
        stage = self.deepspeed_config().get("zero_optimization", {}).get("stage", 0)
        return stage if isinstance(stage, int) else 0

    def offloads(self) -> list[str]:
        """What dist.deepspeed moves off the accelerator: 'optimizer' and/or 'param' (to cpu or nvme)."""
        zero = self.deepspeed_config().get("zero_optimization", {})
        return [what for what in ("optimizer", "param")
                if (zero.get(f"offload_{what}") or {}).get("device", "none") not in ("none", None)]
