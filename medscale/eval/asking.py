"""How compare, chat, `eval --parity` and `medscale serve` ask a model through the generation engine: a model
reference loaded by the shared loader (base + adapter, training's 4-bit config, the tokenizer and chat template saved
with the job) into the in-process backend with the job's think handling, or an OpenAI-compatible endpoint; and the
sampling settings with the source of each key.
"""
from __future__ import annotations

from medscale.generate.settings import Resolved, resolve


def job_thinking(ref) -> bool | None:
    """The job's think handling: generation.enable_thinking of its recipe (None: the chat template's default)."""
    return ref.generation.enable_thinking


def sampling(cli: dict, *, recipe_file: str | None = None, ref=None, greedy: bool = False) -> Resolved:
    """Settings from the flags given, then `recipe_file`'s generation section (or else the job's own, where `ref`
    is a job), then the model folder's generation_config.json, then medscale's defaults."""
    if recipe_file:
        from medscale.recipe import load_recipe

        section = load_recipe(recipe_file).generation
    else:
        section = ref.generation if ref is not None else None
    return resolve(cli, recipe=section, model_dir=ref.base if ref is not None else None, greedy=greedy)


def local_backend(ref, *, enable_thinking: bool | None = None, dtype: str = "auto", batch_size: int | None = None,
                  mode: str = "auto"):
    """The in-process backend over `ref` loaded by the shared loader; `enable_thinking` None: the job's own."""
    from medscale.generate.local import LocalBackend
    from medscale.model.infer import load_for_inference

    model, tok = load_for_inference(ref.base, ref.adapter, dtype, trained=ref.model)
    thinking = enable_thinking if enable_thinking is not None else job_thinking(ref)
    return LocalBackend(model, tok, mode=mode, batch_size=batch_size, enable_thinking=thinking)


def release(backend) -> None:
    """Free an in-process backend's model before the next one loads (compare loads models one after another)."""
    from medscale.model.infer import free_memory

    backend.model = None
    free_memory()

