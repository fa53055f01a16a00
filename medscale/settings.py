"""Every `MEDSCALE_*` environment variable, declared once: its meaning, its default and how its value is read. Code
asks a declaration (`settings.HEARTBEAT_S.get()`), never `os.environ`, so configuration cannot hide in a module and
README's table (checked by tests/test_settings.py) lists all of it. Values are read when asked, not at import: a
launcher sets them for the processes it starts, and tests set them per test. An empty value counts as unset, as
`${VAR:-default}` does in a recipe and in the SLURM scripts."""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import datetime
from pathlib import Path
from typing import Generic, TypeVar

T = TypeVar("T")
PREFIX = "MEDSCALE_"

# Who sets a variable: the person running medscale, medscale itself (a launcher, for the processes it starts: never
# set by hand), or the person running the test suite. Where it is read: Python, or a shell script under slurm/.
YOU, LAUNCHER_SET, TESTS = "you", "a launcher", "tests"


def _path(raw: str) -> Path:
    return Path(raw).expanduser()


def _flag(raw: str) -> bool:
    return raw not in ("0", "false")


def _log_level(raw: str) -> str:
    if raw.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("expected debug, info, warning or error")
    return raw.upper()


def _auto_bool(raw: str) -> bool | None:
    return None if raw == "auto" else raw.lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One variable. `default` is the raw value used when it is unset (parsed like a set one); None where the default
    is worked out by the code that asks (`default_text` then says what it is)."""

    name: str
    meaning: str
    parse: Callable[[str], T]
    default: str | None = None
    default_text: str = ""
    _: KW_ONLY
    set_by: str = YOU
    read_in: str = "python"  # "python", or the shell scripts that read it

    def get(self, env: Mapping[str, str] | None = None) -> T | None:
        """The typed value from `env` (default: this process's environment, read now), else the default's."""
        raw = self.raw(env) or self.default
        if raw is None:
            return None
        try:
            return self.parse(raw)
        except ValueError as e:
            from medscale.errors import UserError  # errors reads MEDSCALE_DEBUG through this module

            raise UserError(f"{self.name}={raw!r} cannot be read ({e}); it is {self.meaning}: set it like its "
                            f"default ({self.shown_default}) or unset it") from None

    def raw(self, env: Mapping[str, str] | None = None) -> str | None:
        """The text as set, None when unset or empty."""
        return (os.environ if env is None else env).get(self.name) or None

    def is_set(self, env: Mapping[str, str] | None = None) -> bool:
        return self.raw(env) is not None

    @property
    def shown_default(self) -> str:
        return self.default if self.default is not None else self.default_text


ALL: dict[str, Setting] = {}


def _declare(name: str, meaning: str, parse: Callable[[str], T] = str, **kw) -> Setting[T]:
    setting = Setting(PREFIX + name, meaning, parse, **kw)
    ALL[setting.name] = setting
    return setting


# ------------------------------------------------------------------------------------------- set by you
HOME = _declare("HOME", "where models, caches, runs, reports and the default SQLite registry live", _path,
                default="~/.medscale")
MODELS = _declare("MODELS", "the model root of the built-in recipes' `${MEDSCALE_MODELS:-~/models}` paths; a hub id "
                            "(`Qwen/Qwen3-8B`) is looked up there as `org/name` or `name` after the HF and ModelScope "
                            "caches", _path, default="~/models")
DATA = _declare("DATA", "the data root of the built-in recipes' `${MEDSCALE_DATA:-~/data}` paths; built-in "
                        "benchmarks default to its `eval/` folder", _path, default="~/data")
EVAL_DATA = _declare("EVAL_DATA", "where built-in benchmarks live (`--data-dir` and `eval.data_dir` win)", _path,
                     default_text="`${MEDSCALE_DATA:-~/data}/eval`")
DEMO_DATA = _declare("DEMO_DATA", "the folder a recipe's `${MEDSCALE_DEMO_DATA}` names (`tiny-demo`'s records)",
                     default_text="the shipped demo records")
REGISTRY_URL = _declare("REGISTRY_URL", "the registry's SQLAlchemy URL; PostgreSQL lets every node write one "
                                        "registry", default_text="`sqlite:///$MEDSCALE_HOME/registry.db`")
HEARTBEAT_S = _declare("HEARTBEAT_S", "seconds between rank-0 heartbeats; an attempt silent for 4 is `lost`",
                       float, default="30")
DEBUG = _declare("DEBUG", "tracebacks instead of one-line errors, as `--debug` (any value but 0 or false)", _flag,
                 default="0")
LOG_LEVEL = _declare("LOG_LEVEL", "how much medscale logs: warning (as `-q`), info, or debug (as `-v`); error: "
                                  "only errors", _log_level, default="info")
RAY_MAX_FAILURES = _declare("RAY_MAX_FAILURES", "Ray worker-group restarts before the job fails "
                                                "(`--max-failures`)", int, default="3")
RAY_STORAGE_PATH = _declare("RAY_STORAGE_PATH", "shared storage for Ray's run dir (`--storage-path`)",
                            default_text="the recipe's `train.output_dir`")
RAY_USE_GPU = _declare("RAY_USE_GPU", "one GPU per Ray worker: 1/true/yes, anything else CPUs, auto as unset "
                                      "(`--gpu` / `--cpu`)", _auto_bool, default_text="GPUs when the cluster has any")
RAY_CPUS_PER_WORKER = _declare("RAY_CPUS_PER_WORKER", "CPUs reserved per Ray worker (`--cpus-per-worker`)", float,
                               default="1")
PYTHON = _declare("PYTHON", "the Python with medscale installed, the same on every node", default="python3",
                  read_in="slurm/*.sh")
REPO = _declare("REPO", "the medscale checkout or install whose `slurm/common.sh` a batch script sources",
                default_text="the checkout holding `slurm/common.sh` (`$SLURM_SUBMIT_DIR` in the sbatch scripts)",
                read_in="slurm/*.sh")
MAIN_PORT = _declare("MAIN_PORT", "the port of machine rank 0 in a SLURM job", default_text="a free port",
                     read_in="slurm/common.sh")
RECIPE = _declare("RECIPE", "the recipe `slurm/1p7b_qlora.sh` trains when given no argument",
                  default="qwen3-1.7b-qlora-v1", read_in="slurm/1p7b_qlora.sh")
SWEEP = _declare("SWEEP", "the sweep whose trials `slurm/r1_sweep.sh` runs, one per array task",
                 default="r1-distill-seed004", read_in="slurm/r1_sweep.sh")

# ------------------------------------------------------------------------------------------- set by a launcher
LAUNCHER = _declare("LAUNCHER", "the launcher that started this process, for the attempt row",
                    default_text="slurm, accelerate or python, from the environment", set_by=LAUNCHER_SET)
LAUNCH_OPTIONS = _declare("LAUNCH_OPTIONS", "the launcher's options as JSON, recorded for `jobs resume`",
                          default="{}", set_by=LAUNCHER_SET)
LAUNCHED_AT = _declare("LAUNCHED_AT", "ISO time of the submit: a cancel made after it applies to this launch",
                       datetime.fromisoformat, default_text="the process's start", set_by=LAUNCHER_SET)
RAY_JOB_ID = _declare("RAY_JOB_ID", "the Ray job's submission id, for the attempt row", default_text="none",
                      set_by=LAUNCHER_SET)
ENTRY = _declare("ENTRY", "the entry kind a SLURM job's nodes run (train, eval, trial)", default="train",
                 set_by=LAUNCHER_SET)
RECIPE_YAML = _declare("RECIPE_YAML", "a Ray job's recipe text when its file is outside the uploaded working dir "
                                      "(the recipe `env:MEDSCALE_RECIPE_YAML`)", default_text="none",
                       set_by=LAUNCHER_SET)

# ------------------------------------------------------------------------------------------- set by tests
FAILPOINT = _declare("FAILPOINT", "`NAME@STEP`: SIGKILL this process at that point of the checkpoint protocol "
                                  "(crash-recovery tests)", default_text="none", set_by=TESTS)
SHARED = _declare("SHARED", "the folder of the optional real data and tokenizer the tests use", _path,
                  default_text="`../shared` beside the checkout", set_by=TESTS, read_in="tests/conftest.py")
TEST_PG_URL = _declare("TEST_PG_URL", "a PostgreSQL URL for the registry tests", default_text="a throwaway server",
                       set_by=TESTS, read_in="tests/conftest.py")
TEST_RAY_CLUSTER = _declare("TEST_RAY_CLUSTER", "marks the processes of the tests' local Ray cluster, so they are "
                                                "found and stopped", default_text="none", set_by=TESTS,
                            read_in="tests/ray_cluster.py")


def markdown_table() -> str:
    """README's table of every variable, in declaration order."""
    rows = ["| variable | meaning | default | set by |", "|---|---|---|---|"]
    for s in ALL.values():
        default = f"`{s.default}`" if s.default is not None else s.default_text
        where = "" if s.read_in == "python" else f" (read by `{s.read_in}`)"
        rows.append(f"| `{s.name}` | {s.meaning}{where} | {default} | {s.set_by} |")
    return "\n".join(rows)
