"""Issue 21, "one of each": one model loader for training and inference (a QLoRA job's base is loaded for eval,
compare, chat and export with the quantization config training built, compute dtype and storage included), and the
built-in benchmarks listed once, in medscale/benchmarks.py."""
from __future__ import annotations

import ast
import re

import pytest
import torch
from conftest import REPO, write_mcq_set

from medscale.benchmarks import BUILTINS, MEDICAL_ZH, Builtin
from medscale.recipe import load_recipe

# every 4-bit key away from its default, so a config built anywhere else differs somewhere
QLORA = ["model.load_in_4bit=true", "model.bnb_4bit_compute_dtype=float16", "model.bnb_4bit_quant_storage=float16",
         "model.bnb_4bit_quant_type=fp4", "model.bnb_4bit_use_double_quant=false"]


class Loaded(Exception):
    """Raised where transformers would read the weights: the arguments are what this test is after."""


def test_inference_loads_a_qlora_base_with_the_config_training_built(monkeypatch, tiny_model_dir):
    """Inference quantizes on CUDA only, so on a CPU runner the GPU path is followed up to transformers'
    from_pretrained, where the two loaders' arguments are compared."""
    import transformers

    from medscale.model.infer import load_for_inference
    from medscale.model.load import load_base_model

    seen: list[dict] = []

    def from_pretrained(path, **kwargs):
        seen.append(kwargs)
        raise Loaded

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    recipe = load_recipe("tiny-demo", QLORA)
    with pytest.raises(Loaded):
        load_base_model(recipe.model)
    with pytest.raises(Loaded):  # the job's model section, as a model reference hands it over
        load_for_inference(tiny_model_dir, trained=recipe.model, device=torch.device("cuda", 0))
    trained, inferred = (kwargs["quantization_config"].to_dict() for kwargs in seen)
    assert inferred == trained
    assert (trained["bnb_4bit_compute_dtype"], trained["bnb_4bit_quant_storage"]) == ("float16", "float16")
    assert (trained["bnb_4bit_quant_type"], trained["bnb_4bit_use_double_quant"]) == ("fp4", False)
    assert seen[1]["trust_remote_code"] is False and seen[1]["device_map"] == {"": 0}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bitsandbytes 4-bit inference)")
def test_a_qlora_base_loaded_for_inference_computes_and_stores_in_the_recipes_dtypes(tiny_model_dir):
    from medscale.model.infer import load_for_inference

    model, _ = load_for_inference(tiny_model_dir, trained=load_recipe("tiny-demo", QLORA).model)
    proj = model.model.layers[0].self_attn.q_proj
    assert type(proj).__name__ == "Linear4bit" and proj.weight.quant_type == "fp4"
    assert proj.compute_dtype == torch.float16 and proj.weight.dtype == torch.float16  # compute dtype, quant storage
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # inference's own dtype for the rest (auto)


# --------------------------------------------------------------------------- benchmarks, listed once


def test_a_benchmark_added_to_the_registry_is_one_a_recipe_may_name_and_eval_loads(monkeypatch, tmp_path):
    from medscale.eval.bench import load_benchmark

    monkeypatch.setitem(BUILTINS, "exam-zh", Builtin("mcq40.jsonl", "zh", "a test's own file"))
    write_mcq_set(tmp_path, n=8)
    assert load_recipe("tiny-demo", ["eval.benchmarks=[exam-zh]"]).eval.benchmarks == ["exam-zh"]
    b = load_benchmark("exam-zh", data_dir=tmp_path)
    assert (b.name, b.language, len(b.questions)) == ("exam-zh", "zh", 8)


def _names_in(text: str) -> set[str]:
    return set(re.findall(rf"(?<![\w-])({'|'.join(map(re.escape, BUILTINS))})(?![\w-])", text))


def test_no_module_but_medscale_benchmarks_lists_the_benchmark_names():
    """One name alone is an example (`bench/cmmlu-med/acc`); two or more in one module is a second list."""
    lists = {}
    for path in sorted(p for root in ("medscale", "launcher", "bench") for p in (REPO / root).rglob("*.py")):
        if path == REPO / "medscale" / "benchmarks.py":
            continue
        strings = [n.value for n in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                   if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        names = _names_in("\n".join(strings))
        if len(names) > 1:
            lists[str(path.relative_to(REPO))] = sorted(names)
    assert not lists, f"benchmark names listed outside medscale/benchmarks.py (derive them from BUILTINS): {lists}"


def test_readme_shows_the_registry_and_the_default_set():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme.split("| name | put under `$MEDSCALE_EVAL_DATA` | from |", 1)[1].split("\n\n", 1)[0]
    rows = re.findall(r"^\| `([\w-]+)` \|", table, re.M)
    assert rows == list(BUILTINS)  # the same names, in the registry's order; test_trust_readme checks each row
    default = re.search(r"medscale eval JOB --against base +# .*: (.*)$", readme, re.M)
    assert default and tuple(default.group(1).split()) == MEDICAL_ZH
