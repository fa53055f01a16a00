"""The run's data: one stage of `run()`, the tokenizer and the datasets of the cache entry the RunPlan names."""
from __future__ import annotations

from pathlib import Path

from medscale.jobs.runplan import DataManifest, RunPlan
from medscale.recipe import Recipe


def prepare_data(recipe: Recipe, args, decided: RunPlan, launch: str | None):
    """Tokenizer (from the folder the plan found) and datasets: the cache entry the RunPlan names (pre-flight
    tokenized it). A run that decided for itself tokenizes here, the main process first (the others load its
    cache), and records its plan, data manifest included, beside the journal (`launch`: its LaunchInfo stamp). The
    main process builds the tiny demo model if asked. Bad data raises DataError here, before the attempt starts."""
    from medscale.data.pipeline import build_datasets, cache_root, cached_datasets
    from medscale.model.tiny import ensure_tiny_model
    from medscale.model.tokenizer import load_tokenizer

    seed = recipe.train.seed
    with args.main_process_first(desc="build model folder and datasets"):
        if args.local_process_index == 0:
            ensure_tiny_model(recipe.model)
        tok = load_tokenizer(recipe.model, folder=Path(decided.model_dir))
        data = cached_datasets(Path(decided.data.cache), recipe.data, tok, seed) if decided.data else None
        if data is None:  # decided here, or its cache entry was removed since
            data = build_datasets(recipe.data, tok, seed, decided.memory.token_budget, cache_root())
    if recipe.train.compile != "off":  # a compiled step sees a few row lengths (a graph each), not one per batch
        data.collator.row_cap = decided.memory.token_budget or args.per_device_train_batch_size * recipe.data.max_length
    if decided.launch is None and args.process_index == 0:
        decided.data = DataManifest.of(recipe, data)
        decided.save(recipe.train.output_dir, launch)
    return tok, data
