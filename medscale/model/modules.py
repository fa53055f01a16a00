"""What an adapter may target: the model's modules, built on the meta device from its config, and the entries of
adapter.target_modules / modules_to_save that match none (pre-flight; no weight is read)."""
from __future__ import annotations

import difflib
from pathlib import Path

import torch

from medscale.model.resolve import model_folder, shipped_config
from medscale.recipe import ModelSection, Recipe

# The layer classes peft's LoRA wraps (its other modules raise "Target module ... is not supported").
LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D", "MultiheadAttention")


def module_kinds(model: ModelSection, *, folder: Path | None = None) -> dict[str, str]:
    """Every module of the model, name -> class name, from config.json (or the tiny model's shape, or the shipped
    shape of a built-in recipe's model not downloaded yet) built on the meta device: no weight is read or allocated,
    so pre-flight can afford it for an 8B model. `folder`: where pre-flight found the model (None: looked up here)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder, shipped = folder or model_folder(model), shipped_config(model)
    if model.tiny is not None and not (folder / "config.json").is_file():
        from medscale.model.tiny import tiny_config

        config = tiny_config(3000, model.tiny.layers, model.tiny.hidden)  # the vocabulary size names no module
    elif not (folder / "config.json").is_file() and shipped is not None:
        facts = {k: v for k, v in shipped[1].items() if k not in ("model_type", "architectures")}
        config = AutoConfig.for_model(shipped[1]["model_type"], **facts)
    else:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=model.trust_remote_code)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=model.trust_remote_code)
    return {name: type(m).__name__ for name, m in skeleton.named_modules() if name}


def _closest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def adapter_problems(recipe: Recipe, *, folder: Path | None = None) -> list[str]:
    """Entries of adapter.target_modules and modules_to_save that match no module of the model, matched as peft
    matches them: peft skips such an entry without a word while another one matches (a LoRA the recipe did not
    ask for), and fails with a traceback after the model is loaded and the job recorded when none does."""
    a, where = recipe.adapter, recipe.model.path
    kinds = module_kinds(recipe.model, folder=folder)
    layers = sorted({n.rsplit(".", 1)[-1] for n, kind in kinds.items() if kind in LORA_LAYERS})
    problems = []
    for key in [] if a.target_modules == "all-linear" else a.target_modules:
        hits = [kind for n, kind in kinds.items() if n == key or n.endswith(f".{key}")]
        if not any(kind in LORA_LAYERS for kind in hits):
            what = f"is a {hits[0]}, not a layer LoRA can wrap" if hits else f"names no module of {where}"
            problems.append(f"adapter.target_modules: '{key}' {what}{_closest(key, layers)} "
                            f"(its layers: {', '.join(layers)})")
    for key in a.modules_to_save or []:
        if not any(n.endswith(key) for n in kinds):  # peft's own test for modules_to_save
            problems.append(f"adapter.modules_to_save: '{key}' names no module of {where}"
                            f"{_closest(key, sorted({n.rsplit('.', 1)[-1] for n in kinds}))}")
    return problems
