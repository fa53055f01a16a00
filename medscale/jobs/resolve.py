"""A model reference -> the weights to load, for every command that takes a model (eval, compare, chat, export).

A reference is one of:
- a job name or id from the registry (its final adapter, or the newest verified checkpoint if it has none yet);
- a job's output dir (same), or one of its `checkpoint-N` folders;
- a PEFT adapter folder (`adapter_config.json`; its base from the adapter's own config, or `--base`);
- a model folder (`config.json` + weights): the base itself, optionally with `--adapter DIR`;
- a hub id (`Qwen/Qwen3-8B`, `Qwen/Qwen3-8B@REV`) found offline in the local caches (medscale.model.resolve).
`--checkpoint N` picks a job's checkpoint-N. An ambiguous name is an error that lists the candidates; nothing here
loads a tensor (torch-free): the caller loads what it is told.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import KW_ONLY, dataclass
from pathlib import Path

from medscale.errors import UserError
from medscale.jobs.checkpoint import MANIFEST, checkpoint_dirs, problem
from medscale.jobs.record import JOURNAL, RECIPE_FILE, read_journal
from medscale.model.resolve import find_model, hub_id, model_source
from medscale.recipe import GenerationSection, ModelSection, Recipe, load_saved

ADAPTER_CONFIG = "adapter_config.json"


class ModelRefError(UserError):
    """A model reference that names nothing loadable, or several things."""


@dataclass
class ModelRef:
    """What to load: a base model folder, optionally a LoRA adapter on top, and where it came from."""

    base: Path
    adapter: Path | None = None
    label: str = ""  # how reports name it: the job, `job@checkpoint-N`, or the folder
    _: KW_ONLY
    job_id: int | None = None
    job_name: str | None = None
    output_dir: Path | None = None
    checkpoint: Path | None = None  # the checkpoint the adapter is, when it is one
    recipe: Recipe | None = None  # the job's resolved recipe (chat template options, generation, 4-bit); None: a folder

    @property
    def model(self) -> ModelSection | None:
        """The `model` section the job trained with (4-bit, trust_remote_code), which inference loads it with."""
        return self.recipe.model if self.recipe else None

    @property
    def generation(self) -> GenerationSection:
        """The `generation` section the job was trained (and compared, and exported) with; a plain folder's sets
        no key (the defaults, each taken from a later source where one says it)."""
        return self.recipe.generation if self.recipe else GenerationSection()

    @property
    def load_in_4bit(self) -> bool:
        return bool(self.recipe and self.recipe.model.load_in_4bit)

    @property
    def trust_remote_code(self) -> bool:
        return bool(self.recipe and self.recipe.model.trust_remote_code)

    @property
    def system_prompt(self) -> str | None:
        """The prompt the job was trained with: a tuned model is asked the way it was taught."""
        return self.recipe.data.system_prompt if self.recipe else None

    @property
    def training_data(self) -> list[str]:
        """The job's training data paths (the contamination check reads them)."""
        return [src.path for src in self.recipe.data.sources] if self.recipe else []

    def base_only(self) -> "ModelRef":
        """The base this model was tuned from, as its own reference (`--against base`)."""
        return ModelRef(self.base, None, f"{self.job_name or self.label} (base)", recipe=self.recipe)

    def to_dict(self) -> dict:
        """What a result records of the model it measured."""
        return {"label": self.label, "base": str(self.base), "adapter": str(self.adapter) if self.adapter else None,
                "job_id": self.job_id, "job": self.job_name,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "load_in_4bit": self.load_in_4bit, "trust_remote_code": self.trust_remote_code,
                "system_prompt": self.system_prompt}


def _is_model_folder(p: Path) -> bool:
    return (p / "config.json").is_file()


def _base_of_recipe(recipe: Recipe, where: Path) -> Path:
    """The job's base model: its model.path, a hub id's local copy, or model.hub_id's where the folder is gone."""
    if not recipe.model.path:
        raise ModelRefError(f"{where}: its recipe names no model.path")
    found = model_source(recipe.model)
    return found.path if found is not None else Path(recipe.model.path)


def _checkpoint_of(out: Path, step: int) -> Path:
    ckpt = out / f"checkpoint-{step}"
    if not ckpt.is_dir() or problem(ckpt, check_hashes=False) is not None:
        have = ", ".join(str(s) for s, p in checkpoint_dirs(out) if (p / MANIFEST).is_file()) or "none"
        raise ModelRefError(f"--checkpoint {step}: {ckpt} is not a verified checkpoint of this job (verified: {have})")
    return ckpt


def _from_output_dir(out: Path, step: int | None, job_id: int | None = None) -> ModelRef:
    journal = read_journal(out)
    name = journal.name if journal else out.name
    recipe_file = out / RECIPE_FILE
    if not recipe_file.is_file():
        raise ModelRefError(f"{out}: no {RECIPE_FILE}: the job never started an attempt, nothing to load")
    if step is not None:
        ckpt = _checkpoint_of(out, step)
        adapter, label = ckpt, f"{name}@{ckpt.name}"
    elif (out / "adapter_model.safetensors").is_file() and (out / ADAPTER_CONFIG).is_file():
        adapter, ckpt, label = out, None, name
    else:  # not finished: its newest verified checkpoint
        verified = [p for _, p in reversed(checkpoint_dirs(out)) if problem(p, check_hashes=False) is None]
        if not verified:
            raise ModelRefError(f"job {name} ({out}) has no final adapter and no verified checkpoint yet")
        adapter = ckpt = verified[0]
        label = f"{name}@{ckpt.name}"
    recipe = load_saved(recipe_file)
    return ModelRef(_base_of_recipe(recipe, out), adapter, label, job_id=job_id, job_name=name, output_dir=out,
                    checkpoint=ckpt, recipe=recipe)


def _from_folder(p: Path, step: int | None, adapter: str | None, base: str | None) -> ModelRef:
    if (p / JOURNAL).is_file():
        return _from_output_dir(p, step)
    if step is not None:
        raise ModelRefError(f"--checkpoint {step}: {p} is not a job's output dir (no {JOURNAL})")
    if (p / ADAPTER_CONFIG).is_file():  # a checkpoint or a bare adapter folder
        recipe_file = p / RECIPE_FILE
        recipe = load_saved(recipe_file) if recipe_file.is_file() else None
        if base:
            base_path = Path(base)
        elif recipe:
            base_path = _base_of_recipe(recipe, p)
        else:
            named = json.loads((p / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
            if not named or not Path(named).is_dir():
                raise ModelRefError(f"{p} is a LoRA adapter whose base ({named!r}) is not a local folder: pass "
                                    f"--base /path/to/base-model")
            base_path = Path(named)
        is_ckpt = (p / MANIFEST).is_file()
        label = f"{p.parent.name}@{p.name}" if is_ckpt else p.name
        return ModelRef(base_path, p, label, checkpoint=p if is_ckpt else None, recipe=recipe)
    if _is_model_folder(p):
        return ModelRef(p, Path(adapter) if adapter else None, p.name if not adapter else f"{p.name}+{Path(adapter).name}")
    raise ModelRefError(f"{p} holds no model (config.json), LoRA adapter ({ADAPTER_CONFIG}) or medscale job "
                        f"({JOURNAL}): give a model folder, an output dir or a job name")


def resolve(ref: str, *, checkpoint: int | None = None, adapter: str | None = None, base: str | None = None,
            registry=None) -> ModelRef:
    """`ref` (a job name or id, an output dir, a checkpoint, an adapter or a model folder) -> ModelRef. `registry`
    (a medscale.registry.Registry) is asked only for names and ids; without one the default registry is opened."""
    p = Path(os.path.expanduser(ref))
    if p.is_dir():
        found = _from_folder(p.resolve(), checkpoint, adapter, base)
        if found.output_dir is not None or found.checkpoint is not None:
            found.job_id = _job_id_of(found.output_dir or found.checkpoint.parent, registry)
    else:
        try:
            found = _from_registry(ref, checkpoint, registry)
        except ModelRefError:
            if hub_id(ref) is None or checkpoint is not None:
                raise
            base = find_model(ref)  # no such job: a hub id, else the command that downloads it
            found = ModelRef(base.path, Path(adapter) if adapter else None,
                             ref if not adapter else f"{ref}+{Path(adapter).name}")
    if adapter and found.adapter is not None and Path(adapter) != found.adapter:
        raise ModelRefError(f"{ref} already is a tuned model ({found.adapter}): --adapter applies to a base model "
                            f"folder only")
    if not _is_model_folder(found.base):
        raise ModelRefError(f"the base model of {found.label or ref} is not a model folder: {found.base} (no "
                            f"config.json); put the weights there or pass --base")
    return found


def _job_id_of(output_dir: Path, registry) -> int | None:
    """The registry's id of the job in `output_dir` (results are stored against it); None when it is not registered
    or the registry cannot be reached (an evaluation does not need the registry)."""
    from medscale.registry import Registry, RegistryError

    try:
        session = contextlib.nullcontext(registry) if registry else Registry()  # a caller's stays open
    except RegistryError:
        return None
    with session as reg:
        rows = reg.candidates(str(output_dir))
    return rows[0][0] if len(rows) == 1 else None


def _from_registry(ref: str, checkpoint: int | None, registry) -> ModelRef:
    from medscale.registry import Registry

    with contextlib.nullcontext(registry) if registry else Registry() as reg:  # a caller's registry stays open
        rows = reg.candidates(ref)
    if not rows:
        raise ModelRefError(f"'{ref}' is no folder and no job in the registry: give a model folder, an output dir, "
                            f"or a job from `medscale jobs list`")
    if len(rows) > 1:
        listing = "; ".join(f"id {i}: {d}" for i, _, d in rows)
        raise ModelRefError(f"'{ref}' names {len(rows)} jobs ({listing}): give the id or the output dir")
    job_id, _, out = rows[0]
    if not Path(out).is_dir():
        raise ModelRefError(f"job '{ref}' (id {job_id}): its output dir {out} is gone")
    return _from_output_dir(Path(out), checkpoint, job_id)
