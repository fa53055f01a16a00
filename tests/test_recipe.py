"""Recipe schema: built-ins carry the seeds' values; bad recipes fail with one clear message."""
from __future__ import annotations

import pytest
import yaml

from conftest import cli, run_cli
from medscale.recipe import RecipeError, builtin_names, load_recipe

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_loads_and_round_trips(name, tmp_path):
    r = load_recipe(name)
    assert r.name == name and r.description
    # the resolved YAML is itself a valid recipe with the same fingerprint
    f = tmp_path / "resolved.yaml"
    f.write_text(r.to_yaml(), encoding="utf-8")
    assert load_recipe(str(f)).fingerprint() == r.fingerprint()


def test_builtin_list_is_complete():
    expected = {"qwen3-1.7b-qlora-v1", "qwen3-1.7b-qlora-v2", "qwen3-1.7b-qlora-v3", "qwen3-8b-lora-huatuo",
                "tiny-demo"} | {f"r1-distill-{s}-lora-{v}" for s in ("1.5b", "7b", "14b") for v in ("fast", "gentle")}
    assert set(builtin_names()) == expected


def test_qlora_v1_carries_seed_values():
    r = load_recipe("qwen3-1.7b-qlora-v1")
    m, a, t = r.model, r.adapter, r.train
    assert m.load_in_4bit and m.bnb_4bit_quant_type == "nf4" and m.bnb_4bit_use_double_quant
    assert m.bnb_4bit_compute_dtype == "bfloat16" and m.hub_id == "Qwen/Qwen3-1.7B"
    assert (a.r, a.lora_alpha, a.lora_dropout, a.target_modules) == (64, 32, 0.1, SEVEN)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 2)
    assert (t.learning_rate, t.lr_scheduler_type, t.optim, t.max_grad_norm) == (2e-4, "linear", "paged_adamw_8bit", 0.3)
    assert t.num_train_epochs == 3 and r.data.max_length == 2048
    assert r.data.sources[0].format == "r1-think"
    assert r.track.swanlab.project == "qwen3-sft-medical"


def test_qlora_v2_and_v3_inherit_and_change_only_what_the_seed_says():
    v1, v2, v3 = (load_recipe(f"qwen3-1.7b-qlora-v{i}") for i in (1, 2, 3))
    assert (v2.train.lr_scheduler_type, v2.train.warmup_ratio) == ("cosine", 0.1)
    assert v2.adapter.modules_to_save == ["embed_tokens", "lm_head"] and v2.adapter.lora_dropout == 0.1
    assert v2.adapter.r == v1.adapter.r == 64 and v2.train.optim == v1.train.optim
    assert v3.data.term_masking.p == 0.15 and v3.data.term_masking.progressive
    assert (v3.train.warmup_steps, v3.train.warmup_ratio) == (50, 0)
    assert v3.train.adaptive_clip is not None and v3.train.lr_scheduler_type == "cosine"
    assert v1.data.term_masking is None and v1.train.adaptive_clip is None


def test_8b_huatuo_carries_seed_values():
    r = load_recipe("qwen3-8b-lora-huatuo")
    assert r.model.dtype == "bfloat16" and not r.model.load_in_4bit and r.model.hub_id == "Qwen/Qwen3-8B"
    assert (r.adapter.r, r.adapter.lora_alpha, r.adapter.lora_dropout, r.adapter.target_modules) == (16, 32, 0.05, SEVEN)
    t = r.train
    assert t.gradient_checkpointing and (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (4, 2)
    assert r.dist.num_processes == 4 and t.effective_batch_size == 32
    assert (t.num_train_epochs, t.learning_rate, t.warmup_ratio) == (2, 2e-5, 0.05)
    assert r.data.max_length == 2048 and r.data.sources[0].format == "huatuo"
    assert r.data.sources[0].limit == 100_000 and r.data.eval_size == 500


@pytest.mark.parametrize("size", ["1.5b", "7b", "14b"])
@pytest.mark.parametrize("variant,lr,steps", [("fast", 2e-4, 60), ("gentle", 5e-6, 30)])
def test_r1_distill_recipes(size, variant, lr, steps):
    r = load_recipe(f"r1-distill-{size}-lora-{variant}")
    assert r.model.load_in_4bit and (r.adapter.r, r.adapter.lora_alpha) == (16, 16)
    assert (r.train.learning_rate, r.train.max_steps) == (lr, steps)
    assert r.data.max_length == 8192 and r.data.sources[0].format == "medical-o1"
    assert (r.eval.eval_strategy, r.eval.eval_steps, r.eval.eval_on_start) == ("steps", 5, True)
    assert size.upper() in r.model.hub_id


def test_overrides_apply_with_types():
    r = load_recipe("qwen3-8b-lora-huatuo", ["train.learning_rate=5e-6", "adapter.r=8",
                                             "adapter.target_modules=[q_proj,v_proj]", "track.swanlab=null"])
    assert r.train.learning_rate == 5e-6 and r.adapter.r == 8
    assert r.adapter.target_modules == ["q_proj", "v_proj"] and r.track.swanlab is None


def test_paths_follow_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MEDSCALE_MODELS", str(tmp_path / "m"))
    assert load_recipe("qwen3-8b-lora-huatuo").model.path == str(tmp_path / "m" / "Qwen3-8B")
    assert load_recipe("tiny-demo").train.output_dir.startswith(str(tmp_path / "home"))


def test_fingerprint_ignores_key_order(tmp_path):
    r = load_recipe("tiny-demo")
    data = r.model_dump(mode="json")
    reordered = {k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(data.items())}
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump(reordered, sort_keys=False, allow_unicode=True), encoding="utf-8")
    assert load_recipe(str(f)).fingerprint() == r.fingerprint()
    assert load_recipe("tiny-demo", ["train.seed=7"]).fingerprint() != r.fingerprint()


def _error(name, overrides):
    with pytest.raises(RecipeError) as e:
        load_recipe(name, overrides)
    return str(e.value)


def test_unknown_key_names_path_and_suggestion():
    msg = _error("tiny-demo", ["train.learnin_rate=1e-4"])
    assert "unknown key 'train.learnin_rate'" in msg and "did you mean 'train.learning_rate'" in msg


def test_unknown_key_in_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("base: tiny-demo\nadapter:\n  r: 8\n  lora_alpah: 16\n", encoding="utf-8")
    msg = _error(str(f), [])
    assert f"{f}:4:" in msg and "did you mean 'adapter.lora_alpha'" in msg


def test_wrong_type_names_key_and_expected_type():
    msg = _error("tiny-demo", ["adapter.r=sixteen"])
    assert "adapter.r: expected an integer" in msg and "sixteen" in msg


def test_an_error_in_an_override_names_the_override_not_the_builtin_file():
    """The user typed the override; the built-in recipe file is one they never edited."""
    msg = _error("tiny-demo", ["train.learning_rate=abc"])
    assert msg == "override 'train.learning_rate=abc': train.learning_rate: expected a number, got 'abc'"
    assert _error("tiny-demo", ["data.sources=[{path: x, format: bad}]"]).startswith(
        "override 'data.sources=[{path: x, format: bad}]': data.sources.0.format:")
    assert _error("tiny-demo", ["train.warmup_steps=10"]).startswith("override 'train.warmup_steps=10': set "
                                                                     "train.warmup_ratio or train.warmup_steps")
    # a cross-field check no single override explains: the file *with* the overrides
    msg = _error("qwen3-8b-lora-huatuo", ["dist.num_processes=3"])
    assert "qwen3-8b-lora-huatuo.yaml with dist.num_processes=3: train.effective_batch_size=32" in msg
    assert "recipes/tiny-demo.yaml" not in _error("tiny-demo", ["adapter.r=0", "train.learning_rate=1e-4"])


def test_batch_that_cannot_divide():
    msg = _error("qwen3-8b-lora-huatuo", ["dist.num_processes=3"])
    assert "train.effective_batch_size=32" in msg and "3" in msg


def test_warmup_ratio_and_steps_are_exclusive():
    assert "not both" in _error("tiny-demo", ["train.warmup_steps=5"])


def test_unknown_recipe_suggests_name():
    assert "did you mean 'tiny-demo'" in _error("tiny-dmeo", [])


def test_bad_override_syntax():
    assert "section.key=value" in _error("tiny-demo", ["train.learning_rate"])


def test_cli_exits_2_with_one_message_and_writes_nothing(tmp_path, medscale_home):
    out = tmp_path / "out"
    p = run_cli("train", "tiny-demo", f"train.output_dir={out}", "train.lerning_rate=1")
    assert p.returncode == 2
    assert "unknown key 'train.lerning_rate'" in p.stderr and "Traceback" not in p.stderr
    assert not out.exists() and not medscale_home.exists()


def test_missing_model_folder_says_what_to_download(tmp_path):
    p = run_cli("train", "qwen3-8b-lora-huatuo", f"model.path={tmp_path}/nowhere",
                f"train.output_dir={tmp_path}/out", "dist.num_processes=1", "train.effective_batch_size=8")
    assert p.returncode == 2
    assert f"download Qwen/Qwen3-8B into {tmp_path}/nowhere" in p.stderr and "model.path=" in p.stderr
    assert not (tmp_path / "out").exists()


def test_4bit_without_cuda_is_refused(tmp_path, tiny_model_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    p = run_cli("train", "tiny-demo", f"model.path={tiny_model_dir}", "model.load_in_4bit=true",
                f"train.output_dir={tmp_path}/out")
    assert p.returncode == 2 and "model.load_in_4bit needs a CUDA GPU" in p.stderr
    assert not (tmp_path / "out").exists()


def test_cli_recipes_and_show():
    p = run_cli("recipes")
    assert p.returncode == 0 and len([ln for ln in p.stdout.splitlines() if ln.strip()]) == len(builtin_names())
    p = run_cli("recipe", "show", "qwen3-1.7b-qlora-v2", "train.learning_rate=1e-4")
    shown = yaml.safe_load(p.stdout)
    assert p.returncode == 0 and shown["train"]["learning_rate"] == 1e-4
    assert shown["train"]["lr_scheduler_type"] == "cosine" and p.stdout.startswith("# fingerprint: ")


def test_yaml_no_is_a_string_not_false():
    assert load_recipe("tiny-demo", ["eval.eval_strategy=no"]).eval.eval_strategy == "no"
    assert load_recipe("tiny-demo", ["train.bf16=false"]).train.bf16 is False


def test_schema_json_describes_every_section():
    import json

    p = cli("recipe", "schema", "--json")
    schema = json.loads(p.stdout)
    assert p.returncode == 0 and set(schema["properties"]) >= {"model", "data", "adapter", "train", "dist", "track", "eval"}


def test_every_recipe_key_has_a_description():
    """`medscale recipe schema` is the reference: a key without a description is a key nobody can look up."""
    from medscale.recipe import Recipe, recipe_keys

    rows = recipe_keys()
    assert not [f"{r.section}.{r.key}".strip(".") for r in rows if not (r.description or "").strip()]
    leaves = {f"{r.section}.{r.key}" for r in rows if r.section and r.key}
    assert {"train.learning_rate", "data.sources[].format", "model.tiny.layers", "train.adaptive_clip.window",
            "track.swanlab.mode"} <= leaves
    assert {r.section for r in rows if not r.key} == set(Recipe.model_fields) - {"name", "description"}


def test_schema_is_a_readable_table_by_default():
    p = cli("recipe", "schema")
    assert p.returncode == 0
    header = next(ln for ln in p.stdout.splitlines() if "section" in ln)
    assert [w for w in header.replace("┃", " ").split()] == ["section", "key", "type", "default", "description"]
    row = next(ln for ln in p.stdout.splitlines() if " learning_rate " in ln)
    assert [c.strip() for c in row.split("│")[1:5]] == ["train", "learning_rate", "float", "0.0002"]
    assert "peak learning rate" in row
