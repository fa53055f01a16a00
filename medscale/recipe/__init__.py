"""The Recipe: one validated, typed description of a fine-tuning run.

A recipe is YAML (a built-in name or a path) plus `a.b.c=value` overrides. It is
validated once, here, into the `Recipe` object that `medscale.train.run` receives;
nothing downstream re-reads dicts, so a typo can never silently become a default.
Keys follow the HF names (TrainingArguments, LoraConfig, BitsAndBytesConfig) so
users' habits carry over.

One module per program: `sections/` (the fields, one module per domain), `schema`
(the Recipe and its cross-section checks), `load` (YAML, `base:`, ${VAR}, overrides),
`explain` (errors at the file:line or the override), `fingerprint`, `keys` (the
reference `medscale recipe schema` prints). Import the names from here.
"""
from medscale.recipe.base import RecipeError, Section
from medscale.recipe.explain import line_of
from medscale.recipe.keys import KeyDoc, recipe_keys, recipe_schema
from medscale.recipe.load import (apply_overrides, builtin_dir, builtin_names, demo_data_dir, load_recipe,
                                  load_saved, parse_override, saved_recipe, validate)
from medscale.recipe.schema import Recipe
from medscale.recipe.sections.adapter import AdapterSection
from medscale.recipe.sections.data import FORMAT_NAMES, DataSection, DataSource, TermMasking
from medscale.recipe.sections.dist import DistSection
from medscale.recipe.sections.eval import BenchmarkSource, EvalSection
from medscale.recipe.sections.generation import GenerationSection
from medscale.recipe.sections.model import ModelSection, TinySpec
from medscale.recipe.sections.track import SwanLab, TrackSection
from medscale.recipe.sections.train import AdaptiveClip, TrainSection

__all__ = ["AdapterSection", "AdaptiveClip", "BenchmarkSource", "DataSection", "DataSource",
           "DistSection", "EvalSection", "FORMAT_NAMES", "GenerationSection", "KeyDoc", "ModelSection", "Recipe",
           "RecipeError", "Section", "SwanLab", "TermMasking", "TinySpec", "TrackSection", "TrainSection",
           "apply_overrides", "builtin_dir", "builtin_names", "demo_data_dir", "line_of", "load_recipe",
           "load_saved", "parse_override", "recipe_keys", "recipe_schema", "saved_recipe", "validate"]
