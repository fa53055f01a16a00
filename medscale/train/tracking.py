"""SwanLab experiment tracking that can never stop a training run.

Rank 0 only. `cloud` without an API key becomes `offline` (logs under the output dir,
uploadable later with `swanlab sync`); a failed init falls back to offline, then to
nothing; a failing log call is reported once and ignored. The key itself is never printed.

SwanLab is never handed what may hold a credential: its git probe (the remote URL can embed a token), its runtime
probe (the full command line) and its package list (private index URLs) are off, and the log folder is readable by
its owner only.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from medscale.recipe import Recipe

log = logging.getLogger("medscale.tracking")


def has_api_key() -> bool:
    if os.environ.get("SWANLAB_API_KEY"):
        return True
    return any(p.is_file() for p in (Path.cwd() / ".swanlab" / ".netrc", Path.home() / ".swanlab" / ".netrc"))


class GuardedCallback(TrainerCallback):
    """Delegates every Trainer event to `inner`; an exception disables it instead of killing the run."""

    def __init__(self, inner: TrainerCallback):
        self.inner, self.broken = inner, False

    def __getattribute__(self, name):
        if not name.startswith("on_"):
            return object.__getattribute__(self, name)

        def call(*args, **kw):
            if self.broken:
                return None
            try:
                return getattr(self.inner, name)(*args, **kw)
            except Exception as e:  # tracking must never take training down
                self.broken = True
                log.warning("SwanLab logging failed (%s: %s); training continues without it", type(e).__name__, e)
            return None

        return call


def start_swanlab(recipe: Recipe, rank: int) -> tuple[TrainerCallback | None, str | None]:
    """(callback, log dir) for rank 0, or (None, None) when tracking is off or impossible."""
    cfg = recipe.track.swanlab
    if cfg is None or cfg.mode == "disabled" or rank != 0:
        return None, None
    try:
        import swanlab
        from swanlab.integration.transformers import SwanLabCallback
    except ImportError:
        log.warning("track.swanlab is set but swanlab is not installed; no tracking")
        return None, None
    mode = cfg.mode
    if mode == "cloud" and not has_api_key():
        log.warning("no SwanLab API key (SWANLAB_API_KEY or `swanlab login`): logging offline; "
                    "upload later with `swanlab sync`")
        mode = "offline"
    logdir = Path(recipe.train.output_dir) / "swanlog"
    logdir.mkdir(parents=True, exist_ok=True)
    logdir.chmod(0o700)
    settings = swanlab.Settings(probe=swanlab.Settings.Probe(git=False, runtime=False, requirements=False,
                                                             conda=False))
    init = dict(project=cfg.project, workspace=cfg.workspace, log_dir=str(logdir), settings=settings,
                experiment_name=cfg.experiment or recipe.track.run_name or recipe.name,
                config={"recipe": recipe.model_dump(mode="json"), "fingerprint": recipe.fingerprint()})
    for attempt in dict.fromkeys([mode, "offline"]):
        try:
            swanlab.init(mode=attempt, **init)
            return GuardedCallback(SwanLabCallback()), str(logdir)
        except Exception as e:
            log.warning("SwanLab init in %s mode failed (%s: %s)", attempt, type(e).__name__, e)
    log.warning("SwanLab unavailable; training continues without tracking")
    return None, None


def finish_swanlab() -> None:
    try:
        import swanlab

        swanlab.finish()
    except Exception as e:
        log.warning("SwanLab finish failed (%s); the offline log stays on disk", e)
