"""Typed all the way from a job's folder (issue 21, deliverable 3): a model reference carries the job's recipe as
the typed Recipe (medscale.recipe.load_saved), and evaluation, export and the shared loader read its sections as
attributes. A job folder an earlier medscale wrote (its journal and its recipe.resolved.yaml) still evaluates and
exports.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import cli

from medscale.recipe import Recipe, RecipeError, load_saved

# recipe.resolved.yaml as the first medscale wrote it (no data.batching, no adapter/track keys added since), with the
# generation section of a later one (before generation.do_sample, n_samples and seed existed), for a job trained on
# a cluster: its DeepSpeed config is a file of that cluster's checkout.
OLD_RECIPE = """\
name: run-old
description: trained by an earlier medscale
model: {path: MODEL, hub_id: null, dtype: float32, load_in_4bit: false, bnb_4bit_quant_type: nf4,
  bnb_4bit_use_double_quant: true, bnb_4bit_compute_dtype: bfloat16, attn_implementation: sdpa,
  trust_remote_code: false, tiny: {layers: 2, hidden: 64, tokenizer: null}}
data:
  sources: [{path: /cluster/data/medical_r1_demo.jsonl, format: r1-think, limit: 40}]
  eval_sources: []
  eval_size: 8.0
  max_length: 256
  truncation: drop
  prompt_field: question
  system_prompt: 你是一名医学专家。
  train_on: all_assistant
  packing: false
  term_masking: null
  num_proc: 1
adapter: {type: lora, r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: [q_proj, k_proj, v_proj, o_proj,
  gate_proj, up_proj, down_proj], modules_to_save: null, use_dora: false, use_rslora: false, bias: none}
train: {output_dir: OUT, num_train_epochs: 3.0, max_steps: 6, per_device_train_batch_size: 8,
  gradient_accumulation_steps: 1, effective_batch_size: null, learning_rate: 0.003, lr_scheduler_type: cosine,
  warmup_ratio: 0.05, warmup_steps: 0, weight_decay: 0.0, optim: adamw_torch, max_grad_norm: 1.0,
  adaptive_clip: null, bf16: true, gradient_checkpointing: false, use_liger_kernel: false, logging_steps: 1,
  save_steps: 3, save_total_limit: 2, seed: 42, dataloader_num_workers: 0}
dist: {num_processes: 1, num_machines: 1, config: null, deepspeed: /cluster/medscale/ds_configs/zero2.json}
track: {run_name: null, swanlab: null}
eval: {eval_strategy: steps, eval_steps: 2, eval_on_start: true, per_device_eval_batch_size: 4}
generation: {temperature: 0.3, top_p: 0.8, top_k: null, max_new_tokens: 64, enable_thinking: false,
  think_budget: null}
"""


def old_job(trained: Path, into: Path, model: Path) -> Path:
    """A copy of a trained job's adapter in the layout the previous version wrote: journal format 2 (kind and
    statuses as plain strings) and OLD_RECIPE."""
    out = into / "old-job"
    shutil.copytree(trained, out, ignore=shutil.ignore_patterns("checkpoint-*", "medscale_job.json", "*.yaml"))
    attempt = {"number": 1, "launcher": "slurm", "host": "node1", "pid": 4242, "fingerprint": "fp", "world_size": 1,
               "resumed_from": None, "recipe_changes": [], "status": "completed", "step": 6, "exit_reason": None,
               "launcher_ids": {"slurm_job_id": "7"}, "started_at": "2026-12-01T10:00:00",
               "ended_at": "2026-12-01T10:05:00"}
    (out / "medscale_job.json").write_text(json.dumps(
        {"format": 2, "name": "run-old", "kind": "train", "output_dir": str(out), "launcher": "slurm",
         "launcher_options": {}, "fingerprint": "fp", "verified_steps": [3, 6], "attempts": [attempt]}),
        encoding="utf-8")
    (out / "recipe.resolved.yaml").write_text(OLD_RECIPE.replace("MODEL", str(model)).replace("OUT", str(out)),
                                              encoding="utf-8")
    return out


def test_an_old_job_folder_resolves_to_its_typed_recipe_and_evaluates_and_exports(two_runs, tiny_model_dir,
                                                                                  eval_data, tmp_path):
    from medscale.export.merge import export
    from medscale.jobs.resolve import resolve

    job = old_job(two_runs["lora"], tmp_path, tiny_model_dir)
    ref = resolve(str(job))
    assert isinstance(ref.recipe, Recipe) and ref.base == tiny_model_dir and ref.adapter == job
    assert ref.recipe.data.batching == "padded"  # data.packing: false, read as the key that replaced it
    assert ref.recipe.dist.deepspeed == "/cluster/medscale/ds_configs/zero2.json"  # not looked for here
    assert ref.system_prompt == "你是一名医学专家。"
    assert ref.training_data == ["/cluster/data/medical_r1_demo.jsonl"]
    assert ref.model.dtype == "float32" and ref.generation.max_new_tokens == 64
    assert ref.base_only().recipe is ref.recipe and ref.base_only().adapter is None

    r = cli("eval", str(job), "--bench", str(eval_data["mcq"]), "--limit", "4", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (result,) = json.loads(r.stdout)["results"]
    assert result["n"] == 4 and result["model"]["adapter"] == str(job)
    assert result["model"]["system_prompt"] == "你是一名医学专家。"  # asked the way the old job was taught

    out = tmp_path / "exported"
    assert export(str(job), merge=False, out=out, prompts=1, new_tokens=2).parity.passed
    gen = json.loads((out / "generation_config.json").read_text(encoding="utf-8"))
    assert (gen["temperature"], gen["top_p"], gen["max_new_tokens"]) == (0.3, 0.8, 64)


def test_a_saved_recipe_leaves_out_keys_this_version_does_not_know_and_says_which(tmp_path, caplog):
    saved = tmp_path / "recipe.resolved.yaml"
    data = yaml.safe_load(OLD_RECIPE.replace("MODEL", "/m").replace("OUT", str(tmp_path)))
    data["train"]["a_later_key"] = 1
    data["a_later_section"] = {"x": 1}
    data["data"]["sources"][0]["a_later_option"] = 2
    saved.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="medscale.recipe.load"):
        recipe = load_saved(saved)
    assert recipe.train.max_steps == 6 and recipe.data.sources[0].limit == 40
    assert all(key in caplog.text for key in ("train.a_later_key", "a_later_section", "data.sources.0.a_later_option"))

    data["train"]["max_steps"] = "six"  # a value it cannot read is still an error at the file:line
    saved.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(RecipeError, match=r"recipe.resolved.yaml:\d+: train.max_steps: expected an integer"):
        load_saved(saved)


def test_a_job_kind_is_the_enum_from_spec_to_registry_row_and_old_rows_read_back_as_it(tmp_path):
    """The registry stores the kind's plain value (no migration): a row the previous version wrote (its kind a bare
    string) reads back as the JobKind, in the job's view and its spec; the view's statuses are medscale.status
    members."""
    import sqlite3

    from medscale.jobkind import JobKind
    from medscale.registry import JobSpec, Registry
    from medscale.status import JobStatus

    db = tmp_path / "registry.db"
    with Registry(f"sqlite:///{db}") as reg:
        new = reg.register(JobSpec("new", "/runs/new", "slurm", "name: new\n", "fp", kind=JobKind.EVAL))
        old = reg.register(JobSpec("old", "/runs/old", "slurm", "name: old\n", "fp", kind="trial"))  # as a string
        with sqlite3.connect(db) as raw:  # a row written before the kind was an enum: the same plain value
            raw.execute("UPDATE jobs SET kind = 'judge' WHERE id = ?", (old,))
        assert [(j.kind, j.status) for j in reg.jobs()] == [(JobKind.EVAL, JobStatus.QUEUED),
                                                           (JobKind.JUDGE, JobStatus.QUEUED)]
        assert all(type(j.kind) is JobKind and type(j.status) is JobStatus for j in reg.jobs())
        assert type(reg.job_spec(old).kind) is JobKind and reg.job_spec(new).kind is JobKind.EVAL
    with sqlite3.connect(db) as raw:
        assert sorted(raw.execute("SELECT kind FROM jobs")) == [("eval",), ("judge",)]
    with pytest.raises(ValueError, match="'bake' is not a valid JobKind"):
        JobSpec("x", "/runs/x", "slurm", "", "fp", kind="bake")
