"""A sweep definition (YAML) and its expansion into trials.

A sweep file names one or more recipes and a grid over them; every cell of the grid is one trial, a job of kind
`trial` whose recipe is its base recipe plus the cell's overrides (so its fingerprint says exactly what it trained):

    name: lr-steps                     # the sweep's name: trials are <name>.<label>, in <output_root>/<name>/<label>
    recipes:                           # several recipes: an axis of the grid, labelled (default: the recipe name)
      - {recipe: r1-distill-7b-lora-fast, label: 7b}
      - {recipe: r1-distill-14b-lora-fast, label: 14b, base: /models/R1-14B}   # `base`: its leaderboard base
                                       # (a plain name is a recipe with no label, base or note: `recipes: [tiny-demo]`)
    grid:
      train.lora_dropout: [0.0, 0.05]  # a key and its values (labels dropout_0.0, dropout_0.05), each value once
      schedule:                        # keys tied together: each value is a label and its overrides
        fast: {train.learning_rate: 2.0e-4, train.max_steps: 60}
        gentle: {train.learning_rate: 5.0e-6, train.max_steps: 30}
    cells:                             # optional: only these cells (default: every combination)
      - {recipe: 7b, schedule: fast}
      - {recipe: 14b, schedule: gentle, overrides: {train.learning_rate: 3.0e-6}, note: "addition"}
    random: 4                          # optional: a seeded random 4 of the cells (`seed`, default 0)
    overrides: {train.save_steps: 10}  # every trial
    bases: auto                        # the models the fine-tunes are ranked against: auto = each recipe's
                                       # model.path (or its `base`), or a list of paths / {label, path}
    scheduler: {type: asha, grace_period: 10, reduction_factor: 2}   # optional early stopping on eval loss
    max_concurrent: 2                  # optional: at most 2 trials at once (default: as resources allow)
    metric: eval_loss                  # the leaderboard's default ranking (eval_loss, control, or a benchmark)

`medscale sweep run RECIPE --grid key=v1,v2 ...` builds the same object from the command line. Expansion is
deterministic (same file, same trials, same output dirs), which is what lets a re-run skip finished trials and
resume interrupted ones.
"""
from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import os
import random
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medscale import medscale_home
from medscale.errors import UserError
from medscale.recipe import Recipe, RecipeError, line_of, load_recipe  # line_of: a key's file:line, as for recipes
from medscale.registry import SweepBase, TrialCell
from medscale.sweep.metric import EVAL_LOSS, SweepMetric


class SweepError(UserError):
    """A sweep definition that cannot run; the message names the file, line or key and the fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipeEntry(_Strict):
    recipe: str = Field(description="a built-in recipe name or a recipe YAML path")
    label: str | None = Field(None, description="how trials and cells name it; default: the recipe's name")
    base: str | None = Field(None, description="the base model this recipe's fine-tunes are ranked against; "
                                               "default: its model.path")
    note: str | None = Field(None, description="shown beside its trials on the leaderboard")


class Cell(_Strict):
    """One chosen cell: a label for each axis (`recipe` for the recipe axis), extra overrides, a note."""

    model_config = ConfigDict(extra="allow")

    overrides: dict[str, Any] = Field(default_factory=dict)
    note: str | None = None


class Asha(_Strict):
    type: Literal["asha"] = "asha"
    grace_period: int | None = Field(None, ge=1, description="steps every trial trains before it may be stopped; "
                                                             "default: the trials' first evaluation step")
    reduction_factor: float = Field(2, gt=1, description="keep the best 1/reduction_factor at each rung")


class SweepJudge(_Strict):
    """The judge of every finished fine-tune against its own base on open questions (`medscale judge BASE TRIAL`),
    made after the trials; `medscale report SWEEP` shows each judgement in its fine-tune's row."""

    questions: str = Field(description="a question file or a built-in open set (seed004, cmb-clin, huatuo100)")
    judge: str | None = Field(None, description="the judge: a job or a model folder")
    judge_endpoint: str | None = Field(None, description="the judge: an OpenAI-compatible server (its key from "
                                                         "api_key_env)")
    api_key_env: str = Field("OPENAI_API_KEY", description="the environment variable holding the endpoint's key")
    limit: int | None = Field(None, ge=1, description="only the first N questions")
    max_new_tokens: int | None = Field(None, ge=1, description="the sides' answer tokens (default: their "
                                                               "generation settings)")
    judge_max_new_tokens: int = Field(512, ge=1, description="the longest verdict the judge may write")
    greedy: bool = Field(False, description="greedy decoding for the sides and the judge")

    @model_validator(mode="after")
    def _one_judge(self) -> "SweepJudge":
        if bool(self.judge) == bool(self.judge_endpoint):
            raise ValueError("judge: name one judge, judge (a job or model folder) or judge_endpoint (a URL)")
        return self


class SweepSpec(_Strict):
    name: str = Field(description="the sweep's name (a registry key; trials are named <name>.<label>)")
    description: str = ""
    recipes: list[RecipeEntry] = Field(min_length=1)
    grid: dict[str, list[Any] | dict[str, dict[str, Any]]] = Field(default_factory=dict)
    cells: list[Cell] | None = None
    random: int | None = Field(None, ge=1, description="a seeded random N of the cells")
    seed: int = 0
    overrides: dict[str, Any] = Field(default_factory=dict, description="applied to every trial")
    bases: Literal["auto"] | list[str | dict[str, str]] = "auto"
    scheduler: Asha | None = None
    max_concurrent: int | None = Field(None, ge=1)
    output_root: str | None = Field(None, description="where trials write; default $MEDSCALE_HOME/runs/sweeps")
    metric: SweepMetric = Field(EVAL_LOSS, description="the leaderboard's default ranking: eval_loss, control, or a "
                                                       "benchmark")
    judge: SweepJudge | None = Field(None, description="judge each finished fine-tune against its base after the "
                                                       "trials (`medscale sweep judge`)")

    @field_validator("recipes", mode="before")
    @classmethod
    def _plain_recipes(cls, v):
        """`recipes: [tiny-demo]` (or one name): each name a recipe entry with no label, base or note."""
        v = [v] if isinstance(v, str) else v
        return [{"recipe": e} if isinstance(e, str) else e for e in v] if isinstance(v, list) else v

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not re.fullmatch(r"\w[\w.+-]{0,99}", v):
            raise ValueError(f"name {v!r}: use letters, digits and . _ + - only, at most 100 characters")
        return v

    @model_validator(mode="after")
    def _unique_labels(self) -> "SweepSpec":
        labels = [e.label or Path(e.recipe).stem for e in self.recipes]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"recipes: label {', '.join(dup)} is used twice: give each recipe its own `label`")
        if "recipe" in self.grid:
            raise ValueError("grid: `recipe` is the recipes list's axis; name this axis differently")
        return self


# --------------------------------------------------------------------------- loading


def builtin_sweep_dir() -> Path:
    return Path(str(resources.files("medscale") / "sweeps"))


def builtin_sweeps() -> list[str]:
    return sorted(p.stem for p in builtin_sweep_dir().glob("*.yaml"))


def parse_spec(data: dict, source: Path | None = None) -> SweepSpec:
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = tuple(p for p in e["loc"] if not str(p).startswith(("function-", "list[", "dict[", "str", "literal")))
            where = line_of(source, loc) if source else ""
            key = ".".join(map(str, loc)) or "(sweep)"
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                known = _known_at(loc)
                close = difflib.get_close_matches(str(loc[-1]), known, n=1)
                msg = "unknown key" + (f"; did you mean '{close[0]}'?" if close else "") + \
                    f" (known: {', '.join(known)})"
            lines.append(f"{where}{key}: {msg}")
        raise SweepError("\n".join(dict.fromkeys(lines))) from None


def _known_at(loc: tuple) -> list[str]:
    model: Any = SweepSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        ann = model.model_fields[part].annotation if part in getattr(model, "model_fields", {}) else None
        model = next((a for a in (ann, *getattr(ann, "__args__", ()),
                                  *(x for a in getattr(ann, "__args__", ()) for x in getattr(a, "__args__", ())))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def is_sweep_file(path: Path) -> bool:
    """A YAML file that is a sweep definition (it lists `recipes`), not a recipe."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "recipes" in data


def load_spec(ref: str) -> tuple[SweepSpec, str]:
    """A built-in sweep name or a sweep file -> (the validated spec, its YAML text)."""
    path = Path(os.path.expanduser(ref))
    if path.suffix not in (".yaml", ".yml"):
        path = builtin_sweep_dir() / f"{ref}.yaml"
        if not path.is_file():
            raise SweepError(f"unknown sweep '{ref}' (built-in: {', '.join(builtin_sweeps())}; or a sweep .yaml file, "
                             f"or a recipe with --grid)")
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise SweepError(f"{path}:{mark.line + 1 if mark else '?'}: not valid YAML: {getattr(e, 'problem', e)}") \
            from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep file is a YAML mapping (name, recipes, grid, ...)")
    return parse_spec(data, path), text


def spec_from_recipe(recipe: str, grid: list[str], name: str | None = None) -> tuple[SweepSpec, str]:
    """`medscale sweep run RECIPE --grid key=v1,v2 ...`: one recipe, one plain axis per --grid."""
    axes: dict[str, list] = {}
    for item in grid:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise SweepError(f"--grid {item!r}: expected key=value1,value2 (e.g. train.learning_rate=1e-4,3e-4)")
        if key in axes:
            raise SweepError(f"--grid {key} is given twice: give all its values in one --grid {key}=value1,value2")
        try:
            axes[key] = [yaml.safe_load(v) if v.strip() else None for v in _top_level_split(values)]
        except yaml.YAMLError as e:
            raise SweepError(f"--grid {item!r}: a value is not valid YAML ({getattr(e, 'problem', e)})") from None
    label = Path(recipe).stem
    data = {"name": name or f"{label}-sweep", "recipes": [{"recipe": recipe}], "grid": axes}
    spec = parse_spec(data)
    return spec, yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def _top_level_split(text: str) -> list[str]:
    """`1e-4,3e-4` -> two values; `null,[embed_tokens, lm_head]` -> two values (commas inside [] or {} stay)."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


# --------------------------------------------------------------------------- expansion


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(value):
    """YAML 1.1 reads `1e-3` as text; a sweep means the number."""
    return float(value) if isinstance(value, str) and _NUMBER.fullmatch(value) else value


def _override(key: str, value) -> str:
    """`key=value` as recipe overrides read it (JSON is YAML, so any value round-trips)."""
    return f"{key}={json.dumps(_number(value), ensure_ascii=False)}"


def _value_label(key: str, value) -> str:
    leaf = key.rsplit(".", 1)[-1]
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    clean = re.sub(r"[^\w.+-]+", "_", str(text)).strip("_") or "none"
    return f"{leaf}_{clean}"


@dataclass(kw_only=True)
class TrialPlan:
    """One cell of the grid: the trial's label, its base recipe and overrides, and the validated recipe."""

    label: str
    recipe_ref: str
    overrides: list[str]
    labels: dict[str, str]
    note: str | None
    base: str  # the base model path it is ranked against
    recipe: Recipe = field(repr=False, default=None)
    asked: list[str] = field(default_factory=list)  # what the sweep asks of the cell: `overrides` less name, output dir

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def output_dir(self) -> str:
        return os.path.abspath(self.recipe.train.output_dir)

    @property
    def processes(self) -> int:
        return self.recipe.dist.num_processes

    def cell(self) -> dict:
        """What the registry keeps of the cell (a TrialCell's JSON)."""
        return TrialCell(label=self.label, recipe=self.recipe_ref, overrides=self.overrides, labels=self.labels,
                         note=self.note, base=self.base).to_dict()


@dataclass
class SweepPlan:
    spec: SweepSpec
    definition: str
    trials: list[TrialPlan]
    bases: list[SweepBase]

    @property
    def name(self) -> str:
        return self.spec.name

    def grid(self) -> list[dict]:
        return [t.cell() for t in self.trials]

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.grid(), sort_keys=True).encode()).hexdigest()[:12]

    def trial(self, label: str) -> TrialPlan:
        return next(t for t in self.trials if t.label == label)


def _axes(spec: SweepSpec) -> dict[str, dict[str, list[str]]]:
    """Every axis as label -> overrides, the recipes first."""
    out: dict[str, dict[str, list[str]]] = {"recipe": {}}
    for e in spec.recipes:
        out["recipe"][e.label or Path(e.recipe).stem] = []
    for axis, values in spec.grid.items():
        if isinstance(values, dict):
            out[axis] = {str(label): [_override(k, v) for k, v in (tied or {}).items()]
                         for label, tied in values.items()}
            _no_repeats(axis, list(out[axis]), [sorted(o) for o in out[axis].values()])
        else:
            _no_repeats(axis, [json.dumps(_number(v), ensure_ascii=False) for v in values],
                        [_override(axis, v) for v in values])
            labels = [_value_label(axis, v) for v in values]
            if len(set(labels)) != len(labels):
                labels = [f"{axis.rsplit('.', 1)[-1]}_{i}" for i in range(len(values))]
            out[axis] = {lab: [_override(axis, v)] for lab, v in zip(labels, values)}
        if not out[axis]:
            raise SweepError(f"grid.{axis}: no values")
    return out


def _no_repeats(axis: str, names: list[str], overrides: list) -> None:
    """Two values of an axis that set the same overrides would be two identical trials (twice the compute, and a
    ranking that counts one setting twice)."""
    for i, o in enumerate(overrides):
        if o in overrides[:i]:
            first = names[overrides.index(o)]
            what = f"{first} is given twice" if first == names[i] else f"{first} and {names[i]} set the same values"
            raise SweepError(f"grid {axis}: {what} (two identical trials): drop the repeat")


def _cells(spec: SweepSpec, axes: dict) -> list[tuple[dict[str, str], list[str], str | None]]:
    """(labels per axis, extra overrides, note) of every trial: the chosen cells, or every combination."""
    if spec.cells is None:
        combos = [dict(zip(axes, combo)) for combo in itertools.product(*(list(v) for v in axes.values()))]
        cells = [(c, [], None) for c in combos]
    else:
        cells = []
        for i, cell in enumerate(spec.cells):
            chosen = {k: str(v) for k, v in (cell.model_extra or {}).items()}
            unknown = sorted(set(chosen) - set(axes))
            if unknown:
                raise SweepError(f"cells[{i}]: no axis {', '.join(unknown)} (axes: {', '.join(axes)})")
            if len(axes["recipe"]) == 1:
                chosen.setdefault("recipe", next(iter(axes["recipe"])))
            missing = [a for a in axes if a not in chosen]
            if missing:
                raise SweepError(f"cells[{i}]: say which {' and '.join(missing)} (e.g. {missing[0]}: "
                                 f"{next(iter(axes[missing[0]]))})")
            for axis, label in chosen.items():
                if label not in axes[axis]:
                    raise SweepError(f"cells[{i}].{axis}: no value '{label}' (values: {', '.join(axes[axis])})")
            cells.append((chosen, [_override(k, v) for k, v in cell.overrides.items()], cell.note))
    if spec.random is not None and spec.random < len(cells):
        keep = sorted(random.Random(spec.seed).sample(range(len(cells)), spec.random))
        cells = [cells[i] for i in keep]
    return cells


def _sweep_root(spec: SweepSpec) -> Path:
    root = Path(os.path.expanduser(spec.output_root)) if spec.output_root else medscale_home() / "runs" / "sweeps"
    return (root / spec.name).absolute()


def plan_sweep(spec: SweepSpec, definition: str, extra: list[str] | None = None,
               bases: list[str] | None = None) -> SweepPlan:
    """Every trial's recipe, validated before anything is written (all problems at once), and the bases."""
    axes, entries = _axes(spec), {e.label or Path(e.recipe).stem: e for e in spec.recipes}
    common = [_override(k, v) for k, v in spec.overrides.items()]
    root = _sweep_root(spec)
    trials, problems = [], []
    for labels, cell_overrides, note in _cells(spec, axes):
        entry = entries[labels["recipe"]]
        ref = os.path.abspath(os.path.expanduser(entry.recipe)) if entry.recipe.endswith((".yaml", ".yml")) \
            else entry.recipe  # a file is named absolutely: trials start elsewhere
        parts = [labels["recipe"]] if len(axes["recipe"]) > 1 else []
        parts += [labels[a] for a in axes if a != "recipe"]
        label = "-".join(parts) or labels["recipe"]
        asked = common + [o for a in axes for o in axes[a][labels[a]]] + cell_overrides + list(extra or [])
        overrides = asked + [f"name={spec.name}.{label}", f"train.output_dir={root / label}"]
        try:
            recipe = load_recipe(ref, overrides)
        except RecipeError as e:
            problems.append(f"trial {label}: {e}")
            continue
        if recipe.dist.num_machines > 1:
            problems.append(f"trial {label}: dist.num_machines={recipe.dist.num_machines}: a sweep trial runs on one "
                            f"node; set dist.num_machines=1")
        if spec.scheduler is not None and recipe.eval.eval_strategy != "steps":
            problems.append(f"trial {label}: scheduler asha stops trials on their eval loss, but this trial never "
                            f"evaluates during training: set eval.eval_strategy=steps and eval.eval_steps")
        base = os.path.abspath(os.path.expanduser(entry.base)) if entry.base else os.path.abspath(recipe.model.path)
        notes = "; ".join(n for n in (entry.note, note) if n) or None
        trials.append(TrialPlan(label=label, recipe_ref=ref, overrides=overrides, labels=labels, note=notes, base=base,
                                recipe=recipe, asked=asked))
    if problems:
        raise SweepError("\n".join(problems))
    dup = sorted({t.label for t in trials if [u.label for u in trials].count(t.label) > 1})
    if dup:
        raise SweepError(f"two cells make the same trial {', '.join(dup)}: drop the duplicate from `cells`")
    return SweepPlan(spec, definition, trials, _bases(spec, trials, bases))


def _bases(spec: SweepSpec, trials: list[TrialPlan], cli: list[str] | None) -> list[SweepBase]:
    """The base models ranked beside the fine-tunes: `--bases` (or the file's `bases`); `auto` = every trial's."""
    given = cli if cli is not None else spec.bases
    if given == "auto" or given == ["auto"]:
        paths = list(dict.fromkeys(t.base for t in trials))
        return [SweepBase(Path(p).name, p) for p in paths]
    rows = []
    for b in given:
        if isinstance(b, dict):
            if set(b) - {"label", "path"} or "path" not in b:
                raise SweepError(f"bases: {b}: expected a path or {{label, path}}")
            rows.append(SweepBase(b.get("label") or Path(b["path"]).name, os.path.abspath(os.path.expanduser(
                b["path"]))))
        else:
            label, sep, path = b.partition("=")
            path = path if sep else label
            rows.append(SweepBase(label if sep else Path(path).name, os.path.abspath(os.path.expanduser(path))))
    return rows
