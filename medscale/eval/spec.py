"""An evaluation as a job: its typed spec (`EvalSpec`), the job file it travels as (`eval_job.yaml` in its output
dir; every launcher's processes re-read it), and how a spec is read from a reference (`load_eval_spec`: that file, or
a recipe whose trained model is evaluated against its base). Torch-free: launchers and `medscale jobs` read it.

A spec is what the job road reads of every kind: `name`, `train.output_dir` (the job's folder, named as in a
Recipe), `dist` (how many processes score shards of the questions), `fingerprint()` and `to_yaml()`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import ClassVar, Literal

import yaml
from pydantic import Field, ValidationError, field_serializer, model_validator

from medscale.errors import UserError
from medscale.generate.settings import Resolved, resolve
from medscale.jobkind import JobKind
from medscale.recipe.fingerprint import recipe_fingerprint, recipe_yaml
from medscale.recipe import (BenchmarkSource, DistSection, GenerationSection, Recipe, RecipeError, Section,
                             apply_overrides, load_recipe, saved_recipe)

JOB_FILE = "eval_job.yaml"


class JobFolder(Section):
    output_dir: str = Field(min_length=1, description="the job's folder: its record, results cache and report")


class SamplingKeys(Section):
    """Generate mode's sampling keys as the command line gave them; None: not given, so the recipe's generation
    section, then the model's generation_config.json, then medscale's defaults decide (generate.settings.resolve)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n_samples: int | None = None
    seed: int | None = None
    max_new_tokens: int | None = None
    think_budget: int | None = None


class EndpointSpec(Section):
    """An OpenAI-compatible server that generates instead of the model in-process. The API key stays in the
    environment: only the variable's name is kept."""

    url: str = Field(min_length=1, description="the server's base URL (.../v1)")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="the environment variable holding the API key")
    served_model: str | None = Field(None, description="the served model's name; default: the first of /v1/models")
    concurrency: int = Field(8, ge=1, description="requests in flight")
    timeout: float = Field(600.0, gt=0, description="seconds a request may take before it is retried")
    retries: int = Field(4, ge=0, description="retries of a failed request, waiting 1, 2, 4... s between them")


class JobSpec(Section):
    """A job kind's spec as the file every process of the job reads (what a launcher names as the job's REF): in the
    job's output dir (`train.output_dir` of a `JobFolder`), as YAML and fingerprinted the way a recipe is."""

    job_file: ClassVar[str]

    def fingerprint(self) -> str:
        return recipe_fingerprint(self)

    def to_yaml(self) -> str:
        return recipe_yaml(self)

    def write(self) -> Path:
        from medscale.jobs.record import write_text_atomic

        out = Path(self.train.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / self.job_file, self.to_yaml())
        return out / self.job_file

    @classmethod
    def validated(cls, data: dict, source: str):
        """The spec from a job file or a command's options; a bad value is one line naming `source` and the key."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            raise RecipeError(f"{source}: {'.'.join(str(x) for x in first['loc'])}: {first['msg']}") from None

    @classmethod
    def recorded(cls, text: str, source: str):
        """The spec from its job file's YAML as a registry row keeps it (`source` names the row)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise RecipeError(f"{source}: not valid YAML: {getattr(e, 'problem', e)}") from None
        return cls.validated(data if isinstance(data, dict) else {}, source)

    def placed(self, name: str, measured: dict, out: str | os.PathLike | None):
        """Named `<name>-<hash of what is measured>`, so the same job asked again is the same job and its rerun
        continues it; its folder is `out`, else `$MEDSCALE_HOME/runs/<that name>`."""
        from medscale import medscale_home

        name += "-" + hashlib.sha256(json.dumps(measured, sort_keys=True).encode()).hexdigest()[:10]
        folder = os.path.abspath(os.path.expanduser(out)) if out else str(medscale_home() / "runs" / name)
        return self.model_copy(update={"name": name, "train": JobFolder(output_dir=folder)})


class EvalSpec(JobSpec):
    job_file: ClassVar[str] = JOB_FILE
    kind: Literal[JobKind.EVAL] = JobKind.EVAL  # marks an evaluation's job file (a recipe has no `kind`)
    name: str
    model: str = Field(description="a job name or id, an output dir, a checkpoint, an adapter or a model folder")
    adapter: str | None = None
    checkpoint: int | None = None
    against: str | None = Field(None, description="`base` or another model: scored on the same questions")
    benchmarks: list[str | BenchmarkSource]
    mode: Literal["letter", "option", "generate"] = "letter"
    shots: int = Field(0, ge=0, le=10)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    data_dir: str | None = None
    batch_size: int | None = Field(None, ge=1, description="questions scored together (null: 8); generate mode: "
                                                          "answers generated together (null: planned from free GPU "
                                                          "memory)")
    skip_bad: bool | None = None
    max_bad: float | None = Field(None, ge=0, le=1)
    dedupe: bool = False
    system_prompt: str | None = None
    train_data: list[str] | None = None
    generation: GenerationSection = Field(default_factory=GenerationSection,
                                          description="a recipe's generation section: its keys set explicitly count")
    sampling: SamplingKeys = Field(default_factory=SamplingKeys, description="the command line's sampling keys")
    greedy: bool = Field(False, description="decode greedily, whatever the recipe or the model says")
    endpoint: EndpointSpec | None = Field(None, description="generate through this server instead of in-process")
    dist: DistSection = Field(default_factory=DistSection)
    train: JobFolder

    @model_validator(mode="after")
    def _generation_options_need_generate_mode(self) -> "EvalSpec":
        given = [k for k, v in self.sampling if v is not None] + ["greedy"] * self.greedy + ["endpoint"] * bool(
            self.endpoint)
        if given and self.mode != "generate":
            raise ValueError(f"{', '.join(given)}: generation options, for --mode generate (this is --mode "
                             f"{self.mode})")
        if self.endpoint and self.against:
            raise ValueError("--endpoint serves one model, so --against cannot be scored through it: drop "
                             "--against, or evaluate both in-process")
        return self

    @field_serializer("generation")
    def _set_keys_only(self, generation: GenerationSection) -> dict:
        """Only the keys the recipe set: read back, the others stay unset, so they are not taken for its choices."""
        return generation.model_dump(mode="json", exclude_unset=True)

    def sampling_settings(self, model_dir: str | Path | None) -> Resolved:
        """Generate mode's settings with the source of each: the command line, the recipe, the model's
        generation_config.json in `model_dir`, medscale's defaults."""
        found = resolve(cli=self.sampling.model_dump(), recipe=self.generation, model_dir=model_dir,
                        greedy=self.greedy)
        if found.settings.think_budget and self.generation.enable_thinking is False:
            raise UserError(f"think_budget={found.settings.think_budget} (from {found.sources['think_budget']}) with "
                            f"thinking off (--no-think / generation.enable_thinking=false): drop one of them")
        return found

    @property
    def output_dir_as_written(self) -> str:
        return self.train.output_dir


def _absolute(ref: str | None) -> str | None:
    """A path that exists here, made absolute (the job's processes may start elsewhere); a job name stays a name."""
    return os.path.abspath(os.path.expanduser(ref)) if ref and os.path.exists(os.path.expanduser(ref)) else ref


def new_eval_spec(what: dict, out: str | os.PathLike | None = None) -> EvalSpec:
    """An evaluation job from the `medscale eval` options (`what`: EvalSpec fields but name and folder). The same
    evaluation asked again is the same job, so its rerun continues it: named for the model and a hash of what is
    measured; its folder is `out`, else `$MEDSCALE_HOME/runs/<name>`."""
    what = {**what, **{k: _absolute(what.get(k)) for k in ("model", "adapter", "against", "data_dir")}}
    what["benchmarks"] = [_absolute(b) if isinstance(b, str) else b for b in what["benchmarks"]]
    draft = EvalSpec.validated({**what, "name": "eval", "train": {"output_dir": "-"}}, "medscale eval options")
    measured = draft.model_dump(mode="json", exclude={"name": True, "train": True,  # how fast is not what
                                                      "endpoint": {"concurrency", "timeout", "retries"}})
    label = re.sub(r"[^\w.+-]+", "-", Path(draft.model.rstrip("/")).name).strip("-.")[:60] or "model"
    return draft.placed(f"eval-{label}", measured, out)


def from_recipe(recipe: Recipe) -> EvalSpec:
    """The recipe's trained model (its final adapter, or the newest verified checkpoint) against its base on
    `eval.benchmarks` (default: the four Chinese medical sets): a job of its own, `<recipe>.eval`, in
    `<train.output_dir>/eval` (what `medscale submit ... --entry eval RECIPE` runs)."""
    from medscale.benchmarks import MEDICAL_ZH

    e = recipe.eval
    return EvalSpec(name=f"{recipe.name}.eval", model=recipe.train.output_dir, against="base",
                    benchmarks=list(e.benchmarks) or list(MEDICAL_ZH), mode=e.benchmark_mode, shots=e.shots,
                    seed=recipe.train.seed, data_dir=e.data_dir, batch_size=e.per_device_eval_batch_size,
                    generation=recipe.generation, dist=recipe.dist,
                    train=JobFolder(output_dir=str(Path(recipe.train.output_dir) / "eval")))


def as_eval_spec(spec: EvalSpec | Recipe) -> EvalSpec:
    """The eval road's spec from what a caller of the library hands it: an EvalSpec, or a training recipe (a
    LaunchRequest built before evaluations had their own spec)."""
    return spec if isinstance(spec, EvalSpec) else from_recipe(spec)


def saved_eval_spec(text: str, source: str) -> EvalSpec | Recipe:
    """An evaluation as its registry row recorded it: its job file (`kind: eval`), or, in a row written before
    evaluations had a spec of their own, the recipe whose trained model it evaluated, read as the job saved it."""
    try:
        marked = (yaml.safe_load(text) or {}).get("kind") == JobKind.EVAL
    except (yaml.YAMLError, AttributeError):
        marked = False  # no job file: read as the recipe it may be, whose reader says what is wrong
    return EvalSpec.recorded(text, source) if marked else saved_recipe(text, source)


def load_eval_spec(ref: str, overrides: list[str] | None = None) -> EvalSpec:
    """An evaluation's job file (`kind: eval`) with `key=value` overrides, or a recipe (built-in name or YAML) whose
    trained model is evaluated (`from_recipe`)."""
    path = Path(ref).expanduser()
    if path.suffix in (".yaml", ".yml") and path.is_file():
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("kind") == JobKind.EVAL:
            return EvalSpec.validated(apply_overrides(data, list(overrides or [])), str(path))
    return from_recipe(load_recipe(ref, list(overrides or [])))
