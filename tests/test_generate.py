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


def test_a_recipe_sets_every_sampling_key_and_its_resolved_copy_chooses_nothing_it_did_not(tmp_path):
    """generation.{do_sample, n_samples, seed} are recipe keys like the others; a written-out recipe (every key
    present, do_sample null) still leaves sampling to the model's generation_config.json."""
    from medscale.recipe import load_recipe

    folder = _model_folder(tmp_path, do_sample=True, temperature=0.6)
    written = tmp_path / "recipe.resolved.yaml"
    written.write_text(load_recipe("tiny-demo", ["generation.n_samples=4", "generation.seed=7"]).to_yaml())
    recipe = load_recipe(str(written))
    r = resolve(recipe=recipe.generation, model_dir=folder)
    assert (r.settings.n_samples, r.settings.seed, r.sources["n_samples"], r.sources["seed"]) == (4, 7, "recipe",
                                                                                                  "recipe")
    assert r.settings.do_sample and r.sources["do_sample"] == "generation_config.json"
    greedy = load_recipe("tiny-demo", ["generation.do_sample=false"]).generation
    assert resolve(recipe=greedy, model_dir=folder).settings.do_sample is False


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


# --------------------------------------------------------------------------- the engine (CPU, tiny random Qwen3)

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from medscale.generate.engine import Request, generate  # noqa: E402

REQUESTS = [Request(f"q{i}", [{"role": "user", "content": "头痛" * (i + 1) + "，应该怎么办？"}]) for i in range(6)]
SAMPLED = SamplingSettings(n_samples=2, max_new_tokens=10, seed=3, temperature=0.8, top_k=50)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def _local(tiny, **kw):
    from medscale.generate.local import LocalBackend

    return LocalBackend(*tiny, mode="padded", **kw)


def _texts(run) -> dict:
    return {(g.id, g.sample): g.text for g in run.generations}


def test_seeded_samples_do_not_depend_on_batch_composition(tiny):
    """The same (seed, question, sample) gives the same text whether it shares a batch of 4 with others, or is
    asked among fewer questions in another order in batches of 2; another seed gives other samples."""
    full = _texts(generate(REQUESTS, SAMPLED, _local(tiny, batch_size=4)))
    part = _texts(generate(REQUESTS[::-2], SAMPLED, _local(tiny, batch_size=2)))
    assert part and all(full[k] == v for k, v in part.items())
    assert full[("q0", 0)] != full[("q0", 1)]  # two samples of one question differ
    other = _texts(generate(REQUESTS, SAMPLED.model_copy(update={"seed": 4}), _local(tiny, batch_size=4)))
    assert sum(other[k] != full[k] for k in full) > len(full) // 2


def test_padded_batches_are_planned_from_the_kv_cache_that_fits(tiny):
    """The batch the engine takes without --batch-size: KV cache (2 x layers x kv heads x head dim x bytes per token,
    times the longest request) plus one fp32 logits row per request, in 60% of free memory, at most 256; 8 on CPU."""
    from medscale.generate.local import fit_batch

    model, _ = tiny
    c = model.config
    per_request = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4 * 1000 + c.vocab_size * 4
    assert fit_batch(model, 1000, free=int(per_request * 20 / 0.6) + 1) == 20
    assert fit_batch(model, 2000, free=int(per_request * 20 / 0.6) + 1) == 10  # twice as long, half as many
    assert fit_batch(model, 1000, free=10 ** 15) == 256 and fit_batch(model, 1000, free=1) == 1
    assert fit_batch(model, 1000) == 8  # on CPU


def test_a_think_budget_closes_the_think_block(tiny):
    run = generate(REQUESTS[:2], SamplingSettings(do_sample=False, max_new_tokens=6, think_budget=4), _local(tiny))
    assert all("</think>" in g.text for g in run.generations)
    assert run.backend["backend"] == "in-process padded (eager decode)"


KILLED_RUN = """
import sys
from transformers import AutoModelForCausalLM, AutoTokenizer
from medscale.generate.engine import Request, generate
from medscale.generate.local import LocalBackend
from medscale.generate.settings import SamplingSettings
model_dir, cache, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
requests = [Request(f"q{i}", [{"role": "user", "content": "头痛" * (i + 1) + "，应该怎么办？"}]) for i in range(n)]
generate(requests, SamplingSettings(n_samples=2, max_new_tokens=16, seed=3, temperature=0.8, top_k=50),
         LocalBackend(model, tok, mode="padded", batch_size=1), cache=cache)
"""


def test_a_sigkilled_generation_resumes_from_its_cache_with_the_same_result(tiny, tiny_model_dir, tmp_path):
    n = 6
    settings = SAMPLED.model_copy(update={"max_new_tokens": 16})
    requests = [Request(f"q{i}", [{"role": "user", "content": "头痛" * (i + 1) + "，应该怎么办？"}]) for i in range(n)]
    cache = tmp_path / "generations.jsonl"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tiny_model_dir), str(cache), str(n)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None and (not cache.exists() or cache.read_text().count("\n") < 2):
        threading.Event().wait(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    kept = cache.read_text().count("\n")
    assert 2 <= kept < 2 * n
    with open(cache, "ab") as f:  # what a kill inside write() leaves: a torn last line
        f.write(b'{"id": "q5", "sample": 1, "finger')
    resumed = generate(requests, settings, _local(tiny, batch_size=6), cache=cache)
    assert (resumed.cached, resumed.generated) == (kept, 2 * n - kept)
    assert _texts(resumed) == _texts(generate(requests, settings, _local(tiny, batch_size=6)))
    again = generate(requests, settings, _local(tiny), cache=cache)  # the file is whole again: all cached
    assert (again.cached, again.generated) == (2 * n, 0)


# --------------------------------------------------------------------------- the endpoint backend, a real server

from test_serve import served  # noqa: E402 - `medscale serve` as its own process


def test_the_endpoint_backend_gets_the_in_process_samples_from_a_served_model(tiny, served_tiny, monkeypatch,
                                                                              caplog):
    from medscale.generate.endpoint import EndpointBackend

    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-shown")
    run = generate(REQUESTS, SAMPLED, EndpointBackend(served_tiny[1], concurrency=3))
    assert run.backend["served_model"] == "tiny" and run.backend["server_version"].startswith("medscale-serve")
    assert _texts(run) == _texts(generate(REQUESTS, SAMPLED, _local(tiny, batch_size=4)))
    assert "sk-never-shown" not in caplog.text + str(run.backend)


def test_a_server_killed_mid_run_gives_retries_then_one_line_and_the_rerun_continues(tiny_model_dir, served_tiny,
                                                                                   tmp_path, caplog):
    from medscale.generate.endpoint import EndpointBackend, EndpointError

    cache = tmp_path / "generations.jsonl"
    many = [Request(f"q{i}", r.messages) for i, r in enumerate(REQUESTS * 2)]
    with served(tiny_model_dir, "--name", "tiny") as (proc, url):
        def kill_after_first_answers():
            while not cache.exists() or cache.read_text().count("\n") < 2:
                threading.Event().wait(0.02)
            proc.kill()

        killer = threading.Thread(target=kill_after_first_answers)
        killer.start()
        with pytest.raises(EndpointError) as err:
            generate(many, SAMPLED, EndpointBackend(url, concurrency=1, retries=2, backoff=0.05), cache=cache)
        killer.join()
    message = str(err.value)
    assert "\n" not in message and "failed 3 times" in message and url.removesuffix("/v1") in message
    assert "retry 1/2" in caplog.text and "retry 2/2" in caplog.text
    kept = cache.read_text().count("\n")
    url2 = served_tiny[1]  # another server of the same model
    rerun = generate(many, SAMPLED, EndpointBackend(url2, concurrency=2), cache=cache)
    whole = generate(many, SAMPLED, EndpointBackend(url2, concurrency=2))
    assert _texts(rerun) == _texts(whole)
    assert rerun.cached == kept > 0


def test_static_cache_decoding_gives_the_eager_texts_greedy_and_sampled(tiny):
    """Static decoding (prompt widths rounded up to one shape, a preallocated cache: what the compiled GPU path runs)
    answers exactly as the growing cache does, greedy and seeded-sampled; an unknown decode is refused."""
    from medscale.generate.local import LocalBackend

    sampled = SAMPLED.model_copy(update={"n_samples": 1, "max_new_tokens": 6})
    for s in (sampled.model_copy(update={"do_sample": False}), sampled):
        eager = generate(REQUESTS[2:5], s, _local(tiny, batch_size=3, decode="eager"))
        static = generate(REQUESTS[2:5], s, _local(tiny, batch_size=3, decode="static"))
        assert _texts(static) == _texts(eager)
        assert static.backend["backend"] == "in-process padded (static decode)"
    with pytest.raises(ValueError, match="decode must be"):
        LocalBackend(*tiny, decode="graphs")
