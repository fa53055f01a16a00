"""A judgement as a job (kind `judge`): its typed spec, the job file it travels as (`judge_job.yaml` in its folder),
its pre-flight, and its run. The same judgement asked again is the same job, so a rerun continues it: the answers
and the judge's replies already generated are read from the engine's caches in the job's folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import Field

from medscale.eval.spec import JobFolder, JobSpec, _absolute
from medscale.jobkind import JobKind
from medscale.recipe import DistSection, RecipeError, Section

JOB_FILE = "judge_job.yaml"
SAMPLING = ("temperature", "top_p", "top_k", "max_new_tokens", "think_budget", "seed")


class JudgeSpec(JobSpec):
    job_file: ClassVar[str] = JOB_FILE
    kind: Literal[JobKind.JUDGE] = JobKind.JUDGE
    name: str
    models: list[str] = Field(description="the sides: jobs, model folders, endpoints (http...) or answer files")
    questions: str | None = Field(None, description="a question file or a built-in open set")
    mode: Literal["pairwise", "score"] = "pairwise"
    judge: str | None = Field(None, description="the judge: a job, a model folder or an endpoint; None: no judge")
    calibrate: bool = False
    labels: str | None = Field(None, description="--calibrate: the labelled pairs (default: the shipped set)")
    limit: int | None = Field(None, ge=1)
    data_dir: str | None = None
    rubric_language: Literal["auto", "zh", "en"] = "auto"
    sampling: dict = Field(default_factory=dict, description="the sides' generation flags given (eval's)")
    judge_sampling: dict = Field(default_factory=dict, description="the judge's generation flags given")
    greedy: bool = False
    enable_thinking: bool | None = None
    batch_size: int | None = Field(None, ge=1, description="None: the engine plans it from free GPU memory")
    system_prompt: str | None = None
    api_key_env: str = Field("OPENAI_API_KEY", description="the environment variable an endpoint's key is read from")
    dist: DistSection = Field(default_factory=DistSection)
    train: JobFolder


def new_judge_spec(what: dict, out: str | os.PathLike | None = None) -> JudgeSpec:
    """A judge job from `medscale judge`'s options: named for its sides and a hash of what is judged, in `out`, else
    `$MEDSCALE_HOME/runs/<name>`."""
    what = {**what, "models": [_absolute(m) for m in what["models"]], "judge": _absolute(what.get("judge")),
            "questions": _absolute(what.get("questions")), "labels": _absolute(what.get("labels"))}
    draft = JudgeSpec.validated({**what, "name": "judge", "train": {"output_dir": "-"}}, "medscale judge options")
    sides = "-vs-".join(Path(m.rstrip("/")).stem for m in draft.models) or "calibration"
    label = re.sub(r"[^\w.+-]+", "-", sides).strip("-.")[:60] or "models"
    return draft.placed(f"judge-{label}", draft.model_dump(mode="json", exclude={"name", "train"}), out)


def load_judge_spec(ref: str, overrides: list[str] | None = None) -> JudgeSpec:
    """A judge job file (`kind: judge`) with `key=value` overrides."""
    from medscale.recipe import apply_overrides

    path = Path(ref).expanduser()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"{ref}: not a judge job file ({type(e).__name__}): pass {JOB_FILE} of a judge job") from None
    if not isinstance(data, dict) or data.get("kind") != JobKind.JUDGE:
        raise RecipeError(f"{ref}: not a judge job file (no `kind: judge`): pass {JOB_FILE} of a judge job")
    return JudgeSpec.validated(apply_overrides(data, list(overrides or [])), str(path))


def check_judge_launch(spec: JudgeSpec, *, devices: bool, paths_must_exist: bool = True):
    """Bad input in seconds, before any model loads: the questions read, the answer files read, every model and the
    judge resolve, the folder can be written."""
    from medscale.errors import UserError
    from medscale.jobs.resolve import resolve
    from medscale.judge.run import calibration_pairs, questions_for
    from medscale.judge.sources import file_answers, is_answer_file
    from medscale.paths import folder_problem
    from medscale.preflight import Report

    report = Report()

    def sides():
        qs = questions_for(spec.models, spec.questions, spec.data_dir, spec.limit)
        for m in spec.models:
            if is_answer_file(m):
                file_answers(m, qs)

    checks = [sides] if spec.models else []
    checks += [lambda m=m: resolve(m) for m in spec.models + ([spec.judge] if spec.judge else [])
               if not m.startswith(("http://", "https://")) and not is_answer_file(m)]
    checks += [lambda: calibration_pairs(spec.labels)] if spec.calibrate else []
    for check in checks:
        try:
            check()
        except UserError as e:
            report.error("judge", str(e))
    if why := folder_problem(Path(spec.train.output_dir)):
        report.error("output", f"--out {spec.train.output_dir}: {why}")
    return report


def run_judge_job(spec: JudgeSpec, launch=None, callbacks=()):
    """The `judge` entry (`python -m medscale.jobs judge JOB_FILE`): one attempt in the job's record, judge.json /
    .md / .html written at its end."""
    from medscale.jobs.attempt import Attempt
    from medscale.jobs.kinds import JobKind
    from medscale.jobs.launch import LaunchInfo
    from medscale.jobs.stop import stop_flag
    from medscale.judge.run import run_calibration, run_judgement
    from medscale.judge.sources import Asking

    flag = stop_flag()
    flag.install(at_once=True)  # what finished is cached: a stop ends the attempt at once
    asking = Asking(cli=spec.sampling, greedy=spec.greedy, enable_thinking=spec.enable_thinking,
                    batch_size=spec.batch_size, system_prompt=spec.system_prompt, api_key_env=spec.api_key_env)
    judge_asking = Asking(cli=spec.judge_sampling, greedy=spec.greedy, batch_size=spec.batch_size,
                          api_key_env=spec.api_key_env)
    with Attempt(spec, launch or LaunchInfo.from_env(), 0, 1, kind=JobKind.JUDGE, stop=flag) as attempt:
        flag.raise_if_set(0)
        if spec.calibrate:
            result = run_calibration(spec.judge, labels=spec.labels, judge_asking=judge_asking, limit=spec.limit,
                                     rubric_language=spec.rubric_language, cache_dir=attempt.out)
        else:
            result = run_judgement(spec.models, questions=spec.questions, mode=spec.mode, judge=spec.judge,
                                   asking=asking, judge_asking=judge_asking, data_dir=spec.data_dir,
                                   limit=spec.limit, rubric_language=spec.rubric_language, cache_dir=attempt.out)
        write_judgement(result, attempt.out)
    return result


JUDGEMENT = "judge.json"  # the judgement in its folder (judge.md and judge.html beside it are for people)


def write_judgement(result, out: Path) -> dict[str, Path]:
    from medscale.jobs.record import write_text_atomic

    paths = {"json": out / JUDGEMENT, "markdown": out / "judge.md", "html": out / "judge.html"}
    write_text_atomic(paths["json"], result.to_json(indent=1))
    write_text_atomic(paths["markdown"], result.to_markdown())
    write_text_atomic(paths["html"], result.to_html())
    return paths


def read_judgement(out: str | os.PathLike):
    """The JudgeResult a judge job (or `compare --judge`) wrote into `out`."""
    from medscale.judge.result import JudgeResult

    return JudgeResult.model_validate_json((Path(out) / JUDGEMENT).read_text(encoding="utf-8"))
