"""DeepSpeed: the ZeRO JSONs parse with DeepSpeed's own parser, the accelerate YAMLs load, combinations that cannot
work fail before any heavy work, and real 2-process ZeRO-2 / ZeRO-3 runs on CPU (gloo) save verified checkpoints
and resume from them."""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import QUICK_STEP, REPO, run_cli
from medscale.preflight import PreflightError
from medscale.recipe import RecipeError, builtin_names, load_recipe

DS_DIR = REPO / "ds_configs"
ACC_DIR = REPO / "cluster" / "accelerate"
BUILTIN_DS = ["zero2", "zero3", "zero3_offload"]


# --------------------------------------------------------------------------- the JSON files

def _filled(path: Path, world_size: int = 1, bf16: bool = False) -> dict:
    """The config with every "auto" filled the way the HF Trainer fills it (TrainingArguments, then the model)."""
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    args = SimpleNamespace(world_size=world_size, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           max_grad_norm=1.0, learning_rate=2e-4, adam_beta1=0.9, adam_beta2=0.999,
                           adam_epsilon=1e-8, weight_decay=0.0, save_on_each_node=False, fp16=False,
                           fp16_full_eval=False, bf16=bf16, bf16_full_eval=False, get_warmup_steps=lambda n: 0)
    hf = HfTrainerDeepSpeedConfig(str(path))
    hf.trainer_config_process(args)
    model = SimpleNamespace(config=SimpleNamespace(hidden_size=64))
    hf.trainer_config_finalize(args, model, num_training_steps=100)  # raises on a value that contradicts the args
    return hf.config


@pytest.mark.parametrize("name", BUILTIN_DS)
def test_ds_config_parses_with_deepspeed(name):
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((DS_DIR / f"{name}.json").read_text())
    assert "optimizer" not in raw and "scheduler" not in raw, "the Trainer's torch AdamW is used, never FusedAdam"
    assert raw["bf16"]["enabled"] == "auto"
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert raw[key] == "auto", key
    cfg = _filled(DS_DIR / f"{name}.json", bf16=True)
    assert "auto" not in json.dumps(cfg)
    ds = DeepSpeedConfig(cfg)  # DeepSpeed's own schema (pydantic): unknown or mistyped keys raise
    assert ds.train_micro_batch_size_per_gpu == 4 and ds.gradient_accumulation_steps == 2
    assert ds.gradient_clipping == 1.0 and ds.bfloat16_config.enabled
    assert ds.zero_config.stage == (2 if name == "zero2" else 3)
    if ds.zero_config.stage == 3:
        assert ds.zero_config.gather_16bit_weights_on_model_save, "the adapter is saved as a consolidated state dict"
    offload = name == "zero3_offload"
    assert (ds.zero_config.offload_optimizer is not None) == offload
    assert (ds.zero_config.offload_param is not None) == offload
    if offload:
        assert ds.zero_force_ds_cpu_optimizer is False, "torch AdamW on offloaded state, not DeepSpeed's CPUAdam"


def test_ds_config_with_a_bad_key_raises(tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig
    from pydantic import ValidationError

    cfg = _filled(DS_DIR / "zero3.json")
    cfg["zero_optimization"]["stage3_gather_16bit_weights_on_model_sav"] = True  # typo
    with pytest.raises(ValidationError, match="stage3_gather_16bit_weights_on_model_sav"):
        DeepSpeedConfig(cfg)


def test_ds_config_auto_must_match_the_trainer(tmp_path):
    """A concrete value that contradicts the recipe is caught when HF fills the config, not silently kept."""
    cfg = json.loads((DS_DIR / "zero2.json").read_text())
    cfg["gradient_accumulation_steps"] = 8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        _filled(bad)


def test_ds_readme_describes_every_config():
    text = (DS_DIR / "README.md").read_text()
    assert all(f"`{n}.json`" in text for n in BUILTIN_DS)
    assert sorted(p.stem for p in DS_DIR.glob("*.json")) == BUILTIN_DS


# --------------------------------------------------------------------------- the accelerate YAMLs

@pytest.mark.parametrize("path", sorted(ACC_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_accelerate_config_loads(path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1 and cfg.num_machines >= 1
    if cfg.distributed_type != DistributedType.DEEPSPEED:
        return
    # Next to a DeepSpeed config file accelerate refuses mixed_precision / zero_stage / ... in the YAML
    # (DeepSpeedPlugin._deepspeed_config_checks): replay what `accelerate launch` would tell the plugin.
    assert cfg.mixed_precision is None and not cfg.use_cpu
    default_json = REPO / cfg.deepspeed_config["deepspeed_config_file"]
    assert default_json.is_file(), "the relative default resolves from the repo root"
    monkeypatch.setenv("ACCELERATE_CONFIG_DS_FIELDS", ",".join(cfg.deepspeed_config))
    plugin = DeepSpeedPlugin(hf_ds_config=str(default_json))
    assert plugin.zero_stage == json.loads(default_json.read_text())["zero_optimization"]["stage"]


def test_multinode_template_is_two_machines_of_four():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(ACC_DIR / "multinode_template.yaml"))
    assert (cfg.num_machines, cfg.num_processes, cfg.machine_rank) == (2, 8, 0)
    text = (ACC_DIR / "multinode_template.yaml").read_text()
    assert all(k in text for k in ("--machine_rank", "--main_process_ip", "--main_process_port", "SLURM_NODEID"))


# --------------------------------------------------------------------------- recipe: dist.deepspeed

def test_deepspeed_name_resolves_to_absolute_path():
    for name in BUILTIN_DS:
        r = load_recipe("tiny-demo", [f"dist.deepspeed={name}"])
        assert r.dist.deepspeed == str((DS_DIR / f"{name}.json").resolve())
    assert load_recipe("tiny-demo").dist.deepspeed is None


def test_deepspeed_path_to_own_json(tmp_path, monkeypatch):
    own = tmp_path / "mine.json"
    own.write_text((DS_DIR / "zero3.json").read_text())
    monkeypatch.chdir(tmp_path)
    r = load_recipe("tiny-demo", ["dist.deepspeed=mine.json"])
    assert r.dist.deepspeed == str(own.resolve()) and r.dist.zero_stage() == 3 and r.dist.offloads() == []


def test_unknown_deepspeed_name_lists_builtins():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny-demo", ["dist.deepspeed=zero4"])
    msg = str(e.value)
    assert "dist.deepspeed" in msg and all(n in msg for n in BUILTIN_DS) and "did you mean 'zero3'" in msg


def test_missing_deepspeed_json(tmp_path):
    with pytest.raises(RecipeError, match=r"dist.deepspeed: .*nope.json does not exist"):
        load_recipe("tiny-demo", [f"dist.deepspeed={tmp_path / 'nope.json'}"])


def test_deepspeed_json_without_zero_section(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"train_batch_size": "auto"}')
    with pytest.raises(RecipeError, match="dist.deepspeed: .* no zero_optimization"):
        load_recipe("tiny-demo", [f"dist.deepspeed={bad}"])


def test_resolved_recipe_with_deepspeed_round_trips(tmp_path):
    r = load_recipe("tiny-demo", ["dist.deepspeed=zero3"])
    f = tmp_path / "resolved.yaml"
    f.write_text(r.to_yaml(), encoding="utf-8")
    assert load_recipe(str(f)).fingerprint() == r.fingerprint()


QLORA = ["model.load_in_4bit=true", "train.optim=adamw_torch"]


def test_4bit_with_zero3_needs_quant_storage_equal_to_compute_dtype():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero3"])
    assert "model.bnb_4bit_quant_storage=bfloat16" in str(e.value) and "dist.deepspeed=zero3" in str(e.value)
    r = load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero3", "model.bnb_4bit_quant_storage=bfloat16"])
    assert r.model.bnb_4bit_quant_storage == "bfloat16"
    with pytest.raises(RecipeError, match="model.bnb_4bit_quant_storage=float16"):
        load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero3", "model.bnb_4bit_compute_dtype=float16"])
    # ZeRO-2 does not shard the weights: the default uint8 storage is fine
    assert load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero2"]).model.bnb_4bit_quant_storage == "uint8"


def test_the_seeds_fp32_upcast_is_refused_where_it_breaks_or_means_nothing():
    z3 = [*QLORA, "dist.deepspeed=zero3", "model.bnb_4bit_quant_storage=bfloat16"]
    with pytest.raises(RecipeError, match="model.fp32_frozen_weights=false, or use dist.deepspeed=zero2"):
        load_recipe("tiny-demo", [*z3, "model.fp32_frozen_weights=true"])
    assert load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero2", "model.fp32_frozen_weights=true"])
    with pytest.raises(RecipeError, match="applies to QLoRA only"):
        load_recipe("tiny-demo", ["model.fp32_frozen_weights=true"])


def test_4bit_with_offload_is_refused():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny-demo", [*QLORA, "dist.deepspeed=zero3_offload", "model.bnb_4bit_quant_storage=bfloat16"])
    msg = str(e.value)
    assert "model.load_in_4bit" in msg and "zero3_offload" in msg and "dist.deepspeed=zero3" in msg


@pytest.mark.parametrize("optim", ["paged_adamw_8bit", "adamw_bnb_8bit", "paged_adamw_32bit", "adamw_8bit"])
def test_low_bit_or_paged_optimizer_with_zero3_is_refused(optim):
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny-demo", [f"train.optim={optim}", "dist.deepspeed=zero3"])
    assert f"train.optim={optim}" in str(e.value) and "train.optim=adamw_torch" in str(e.value)
    assert load_recipe("tiny-demo", [f"train.optim={optim}", "dist.deepspeed=zero2"]).train.optim == optim


def test_adaptive_clip_with_deepspeed_is_refused():
    with pytest.raises(RecipeError, match="train.adaptive_clip with dist.deepspeed=zero2"):
        load_recipe("tiny-demo", ["train.adaptive_clip.percentile=90", "dist.deepspeed=zero2"])


@pytest.mark.parametrize("name", builtin_names())
def test_every_builtin_runs_under_zero2_and_zero3_with_the_named_fixes(name):
    r = load_recipe(name)
    clip = ["train.adaptive_clip=null"] if r.train.adaptive_clip is not None else []
    assert load_recipe(name, ["dist.deepspeed=zero2", *clip]).dist.zero_stage() == 2
    fix = [*clip]
    if r.model.load_in_4bit:
        fix.append(f"model.bnb_4bit_quant_storage={r.model.bnb_4bit_compute_dtype}")
    if r.train.optim != "adamw_torch":
        fix.append("train.optim=adamw_torch")
    if fix:
        with pytest.raises(RecipeError) as e:
            load_recipe(name, ["dist.deepspeed=zero3"])
        assert any(f.split("=")[0] in str(e.value) for f in fix)
    assert load_recipe(name, ["dist.deepspeed=zero3", *fix]).dist.zero_stage() == 3


def test_quant_storage_reaches_bitsandbytes_config(monkeypatch):
    import transformers

    from medscale.model.load import load_base_model

    seen = {}
    loaded = SimpleNamespace(config=SimpleNamespace(_attn_implementation="sdpa", model_type="qwen3"))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: seen.update(kw) or loaded)
    for storage, dtype in (("uint8", torch.uint8), ("bfloat16", torch.bfloat16)):
        r = load_recipe("tiny-demo", ["model.load_in_4bit=true", f"model.bnb_4bit_quant_storage={storage}"])
        assert load_base_model(r.model) is loaded
        assert seen["quantization_config"].bnb_4bit_quant_storage == dtype


# --------------------------------------------------------------------------- preflight

def _preflight(overrides, monkeypatch=None, env=None):
    from medscale.preflight import worker_plan

    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    worker_plan(load_recipe("tiny-demo", overrides), None)


def test_deepspeed_launch_without_dist_deepspeed_is_refused(monkeypatch):
    with pytest.raises(PreflightError, match="no dist.deepspeed: set dist.deepspeed=zero2"):
        _preflight([], monkeypatch, {"ACCELERATE_CONFIG_DS_FIELDS": "deepspeed_config_file"})
    _preflight(["dist.deepspeed=zero2"], monkeypatch)


def test_deepspeed_under_use_cpu_launch_is_refused(monkeypatch):
    with pytest.raises(PreflightError, match="use_cpu .*cpu_deepspeed.yaml"):
        _preflight(["dist.deepspeed=zero2"], monkeypatch, {"ACCELERATE_USE_CPU": "true"})


def _fake_checkpoint(out: Path, step: int, layout: str, ranks: int = 2) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter_model.safetensors").write_bytes(b"x")
    (ckpt / "manifest.json").write_text("{}")
    if layout != "ddp":
        (ckpt / "latest").write_text(f"global_step{step}")
        shards = ckpt / f"global_step{step}"
        shards.mkdir()
        for r in range(ranks):
            (shards / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x")
            if layout == "zero3":
                (shards / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt").write_bytes(b"x")
        if layout == "zero2":
            (shards / "mp_rank_00_model_states.pt").write_bytes(b"x")
    return ckpt


@pytest.mark.parametrize("saved,run,fails", [
    ("ddp", "dist.deepspeed=zero2", "saved with no DeepSpeed, but this recipe runs ZeRO-1/2"),
    ("zero2", None, "saved with ZeRO-1/2, but this recipe runs no DeepSpeed"),
    ("zero2", "dist.deepspeed=zero3", "saved with ZeRO-1/2, but this recipe runs ZeRO-3"),
    ("zero3", "dist.deepspeed=zero2", "saved with ZeRO-3, but this recipe runs ZeRO-1/2"),
    ("zero3", "dist.deepspeed=zero3_offload", None),
    ("zero2", "dist.deepspeed=zero2", None),
    ("ddp", None, None),
])
def test_resume_needs_the_same_deepspeed_layout(tmp_path, saved, run, fails):
    out = tmp_path / "out"
    _fake_checkpoint(out, 6, saved)
    overrides = [f"train.output_dir={out}", "dist.num_processes=2", *([run] if run else [])]
    if fails is None:
        _preflight(overrides)
        return
    with pytest.raises(PreflightError) as e:
        _preflight(overrides)
    assert "train.resume" in str(e.value) and fails in str(e.value) and "new train.output_dir" in str(e.value)
    _preflight([*overrides, "train.resume=never"])  # the check is about the checkpoint a resume would load


def test_resume_needs_the_same_number_of_zero_processes(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out, 6, "zero2", ranks=2)
    with pytest.raises(PreflightError, match="saved by 2 DeepSpeed processes .* for 1: set dist.num_processes"):
        _preflight([f"train.output_dir={out}", "dist.deepspeed=zero2"])
    _preflight([f"train.output_dir={out}", "dist.deepspeed=zero2", "dist.num_processes=2"])


def test_resume_check_looks_at_the_newest_checkpoint_with_a_manifest(tmp_path):
    out = tmp_path / "out"
    _fake_checkpoint(out, 3, "zero2")
    (_fake_checkpoint(out, 6, "ddp") / "manifest.json").unlink()  # a torn save is never resumed from
    _preflight([f"train.output_dir={out}", "dist.deepspeed=zero2", "dist.num_processes=2"])


# --------------------------------------------------------------------------- the launcher

def test_launcher_picks_deepspeed_accelerate_config_and_passes_the_json():
    from launcher.local import accelerate_command

    ov = ["dist.num_processes=2", "dist.deepspeed=zero3"]
    cmd = accelerate_command(load_recipe("tiny-demo", ov), "tiny-demo", ov)
    want = "cpu_deepspeed" if not torch.cuda.is_available() else "zero3_4gpu"
    assert cmd[cmd.index("--config_file") + 1] == str(ACC_DIR / f"{want}.yaml")
    assert cmd[cmd.index("--deepspeed_config_file") + 1] == str((DS_DIR / "zero3.json").resolve())
    assert cmd[-5:] == ["-m", "medscale.train", "tiny-demo", *ov]
    plain = accelerate_command(load_recipe("tiny-demo", ov[:1]), "tiny-demo", ov[:1])
    assert "--deepspeed_config_file" not in plain


def test_launcher_picks_zero_config_by_stage_on_gpus(monkeypatch):
    import launcher.local as local

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, want in (("zero2", "zero2_4gpu"), ("zero3", "zero3_4gpu"), ("zero3_offload", "zero3_4gpu")):
        assert local.accelerate_config(load_recipe("tiny-demo", [f"dist.deepspeed={name}"])).stem == want


def test_launcher_refuses_mismatched_accelerate_config():
    from launcher.local import accelerate_config

    with pytest.raises(RecipeError, match="dist.config=cpu_ddp: .*dist.deepspeed is set"):
        accelerate_config(load_recipe("tiny-demo", ["dist.deepspeed=zero2", "dist.config=cpu_ddp"]))
    with pytest.raises(RecipeError, match="dist.config=zero3_4gpu is a DeepSpeed .* add dist.deepspeed"):
        accelerate_config(load_recipe("tiny-demo", ["dist.config=zero3_4gpu"]))


# --------------------------------------------------------------------------- real runs on CPU

def _ds_env() -> dict:
    """The first DeepSpeed run JIT-builds its shared-memory comm op (~30 s): keep the build between runs."""
    return {"TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR")
            or str(Path.home() / ".cache" / "medscale" / "torch_extensions")}


def _train(tiny_model_dir, out, *extra):
    return run_cli("train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
                   "train.save_steps=3", "train.logging_steps=1", "eval.eval_strategy=no", "track.swanlab=null",
                   *QUICK_STEP, *extra, env=_ds_env(), timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_two_process_deepspeed_on_cpu_saves_and_resumes(zero, tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from medscale.jobs.checkpoint import read_manifest
    from medscale.jobs.record import read_journal

    out = tmp_path / zero
    p = _train(tiny_model_dir, out, "dist.num_processes=2", f"dist.deepspeed={zero}", "train.max_steps=6")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "cluster/accelerate/cpu_deepspeed.yaml" in p.stdout and f"ds_configs/{zero}.json" in p.stdout
    s = json.loads((out / "run_summary.json").read_text())
    assert s["world_size"] == 2 and s["steps_per_rank"] == [6, 6] and s["attempt"] == 1
    assert s["loss_last"] < s["loss_first"]
    for step in (3, 6):
        ckpt = out / f"checkpoint-{step}"
        assert read_manifest(ckpt) is not None, f"{ckpt} is verified"
        assert (ckpt / "latest").read_text().strip() == f"global_step{step}"
        assert len(list((ckpt / f"global_step{step}").glob("*optim_states.pt"))) == 2, "one ZeRO shard per rank"
    adapter = load_file(out / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values()), "a consolidated adapter, not ZeRO-3 stubs"

    p = _train(tiny_model_dir, out, "dist.num_processes=2", f"dist.deepspeed={zero}", "train.max_steps=9")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    s = json.loads((out / "run_summary.json").read_text())
    assert s["attempt"] == 2 and s["resumed_from"].endswith("checkpoint-6")
    assert s["global_step"] == 9 and s["steps_per_rank"] == [9, 9] and s["world_size"] == 2
    assert read_manifest(out / "checkpoint-9") is not None
    state = json.loads((out / "trainer_state.json").read_text())
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert steps == list(range(1, 10)), "steps 7-9 continue the restored history"
    assert [a.status for a in read_journal(out).attempts] == ["completed", "completed"]


@pytest.mark.slow
def test_one_process_deepspeed_runs_in_process(tmp_path, tiny_model_dir):
    """One process needs no launcher: run() gives DeepSpeed a 1-process group itself."""
    out = tmp_path / "one"
    p = _train(tiny_model_dir, out, "dist.deepspeed=zero3", "train.max_steps=3")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "launcher.accelerate_main" not in p.stdout
    s = json.loads((out / "run_summary.json").read_text())
    assert s["world_size"] == 1 and s["steps_per_rank"] == [3]
    assert (out / "checkpoint-3" / "global_step3").is_dir() and (out / "checkpoint-3" / "manifest.json").is_file()


class _Planted:
    """What an attacker pickles into a checkpoint folder: unpickling it runs a command."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_a_planted_pickle_in_a_deepspeed_checkpoint_is_refused_not_run(tmp_path, tiny_model_dir):
    """Defect: DeepSpeed's resume loaded mp_rank_*_model_states.pt with weights_only=False; a planted pickle with a
    recomputed manifest ran a shell command. It is refused now (exit 2, the file named) and runs nothing."""
    import torch

    from medscale.jobs.checkpoint import MANIFEST, load_manifest, write_manifest

    out = tmp_path / "ds"
    p = _train(tiny_model_dir, out, "dist.deepspeed=zero2", "train.max_steps=2", "train.save_steps=2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ckpt = out / "checkpoint-2"
    target = ckpt / "global_step2" / "mp_rank_00_model_states.pt"
    state = torch.load(target, weights_only=False)  # this test's own file: trusted
    marker = tmp_path / "pwned"
    state["planted"] = _Planted(str(marker))
    torch.save(state, target)
    manifest = load_manifest(ckpt)
    (ckpt / MANIFEST).unlink()
    write_manifest(ckpt, 2, {k: v for k, v in manifest.items() if k not in ("files", "size_bytes", "format", "step")})
    p = _train(tiny_model_dir, out, "dist.deepspeed=zero2", "train.max_steps=4", "train.save_steps=2")
    assert not marker.exists(), "the planted pickle ran"
    assert p.returncode == 2, p.stdout[-3000:] + p.stderr[-3000:]
    assert "mp_rank_00_model_states.pt holds a Python object medscale does not load" in p.stderr
