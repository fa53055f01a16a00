"""Experiment tracking (`track.report_to`) that can never stop a training run.

Rank 0 only, local files unless told otherwise: TensorBoard event files in <output_dir>/tensorboard, an MLflow store
in <output_dir>/mlflow (SQLite: MLflow's plain-file store refuses new runs since 3.x), W&B offline in
<output_dir>/wandb, trackio's local database, SwanLab offline when it has no API key. A tracker that fails to start
is skipped with a warning, one that fails to log is reported once and ignored. Each gets the same scrubbed
parameters (the resolved recipe) and tags (recipe, fingerprint, job, attempt); medscale's own callbacks log to
them, so the Trainer's `report_to` stays "none".

Nothing handed to a tracker may hold a credential: `scrub` masks passwords in URLs, known token shapes and the value
of any key named like a secret. SwanLab's git probe (the remote URL can embed a token), its runtime probe (the full
command line) and its package list (private index URLs) are off, and its log folder is readable by its owner only.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import TrainerCallback

from medscale.recipe import Recipe

log = logging.getLogger("medscale.tracking")

_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@]*):[^@\s/]*@")
_TOKENS = re.compile(r"\b(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_-]{8,}|gh[pousr]_[A-Za-z0-9]{8,}|github_pat_\w{8,}|"
                     r"xox[abpr]-[A-Za-z0-9-]{8,}|AKIA[0-9A-Z]{16}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9._-]+)")
_SECRET_KEY = re.compile(r"(?i)(token|passw|secret|api[_-]?key|credential|auth)")
MASK = "***"


def scrub(value, key: str = ""):
    """`value` as it may be logged: passwords in URLs, token-shaped strings and anything under a secret-named key
    masked, through dicts and lists."""
    if isinstance(value, dict):
        return {k: scrub(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v, key) for v in value]
    if not isinstance(value, str):
        return value
    if _SECRET_KEY.search(key):
        return MASK
    return _TOKENS.sub(MASK, _URL_PASSWORD.sub(rf"\1:{MASK}@", value))


def flat(d: dict, prefix: str = "") -> dict[str, str]:
    """A nested dict as dotted keys -> text (MLflow and TensorBoard take flat string parameters)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)
    return out


def has_api_key() -> bool:
    if os.environ.get("SWANLAB_API_KEY"):
        return True
    return any(p.is_file() for p in (Path.cwd() / ".swanlab" / ".netrc", Path.home() / ".swanlab" / ".netrc"))


class GuardedCallback(TrainerCallback):
    """Delegates every Trainer event to `inner` (SwanLab's callback); an exception disables it instead of killing
    the run."""

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
                log.warning("SwanLab logging failed (%s: %s); training continues without it", type(e).__name__,
                            scrub(str(e)))
            return None

        return call


@dataclass
class RunInfo:
    """What every tracker is told about the run: its parameters (the resolved recipe) and tags, scrubbed."""

    name: str
    project: str
    params: dict
    tags: dict[str, str] = field(default_factory=dict)


def run_info(recipe: Recipe, job: dict | None = None) -> RunInfo:
    """The run's parameters and tags: recipe name, fingerprint and `job` (its name, registry id, attempt)."""
    tags = {"medscale.recipe": recipe.name, "medscale.fingerprint": recipe.fingerprint(),
            **{f"medscale.{k}": str(v) for k, v in (job or {}).items() if v is not None}}
    return RunInfo(name=scrub(recipe.track.run_name or recipe.name), project=scrub(recipe.track.project or recipe.name),
                   params=scrub(recipe.model_dump(mode="json")), tags=scrub(tags))


def _numbers(logs: dict | None) -> dict[str, float]:
    """The Trainer's logs as tracker metrics: numbers only, named as Hugging Face's trackers name them."""
    from transformers.integrations.integration_utils import rewrite_logs

    return {k: float(v) for k, v in rewrite_logs(logs or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardSink:
    def __init__(self, folder: Path, info: RunInfo):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package; tensorboardX writes the same files
            from tensorboardX import SummaryWriter
        self.writer = SummaryWriter(log_dir=str(folder))
        for k, v in info.tags.items():
            self.writer.add_text(k, v)
        self.writer.add_text("medscale.recipe_params", "\n".join(f"    {k}: {v}" for k, v in flat(info.params).items()))
        self.writer.flush()

    def log(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflowSink:
    def __init__(self, uri: str | None, folder: Path, info: RunInfo):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        folder.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=uri or f"sqlite:///{folder / 'mlflow.db'}")
        exp = self.client.get_experiment_by_name(info.project)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            info.project, artifact_location=None if uri else (folder / "artifacts").as_uri())
        self.run_id = self.client.create_run(exp_id, run_name=info.name, tags=info.tags).info.run_id
        params = [Param(k[:250], v[:6000]) for k, v in flat(info.params).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class WandbSink:
    def __init__(self, mode: str, folder: Path, info: RunInfo):
        import wandb

        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=info.project, name=info.name, dir=str(folder), mode=mode,
                              config={**info.params, "tags": info.tags},
                              tags=[f"{k.removeprefix('medscale.')}:{v}"[:64] for k, v in info.tags.items()],
                              settings=wandb.Settings(disable_git=True, save_code=False, x_disable_meta=True))

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


class TrackioSink:
    def __init__(self, info: RunInfo):
        import trackio

        self.trackio = trackio
        trackio.init(project=info.project, name=info.name, config={**info.params, "tags": info.tags})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.trackio.log(metrics, step=step)

    def close(self) -> None:
        self.trackio.finish()


class Sinks(TrainerCallback):
    """The Trainer's logs, as numbers, to every tracker but SwanLab (whose own callback logs); a tracker that fails
    is dropped with a warning, the others go on."""

    def __init__(self):
        self.sinks: dict[str, object] = {}

    def on_log(self, args, state, control, logs=None, **kw):
        metrics = _numbers(logs)
        for name, sink in list(self.sinks.items()):
            self._guarded(name, sink.log, metrics, state.global_step)

    def close(self) -> None:
        for name, sink in list(self.sinks.items()):
            self._guarded(name, sink.close)

    def _guarded(self, name: str, call, *args) -> None:
        try:
            call(*args)
        except Exception as e:  # tracking must never take training down
            del self.sinks[name]
            log.warning("%s logging failed (%s: %s); training continues without it", name, type(e).__name__,
                        scrub(str(e)))


@dataclass
class Tracking:
    """The trackers of one run on rank 0 as Trainer callbacks, closed once however training ends."""

    sinks: Sinks = field(default_factory=Sinks)
    swanlab: TrainerCallback | None = None
    swanlab_dir: str | None = None

    @property
    def callbacks(self) -> list:
        return ([self.sinks] if self.sinks.sinks else []) + ([self.swanlab] if self.swanlab else [])

    def close(self) -> None:
        self.sinks.close()
        if self.swanlab is not None:
            finish_swanlab()


def start_trackers(recipe: Recipe, rank: int, attempt=None) -> Tracking:
    """Every tracker of `track.report_to` that starts, on rank 0 (others get none). `attempt`
    (medscale.jobs.attempt.Attempt, started): the job its tags name."""
    tracking = Tracking()
    if rank != 0 or not recipe.track.trackers():
        return tracking
    job = attempt and {"job": attempt.journal.name, "job_id": attempt.registry.job_id(attempt.spec),
                       "attempt": attempt.info.number}
    info, out, t = run_info(recipe, job), Path(recipe.train.output_dir), recipe.track
    starts = {"tensorboard": lambda: TensorBoardSink(out / "tensorboard", info),
              "mlflow": lambda: MLflowSink(t.mlflow_uri, out / "mlflow", info),
              "wandb": lambda: WandbSink(t.wandb_mode, out / "wandb", info),
              "trackio": lambda: TrackioSink(info)}
    for name in t.trackers():
        try:
            if name == "swanlab":
                tracking.swanlab, tracking.swanlab_dir = start_swanlab(recipe, rank, info)
            else:
                tracking.sinks.sinks[name] = starts[name]()
        except Exception as e:  # pre-flight checked it is installed; a tracker that cannot start is skipped
            log.warning("%s could not start (%s: %s); training continues without it", name, type(e).__name__,
                        scrub(str(e)))
    return tracking


def start_swanlab(recipe: Recipe, rank: int, info: RunInfo | None = None) -> tuple[TrainerCallback | None, str | None]:
    """(callback, log dir) for rank 0, or (None, None) when SwanLab is off or impossible."""
    cfg = recipe.track.swanlab
    if cfg is None or cfg.mode == "disabled" or rank != 0:
        return None, None
    import swanlab
    from swanlab.integration.transformers import SwanLabCallback

    info = info or run_info(recipe)
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
                experiment_name=scrub(cfg.experiment) or info.name, config={"recipe": info.params, **info.tags})
    for attempt in dict.fromkeys([mode, "offline"]):
        try:
            swanlab.init(mode=attempt, **init)
            return GuardedCallback(SwanLabCallback()), str(logdir)
        except Exception as e:
            log.warning("SwanLab init in %s mode failed (%s: %s)", attempt, type(e).__name__, scrub(str(e)))
    log.warning("SwanLab unavailable; training continues without tracking")
    return None, None


def finish_swanlab() -> None:
    try:
        import swanlab

        swanlab.finish()
    except Exception as e:
        log.warning("SwanLab finish failed (%s); the offline log stays on disk", e)
