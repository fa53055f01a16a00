"""Where medscale's shipped files live: `ds_configs/`, `cluster/` and `slurm/` are top-level folders of the
checkout (the design card's layout), and packaged inside `medscale/` in a wheel or a non-editable install
(pyproject maps them to medscale.ds_configs, medscale.cluster, medscale.slurm). Code asks here, never builds a
path relative to the source tree."""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def shipped(*parts: str) -> Path:
    """`shipped("ds_configs", "zero3.json")`: the installed copy if there is one, else the checkout's."""
    installed = _PACKAGE.joinpath(*parts)
    return installed if installed.exists() else _PACKAGE.parent.joinpath(*parts)
