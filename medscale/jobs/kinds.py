"""Where each kind of job (`medscale.jobkind.JobKind`, the enum a job row's `kind` holds, re-exported here) has its
code: what `python -m medscale.jobs KIND` dispatches on (imported only when a job of that kind runs, so this module
stays torch-free).

A kind is a road: `load(ref, overrides) -> spec` (the typed spec a launcher carries, re-read on every node),
`check(spec, devices=...) -> preflight Report` (what a launcher's prepare records), `run(spec, launch,
callbacks) -> result` (what every process of the job runs) and `recorded(yaml, source) -> spec` (the spec a registry
row keeps, read typed by `recorded_spec`). `serve` is named now so rows and commands can say
it; it gets a road when its package arrives.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import KW_ONLY, dataclass

from medscale.errors import UserError
from medscale.jobkind import JobKind


def _load(path: str):
    module, _, name = path.partition(":")
    return functools.reduce(getattr, name.split("."), importlib.import_module(module))


@dataclass(frozen=True)
class Road:
    """Where a kind's code lives, as "package.module:function" names (imported lazily) and the module its old
    `python -m` alias names (what the launchers' command lines, SLURM scripts and README run); `resumes`: where a
    stopped job of the kind continues from (a batch script's header says it)."""

    alias: str
    run: str
    load: str
    check: str
    recorded: str
    _: KW_ONLY
    resumes: str

    def runner(self):
        return _load(self.run)

    def loader(self):
        return _load(self.load)

    def checker(self):
        return _load(self.check)

    def reader(self):
        return _load(self.recorded)


ROADS = {
    JobKind.TRAIN: Road("medscale.train", "medscale.train.run:run", "medscale.recipe:load_recipe",
                        "medscale.preflight:check_launch", "medscale.recipe:saved_recipe",
                        resumes="newest verified checkpoint"),
    JobKind.EVAL: Road("medscale.eval", "medscale.eval.job:run_job", "medscale.eval.spec:load_eval_spec",
                       "medscale.preflight:check_eval_launch", "medscale.eval.spec:saved_eval_spec",
                       resumes="the questions not yet scored"),
    JobKind.TRIAL: Road("medscale.sweep", "medscale.sweep.trial:run_trial", "medscale.recipe:load_recipe",
                        "medscale.preflight:check_launch", "medscale.recipe:saved_recipe",
                        resumes="newest verified checkpoint"),
    JobKind.JUDGE: Road("medscale.judge", "medscale.judge.spec:run_judge_job", "medscale.judge.spec:load_judge_spec",
                        "medscale.judge.spec:check_judge_launch", "medscale.judge.spec:JudgeSpec.recorded",
                        resumes="the answers and verdicts not yet made"),
}


def recorded_spec(row):
    """The typed spec a job's registry row (`JobView` or `JobSpec`: its kind and YAML) recorded: the Recipe of a
    train or trial job, the EvalSpec or JudgeSpec of an evaluation or judgement; None when the row holds none (a job
    synced from a folder without its recipe). The one reader of a row's YAML, so `jobs gc`, `jobs resume` and the
    report read fields, never dict keys that answer None for a typo."""
    if not row.recipe_yaml:
        return None
    source = f"the recipe recorded for job {row.name}"
    road = ROADS.get(JobKind(row.kind))
    if road is None:
        raise UserError(f"{source}: a {JobKind(row.kind).value} job has no spec to read yet")
    return road.reader()(row.recipe_yaml, source)


def job_kind(value: str) -> JobKind:
    """A kind named on a command line or read from a record; one line naming the known ones otherwise."""
    try:
        return JobKind(value)
    except ValueError:
        raise UserError(f"job kind {value!r}: unknown (known: {', '.join(k.value for k in JobKind)})") from None
