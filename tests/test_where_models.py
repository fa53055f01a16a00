"""Model references the way users write them: a folder, or a hub id (with a revision) found offline in a real Hugging
Face cache layout, the ModelScope cache and MEDSCALE_MODELS, in that order; nothing found names the download
command. And plan before download: the built-in recipes' models plan from the shapes medscale ships."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import cli, needs_realdata
from medscale.model.resolve import ModelNotFound, find_model

REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty HF and ModelScope caches and MEDSCALE_MODELS under tmp_path (never the user's own)."""
    roots = {"hf": tmp_path / "hf", "ms": tmp_path / "ms", "models": tmp_path / "models"}
    monkeypatch.setenv("HF_HOME", str(roots["hf"]))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("MODELSCOPE_CACHE", str(roots["ms"]))
    monkeypatch.setenv("MEDSCALE_MODELS", str(roots["models"]))
    return roots


def hf_cache_copy(model_dir, hf_home, repo="Qwen/Qwen3-8B", rev=REV, ref="main"):
    """`model_dir` as `hf download` leaves it: blobs, a snapshot of links to them, refs/<ref> naming the commit."""
    repo_dir = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    snap = repo_dir / "snapshots" / rev
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in model_dir.iterdir() if p.is_file())):
        blob = repo_dir / "blobs" / f"{rev[:8]}{i:04d}"
        shutil.copy2(f, blob)
        (snap / f.name).symlink_to(blob)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / ref).write_text(rev)
    return snap


def test_a_hub_id_and_its_revision_come_from_the_hf_cache(tiny_model_dir, caches):
    snap = hf_cache_copy(tiny_model_dir, caches["hf"])
    assert find_model("Qwen/Qwen3-8B").path == snap and find_model("Qwen/Qwen3-8B").source == "Hugging Face cache"
    assert find_model(f"Qwen/Qwen3-8B@{REV}").path == snap
    assert find_model("Qwen/Qwen3-8B@main").path == snap
    with pytest.raises(ModelNotFound) as e:
        find_model("Qwen/Qwen3-8B@v2.0")
    assert "`hf download Qwen/Qwen3-8B --revision v2.0` (into " in str(e.value)


def test_caches_are_looked_at_in_order_hf_modelscope_medscale_models(tiny_model_dir, caches):
    ms = caches["ms"] / "models" / "Qwen" / "Qwen3-1___7B"  # ModelScope writes a dot as ___
    mine = caches["models"] / "Qwen3-1.7B"
    for folder in (ms, mine):
        shutil.copytree(tiny_model_dir, folder)
    snap = hf_cache_copy(tiny_model_dir, caches["hf"], "Qwen/Qwen3-1.7B")
    assert find_model("Qwen/Qwen3-1.7B").path == snap
    shutil.rmtree(caches["hf"])
    assert (find_model("Qwen/Qwen3-1.7B").path, find_model("Qwen/Qwen3-1.7B").source) == (ms, "ModelScope cache")
    shutil.rmtree(caches["ms"])
    assert (find_model("Qwen/Qwen3-1.7B").path, find_model("Qwen/Qwen3-1.7B").source) == (mine, "MEDSCALE_MODELS")


def test_check_loads_a_hub_id_from_the_cache_and_says_so(tiny_model_dir, caches, tmp_path):
    """End to end: the recipe names `Qwen/Qwen3-8B`; check finds the tiny model in the HF cache layout and
    tokenizes the data with its tokenizer."""
    snap = hf_cache_copy(tiny_model_dir, caches["hf"])
    r = cli("check", "tiny-demo", "model.path=Qwen/Qwen3-8B", "model.tiny=null", f"train.output_dir={tmp_path / 'o'}")
    assert r.returncode == 0, r.stderr
    assert f"· model     {snap} (from the Hugging Face cache)" in r.stdout
    assert "· tokens    train:" in r.stdout


def test_a_hub_id_in_no_cache_gives_the_download_command(caches, tmp_path):
    r = cli("check", "tiny-demo", "model.path=deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "model.tiny=null",
            f"train.output_dir={tmp_path / 'o'}")
    assert r.returncode == 2
    [line] = [ln for ln in r.stderr.splitlines() if "model.path" in ln]
    assert (f"`hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-7B` (into {caches['hf'] / 'hub'}) or "
            f"`modelscope download --model deepseek-ai/DeepSeek-R1-Distill-Qwen-7B` (into {caches['ms']})") in line
    # the built-in recipes' folder paths: the command fills that folder
    r = cli("check", "r1-distill-7b-lora-fast")
    assert (f"`hf download deepseek-ai/DeepSeek-R1-Distill-Qwen-7B --local-dir "
            f"{caches['models'] / 'DeepSeek-R1-Distill-Qwen-7B'}`") in r.stderr


def test_a_recipe_folder_missing_falls_back_to_its_hub_id_in_the_cache(tiny_model_dir, caches, tmp_path):
    from medscale.model.resolve import model_folder
    from medscale.recipe import load_recipe

    snap = hf_cache_copy(tiny_model_dir, caches["hf"], "Qwen/Qwen3-1.7B")
    assert model_folder(load_recipe("qwen3-1.7b-qlora-v1").model) == snap


def test_plan_before_download_uses_the_shipped_shape(caches):
    """Defect: `medscale plan qwen3-1.7b-qlora-v1 --gpu-mem 16` failed "config.json is missing" without the
    weights; the 16 GB question comes before the download."""
    r = cli("plan", "qwen3-1.7b-qlora-v1", "--gpu-mem", "16")
    assert r.returncode == 0, r.stderr
    assert "shapes from the shipped shape of Qwen/Qwen3-1.7B (no weights on disk)" in r.stdout
    assert "qwen3 1.72B (28 layers, hidden 2048)" in r.stdout
    p = json.loads(cli("plan", "qwen3-8b-lora-huatuo", "--gpu-mem", "80", "--json").stdout)
    assert p["shape"]["layers"] == 36 and p["shape"]["tied"] is False and "Qwen/Qwen3-8B" in p["shape_source"]


def test_shipped_shapes_cover_every_built_in_recipe_and_match_a_real_config():
    from medscale.model.resolve import _shapes, shipped_config
    from medscale.plan import Shape
    from medscale.recipe import load_recipe
    from medscale.recipe.load import builtin_names

    for name in builtin_names():
        model = load_recipe(name).model
        assert model.tiny is not None or shipped_config(model) is not None, name
    real = json.loads(needs_realdata("qwen3_tokenizer", "config.json").read_text())
    assert Shape.from_config(_shapes()["Qwen/Qwen3-1.7B"]) == Shape.from_config(real)


def test_check_without_weights_checks_the_adapter_against_the_shipped_shape(caches):
    r = cli("check", "qwen3-1.7b-qlora-v1", "adapter.target_modules=[q_prj, v_proj]")
    assert r.returncode == 2
    assert "planned from the shipped shape of Qwen/Qwen3-1.7B (no weights on disk)" in r.stdout
    assert "adapter.target_modules: 'q_prj' names no module" in r.stderr and "did you mean 'q_proj'?" in r.stderr


def test_commands_that_take_a_model_accept_a_hub_id(tiny_model_dir, caches, tmp_path):
    """eval, compare, chat and export resolve their MODEL through jobs.resolve: a hub id is its cached copy; one in no
    cache (and naming no job) gives the download command."""
    from medscale.jobs.resolve import resolve
    from medscale.registry import Registry

    snap = hf_cache_copy(tiny_model_dir, caches["hf"])
    with Registry(f"sqlite:///{tmp_path / 'r.db'}") as reg:
        ref = resolve(f"Qwen/Qwen3-8B@{REV}", registry=reg)
        assert ref.base == snap and ref.adapter is None and ref.label == f"Qwen/Qwen3-8B@{REV}"
        with pytest.raises(ModelNotFound, match="`hf download Qwen/Qwen3-14B`"):
            resolve("Qwen/Qwen3-14B", registry=reg)
