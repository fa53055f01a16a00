"""The generation engine: sampling settings and their sources, seeded sampling, the per-question cache surviving
SIGKILL, and the endpoint backend against a real server process."""
from __future__ import annotations

import json

import pytest

from medscale.errors import UserError
from medscale.generate.settings import SamplingSettings, resolve
from medscale.recipe import GenerationSection


def _model_folder(tmp_path, **generation_config):
    (tmp_path / "generation_config.json").write_text(json.dumps(generation_config), encoding="utf-8")
    return tmp_path


def test_each_setting_comes_from_the_first_source_that_sets_it(tmp_path):
    """R1-Distill's generation_config.json (0.6 / 0.95) wins over medscale's defaults; the recipe's explicit keys
    over the model's; the command line over both. Keys nobody set are medscale defaults."""
    folder = _model_folder(tmp_path, do_sample=True, temperature=0.6, top_p=0.95, bos_token_id=1)
    r = resolve(model_dir=folder)
    assert (r.settings.temperature, r.settings.top_p) == (0.6, 0.95)
    assert r.sources["temperature"] == "generation_config.json" and r.sources["seed"] == "default"
    r = resolve(cli={"n_samples": 4, "temperature": None}, recipe=GenerationSection(top_p=0.8, max_new_tokens=64),
                model_dir=folder)
    assert (r.settings.temperature, r.settings.top_p, r.settings.max_new_tokens, r.settings.n_samples) == \
        (0.6, 0.8, 64, 4)
    assert r.sources == {"do_sample": "generation_config.json", "temperature": "generation_config.json",
                         "top_p": "recipe", "top_k": "default", "n_samples": "cli", "seed": "default",
                         "max_new_tokens": "recipe", "think_budget": "default"}
    assert "top_p from recipe" in r.line()


def test_the_recipes_default_values_are_not_choices():
    """GenerationSection() carries 0.7 / 0.9 as defaults; only keys a recipe writes count as the recipe's."""
    r = resolve(recipe=GenerationSection())
    assert set(r.sources.values()) == {"default"}


def test_greedy_is_explicit_and_overrides_the_model(tmp_path):
    r = resolve(greedy=True, model_dir=_model_folder(tmp_path, do_sample=True, temperature=0.6))
    assert not r.settings.do_sample and r.sources["do_sample"] == "cli"
    assert resolve(recipe=GenerationSection(temperature=0)).settings.do_sample is False


def test_bad_settings_name_the_key_and_source():
    with pytest.raises(UserError, match=r"identical answers"):
        resolve(cli={"n_samples": 4}, greedy=True)
    with pytest.raises(UserError, match=r"generation.top_p \(from cli\)"):
        resolve(cli={"top_p": 1.5})


def test_the_fingerprint_ignores_n_samples_and_greedy_ignores_temperature():
    a = SamplingSettings(n_samples=1)
    assert a.fingerprint("m") == SamplingSettings(n_samples=8).fingerprint("m") != a.fingerprint("other")
    assert SamplingSettings(do_sample=False, temperature=0.3).fingerprint() == \
        SamplingSettings(do_sample=False).fingerprint()
    assert a.sample_key("q1", 0) != a.sample_key("q1", 1) != SamplingSettings(seed=1).sample_key("q1", 1)
