"""Resuming compares the checkpoint's recipe with the new one as typed recipes (issue 21, deliverable 3): the saved
recipe.resolved.yaml is read as this version reads it (medscale.recipe.load_saved), old files included, and the
differences are named key by key as before."""
from __future__ import annotations

import yaml

from medscale.jobs.record import RECIPE_FILE
from medscale.jobs.resume import _saved_recipe, recipe_changes
from medscale.recipe import load_recipe


def _saved(tmp_path, recipe, edit=None):
    """A checkpoint folder holding `recipe` as a job recorded it, its YAML edited by `edit` (an older version's)."""
    data = yaml.safe_load(recipe.to_yaml())
    if edit:
        edit(data)
    ckpt = tmp_path / "checkpoint-2"
    ckpt.mkdir()
    (ckpt / RECIPE_FILE).write_text(yaml.safe_dump(data), encoding="utf-8")
    return _saved_recipe(ckpt)


def test_an_old_jobs_recipe_loads_and_is_compared_key_by_key(tmp_path):
    """A recipe recorded by another version (a key this one does not know, one it added since missing) still loads;
    only what changed is named, safe and unsafe apart, with the values as the recipe file writes them (swanlab: null
    writes report_to without swanlab, and is no change)."""
    recipe = load_recipe("tiny-demo", ["train.max_steps=20", "track.swanlab=null"])

    def older(data):
        data["train"]["old_knob"] = 3  # gone from this version: left out
        del data["train"]["keep_best_checkpoint"]  # newer than the job: not compared

    saved = _saved(tmp_path, recipe, older)
    now = load_recipe("tiny-demo", ["train.max_steps=40", "train.learning_rate=1e-3",
                                    "train.keep_best_checkpoint=true", "track.swanlab=null"])
    safe, unsafe = recipe_changes(saved, now)
    assert safe == ["train.max_steps: 20 -> 40"]
    assert unsafe == [f"train.learning_rate: {recipe.train.learning_rate!r} -> 0.001"]
    assert recipe_changes(saved, recipe) == ([], [])


def test_a_section_switched_on_since_the_checkpoint_is_a_change(tmp_path):
    """Comparing flattened dicts skipped a section that was null in the checkpoint's recipe and set now (its keys
    were on one side only): adaptive clipping turned on mid-job resumed without a word. Typed, it is named."""
    saved = _saved(tmp_path, load_recipe("tiny-demo"))
    now = load_recipe("tiny-demo", ["train.adaptive_clip={percentile: 95}"])
    safe, unsafe = recipe_changes(saved, now)
    assert safe == [] and [u.split(":")[0] for u in unsafe] == ["train.adaptive_clip"]
