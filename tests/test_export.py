"""`medscale export`: merged and adapter-only folders that load as they are and pass the parity check against
base + adapter (a plain LoRA job and one with modules_to_save); a tampered merged weight fails the check and leaves
no folder; sharding; a QLoRA job merges into its unquantised base."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import cli
from medscale.export import merge as export_merge
from medscale.export.merge import ExportError, export


def _logits(model, tok, text):
    import torch

    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits[0].float()


@pytest.mark.parametrize("run", ["lora", "full"])
def test_a_merged_export_loads_as_is_and_answers_as_base_plus_adapter(two_runs, run, tmp_path, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "merged"
    r = cli("export", str(two_runs[run]), "--merge", "--out", str(out), "--prompts", "3", "--new-tokens", "8",
            "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    p = result["parity"]
    assert p["passed"] and p["prompts"] == 3 and p["max_abs_diff"] <= p["tolerance"] and p["mismatched_choices"] == 0
    assert result["dtype"] == "float32" and (out / "model.safetensors").is_file()
    assert json.loads((out / "medscale_export.json").read_text())["parity"]["passed"]
    # transformers loads it as is; its logits are base + adapter's, checked here independently of the export code
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    trained_tok = AutoTokenizer.from_pretrained(two_runs[run])
    assert tok.chat_template == trained_tok.chat_template and tok.get_vocab() == trained_tok.get_vocab()
    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                    two_runs[run]).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "感冒和流感有什么区别？"}], tokenize=False,
                                   add_generation_prompt=True)
    assert torch.allclose(_logits(merged, tok, text), _logits(ref, tok, text), atol=1e-4)
    if run == "full":  # modules_to_save: the trained embeddings and head are in the merged weights
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        assert not torch.equal(merged.get_output_embeddings().weight, base.get_output_embeddings().weight)
    gen = GenerationConfig.from_pretrained(out)  # the recipe's generation section
    assert (gen.do_sample, gen.temperature, gen.top_p, gen.max_new_tokens) == (True, 0.7, 0.9, 512)


def test_an_adapter_only_export_carries_the_adapter_tokenizer_and_generation_config(two_runs, tmp_path):
    out = tmp_path / "adapter"
    r = cli("export", str(two_runs["full"]), "--adapter-only", "--out", str(out), "--prompts", "2")
    assert r.returncode == 0, r.stderr
    assert "parity PASSED" in r.stdout
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (out / name).read_bytes() == (two_runs["full"] / name).read_bytes()
    assert {"tokenizer.json", "generation_config.json", "medscale_export.json"} <= {p.name for p in out.iterdir()}


def test_a_tampered_merged_weight_fails_the_check_and_leaves_no_folder(two_runs, tmp_path, monkeypatch):
    """A fault between writing and checking (a storage error): one weight of the written folder changed by 0.05."""
    _tamper_after_writing(monkeypatch, 0.05)
    out = tmp_path / "exports" / "merged"
    with pytest.raises(ExportError, match=r"does not answer as base \+ adapter: parity FAILED") as e:
        export(str(two_runs["lora"]), merge=True, out=out, prompts=2, new_tokens=4)
    assert "nothing was written" in str(e.value)
    assert not out.exists() and list((tmp_path / "exports").iterdir()) == [], "no folder, no temp folder"


def test_a_merge_that_loses_the_adapter_fails_the_check(two_runs, tmp_path, monkeypatch):
    """A wrong merge is caught by comparison 1 (merge vs base + adapter), not only by what the folder holds: here the
    merge unloads the adapter instead of folding it in, so the folder is exactly what was merged."""
    from peft import LoraModel

    monkeypatch.setattr(LoraModel, "merge_and_unload", lambda self, *a, **k: self.unload())
    with pytest.raises(ExportError, match="parity FAILED") as e:
        export(str(two_runs["full"]), merge=True, out=tmp_path / "lost", prompts=2, new_tokens=4)
    merge_diff = float(str(e.value).split("merge vs base + adapter ")[1].split(",")[0])
    assert merge_diff > 1e-2 and not (tmp_path / "lost").exists()


def _tamper_after_writing(monkeypatch, delta: float) -> None:
    """Add `delta` to layer 0's q_proj weight of the written folder, between writing and checking."""
    from safetensors.torch import load_file, save_file

    real = export_merge._write_merged

    def write_then_tamper(model, folder, dtype, shard_size, reference):
        logits = real(model, folder, dtype, shard_size, reference)
        f = folder / "model.safetensors"
        tensors = load_file(f)
        key = next(k for k in sorted(tensors) if k.endswith("layers.0.self_attn.q_proj.weight"))
        tensors[key] = tensors[key] + delta
        save_file(tensors, f, metadata={"format": "pt"})
        return logits

    monkeypatch.setattr(export_merge, "_write_merged", write_then_tamper)


def _bf16_job(job, tmp_path, tiny_model_dir):
    """A copy of `job` whose base weights are bf16 (as every real base is): its export is bf16."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = tmp_path / "base-bf16"
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(base)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(base)
    copy = tmp_path / "bf16-job"
    shutil.copytree(job, copy, ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = yaml.safe_load((copy / "recipe.resolved.yaml").read_text())
    recipe["model"]["path"] = str(base)
    (copy / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    return copy


def test_a_bf16_export_is_checked_exactly_and_its_rounding_only_reported(two_runs, tmp_path, tiny_model_dir,
                                                                         monkeypatch):
    """Defect (an 8B-shape export on an H100): a correct bf16 merge failed its parity check, because rounding the
    merged weights to bf16 moved the logits by 0.2 against the fp32 base + adapter, over the bf16 allowance. The
    folder is now held to the fp32 merge rounded to bf16, exactly (fp32 tolerance); the rounding is reported and may
    change no clear greedy choice. A tamper far inside the old bf16 allowance is caught."""
    job = _bf16_job(two_runs["full"], tmp_path, tiny_model_dir)
    result = export(str(job), merge=True, out=tmp_path / "ok", prompts=2, new_tokens=4)
    p = result.parity
    assert result.dtype == "bfloat16" and p.passed and p.dtype == "bfloat16"
    assert p.merge_diff <= p.exact_tolerance and p.written_diff <= p.exact_tolerance
    # Defect (8B shape, H100): the merge rounded in memory had RoPE's inv_freq buffer rounded to bf16 too, which no
    # load of the folder does: 0.068 apart at 42 positions, and a correct export failed. Same weights, same buffers:
    assert p.written_diff == 0.0
    assert json.loads((tmp_path / "ok" / "config.json").read_text())["dtype"] == "bfloat16"
    assert p.max_abs_diff > p.exact_tolerance, "bf16 rounding moves the logits more than the exact tolerance"
    assert p.exact_tolerance < p.tolerance and p.mismatched_choices == 0

    delta = 2e-3  # a fraction of one bf16 step of these weights: the logits move far less than the bf16 allowance
    _tamper_after_writing(monkeypatch, delta)
    with pytest.raises(ExportError, match="parity FAILED") as e:
        export(str(job), merge=True, out=tmp_path / "tampered", prompts=2, new_tokens=4)
    assert not (tmp_path / "tampered").exists()
    written = float(str(e.value).split(f"folder vs merge in bfloat16 ")[1].split(" ")[0])
    assert p.exact_tolerance < written < p.tolerance, "caught though inside the old bf16 allowance"


def test_a_large_model_is_sharded_and_a_qlora_job_merges_into_its_unquantised_base(two_runs, tmp_path):
    """A QLoRA job (its recipe says model.load_in_4bit) has its adapter merged into the bf16/fp32 weights of
    model.path, not into 4-bit ones; the NF4 difference is reported apart (it needs CUDA to measure)."""
    job = tmp_path / "qlora-job"
    shutil.copytree(two_runs["lora"], job, ignore=shutil.ignore_patterns("checkpoint-*"))
    recipe = yaml.safe_load((job / "recipe.resolved.yaml").read_text())
    recipe["model"]["load_in_4bit"] = True
    (job / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe))
    out = tmp_path / "sharded"
    result = export(str(job), merge=True, out=out, shard_size="500KB", prompts=2, new_tokens=4)
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) >= 2 and (out / "model.safetensors.index.json").is_file()
    assert result.parity.passed and result.parity.nf4 is not None
    import torch

    if not torch.cuda.is_available():
        assert result.parity.nf4 == {"measured": False, "why": "needs CUDA (bitsandbytes 4-bit inference)"}
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "qwen3"


def test_bad_export_requests_are_one_line_and_write_nothing(two_runs, tmp_path, tiny_model_dir):
    r = cli("export", str(two_runs["lora"]))
    assert r.returncode == 2 and "--merge" in r.stderr and "--adapter-only" in r.stderr
    taken = tmp_path / "taken"
    taken.mkdir()
    r = cli("export", str(two_runs["lora"]), "--merge", "--out", str(taken))
    assert r.returncode == 2 and "already exists" in r.stderr
    r = cli("export", str(tiny_model_dir), "--merge", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "nothing to export" in r.stderr and not (tmp_path / "x").exists()
    r = cli("export", str(two_runs["lora"]), "--merge", "--checkpoint", "5", "--out", str(tmp_path / "y"))
    assert r.returncode == 2 and "checkpoint-5" in r.stderr and not (tmp_path / "y").exists()


def test_exports_and_reports_get_the_permissions_the_umask_gives(two_runs, tmp_path):
    """Defect: everything written through a temporary (mkstemp: 0600, mkdtemp: 0700) stayed private whatever the
    umask, so the serving account or a colleague could not read an export or a report."""
    import stat

    old = os.umask(0o022)
    try:
        export(str(two_runs["lora"]), merge=False, out=tmp_path / "adapter", prompts=1, new_tokens=2)
        r = cli("report", "run-lora", "--out", str(tmp_path / "report"),
                env={"MEDSCALE_REGISTRY_URL": two_runs["registry"]})
        assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    for folder in (tmp_path / "adapter", tmp_path / "report"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in folder.iterdir()}
        assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads the umask from Linux's /proc")
def test_asking_for_the_plain_mode_never_sets_the_process_umask(monkeypatch):
    """Defect: plain_mode read the umask by setting it to 077 and back. The umask is process-wide and the heartbeat
    thread asks (journal writes) while the main thread writes checkpoints: a file created in between came out 0600."""
    from medscale import paths

    old = os.umask(0o027)
    try:
        monkeypatch.setattr(paths.os, "umask", lambda *a: pytest.fail("plain_mode set the process umask"))
        assert paths.plain_mode() == 0o640 and paths.plain_mode(directory=True) == 0o750
    finally:
        monkeypatch.undo()
        os.umask(old)
