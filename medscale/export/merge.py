"""Export a trained job for serving, proven to answer as the adapter does.

`--merge`: the adapter folded into the base weights, saved as a safetensors Hugging Face folder that transformers and
vLLM load as is (config, sharded weights, the tokenizer with the chat template used in training, generation_config
from the recipe's `generation` section). A QLoRA job is merged into the bf16 weights it was quantised from (the
recipe's model.path), never into 4-bit ones. `--adapter-only`: the PEFT adapter with the same tokenizer and
generation config, for serving with the base.

Before an export is reported, a parity check on N prompts (seed 003's questions through the chat template) plus
the reference's greedy continuation, all in fp32 on CPU, the reference being base + adapter (PEFT's forward, nothing
merged). Three comparisons, because a bf16 export cannot equal an fp32 sum and the rounding must not hide a bug:
  1. the merge (fp32, in memory) answers as the reference, within the fp32 tolerance: catches a wrong merge (scaling,
     a module left out, modules_to_save, tied embeddings);
  2. the folder as loaded answers as that merge rounded to the export dtype, within the fp32 tolerance: catches
     anything lost or changed between memory and disk (keys, shards, config, storage);
  3. against the reference, the folder's greedy choice is the reference's wherever the reference's top-2 margin
     exceeds the export dtype's tolerance (near-ties may go either way); how far rounding moved the logits is
     reported.
For a QLoRA job the reference is the bf16 base + adapter; how far the NF4-quantised model the job trained on is from
it is measured apart (on CUDA) and reported, never a reason to fail. Everything is written to a temporary folder
beside the destination and renamed into place only after the check passed: a failed or interrupted export leaves no
folder (a killed one leaves its temporary folder, which the next export to the same destination, or `medscale jobs
gc`, removes once the lock its process held is free).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medscale.errors import UserError
from medscale.jobs.leftovers import abandoned, owned_temp_beside
from medscale.jobs.record import write_text_atomic
from medscale.paths import plain_tree
from medscale.jobs.resolve import ModelRef, resolve

# (absolute, relative to the reference's largest |logit|): how far rounding to the dtype may move a logit. A greedy
# choice whose top-2 margin is above it must survive the export; the fp32 one bounds comparisons 1 and 2.
TOLERANCE = {"float32": (1e-4, 1e-4), "bfloat16": (1e-2, 2e-2), "float16": (5e-3, 1e-2)}
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "added_tokens.json", "tokenizer.model")
RECORD = "medscale_export.json"


class ExportError(UserError):
    """An export that cannot be made or that failed its parity check (nothing was left behind)."""


@dataclass(kw_only=True)
class Parity:
    """The three comparisons of the module docstring; max |logit difference| of each, over every position."""

    prompts: int
    positions: int
    dtype: str
    exact_tolerance: float  # comparisons 1 and 2 (fp32)
    merge_diff: float  # 1: the fp32 merge against base + adapter (0 for an adapter-only export)
    written_diff: float  # 2: the folder against the merge rounded to `dtype`
    tolerance: float  # 3: the margin of a clear greedy choice (the dtype's rounding tolerance, or --tolerance)
    max_abs_diff: float  # 3: the folder against base + adapter (the rounding, reported)
    mismatched_choices: int  # positions with a clear top-1 (margin > tolerance) where the export chose otherwise
    near_ties: int  # positions whose top-2 margin is within the tolerance (either choice is the same model)
    passed: bool
    worst: dict = field(default_factory=dict)  # where comparison 2's largest difference is: prompt, position
    nf4: dict | None = None  # QLoRA: the 4-bit model the job trained on against the bf16 reference (report only)

    def line(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        return (f"parity {verdict}: {self.prompts} prompts, {self.positions} positions; merge vs base + adapter "
                f"{self.merge_diff:.2g}, folder vs merge in {self.dtype} {self.written_diff:.2g} (max |logit diff|, "
                f"tolerance {self.exact_tolerance:.2g}); folder vs base + adapter {self.max_abs_diff:.3g} "
                f"({self.dtype} rounding), {self.mismatched_choices} clear greedy choice(s) changed (top-2 margin > "
                f"{self.tolerance:.3g}), {self.near_ties} near-tie(s) exempt")


@dataclass(kw_only=True)
class ExportResult:
    mode: str  # merge | adapter
    source: str  # the job@checkpoint label
    out: str
    dtype: str
    files: list[str]
    size_bytes: int
    parity: Parity
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def export(ref: str, *, merge: bool, checkpoint: int | None = None, out: str | Path | None = None,
           prompts: int = 8, new_tokens: int = 16, tolerance: float | None = None,
           shard_size: str = "5GB") -> ExportResult:
    """Export a job (any reference medscale.jobs.resolve takes) merged or as its adapter; see the module docstring."""
    target = resolve(ref, checkpoint=checkpoint)
    if target.adapter is None:
        raise ExportError(f"{target.label or ref} is a base model (no adapter): there is nothing to export")
    mode = "merge" if merge else "adapter"
    dest = Path(out).expanduser().absolute() if out else _default_out(target, mode)
    if dest.exists():
        raise ExportError(f"{dest} already exists: choose another --out, or remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dtype = _export_dtype(target)
    tol_abs, tol_rel = TOLERANCE[dtype]
    timings: dict[str, float] = {}
    abandoned(dest.parent, f".{glob.escape(dest.name)}.tmp-*", remove=True)  # a killed export to the same place
    with owned_temp_beside(dest) as tmp:
        t0 = time.perf_counter()
        model, tok = _reference(target)
        texts = _prompts(tok, target, prompts)
        reference = _run_reference(model, tok, texts, new_tokens)
        timings["reference_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if merge:
            merged, written = _write_merged(model, tmp, dtype, shard_size, reference)
        else:
            for name in ADAPTER_FILES:
                shutil.copy2(target.adapter / name, tmp / name)
            merged = written = [r["logits"] for r in reference]  # nothing merged, nothing rounded
        del model
        _free()
        _write_tokenizer_and_generation(target, tmp)
        timings["write_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scale = max(float(r["logits"].abs().max()) for r in reference)
        exact = TOLERANCE["float32"][0] + TOLERANCE["float32"][1] * scale
        tol = tolerance if tolerance is not None else tol_abs + tol_rel * scale
        parity = _check(_load_exported(target, tmp, merge), reference, merged, written, dtype, exact=exact, tol=tol)
        _free()
        timings["parity_s"] = time.perf_counter() - t0
        if target.load_in_4bit:
            parity.nf4 = _nf4_difference(target, reference)
        if not parity.passed:
            raise ExportError(f"{target.label}: the exported model does not answer as base + adapter: "
                              f"{parity.line()}; worst at {parity.worst}; nothing was written")
        files = sorted(p.name for p in tmp.iterdir())
        result = ExportResult(mode=mode, source=target.label, out=str(dest), dtype=dtype, files=files + [RECORD],
                              size_bytes=sum(p.stat().st_size for p in tmp.iterdir()), parity=parity,
                              seconds={k: round(v, 2) for k, v in timings.items()})
        write_text_atomic(tmp / RECORD, json.dumps({**result.to_dict(), "adapter": str(target.adapter),
                                                    "base": str(target.base), "job": target.job_name},
                                                   ensure_ascii=False, indent=1))
        plain_tree(tmp)
        os.rename(tmp, dest)
        return result


def _default_out(target: ModelRef, mode: str) -> Path:
    home = target.output_dir or target.adapter.parent
    name = (target.checkpoint.name if target.checkpoint else "final") + f"-{'merged' if mode == 'merge' else 'adapter'}"
    return Path(home).absolute() / "exports" / name


def _export_dtype(target: ModelRef) -> str:
    """The base's own dtype (a QLoRA job's base is its bf16 weights), as its config says, else the recipe's."""
    cfg = json.loads((target.base / "config.json").read_text(encoding="utf-8"))
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or (target.model.dtype if target.model else "bfloat16")
    return dtype if dtype in TOLERANCE else "bfloat16"


def _reference(target: ModelRef):
    """Base + adapter in fp32 on CPU, never quantised (a QLoRA job's reference is its bf16 base + adapter)."""
    import torch

    from medscale.model.infer import load_for_inference

    return load_for_inference(target.base, target.adapter, "float32", trained=target.model, device=torch.device("cpu"))


def _prompts(tok, target: ModelRef, n: int) -> list[str]:
    from medscale.data.chat import render_prompt
    from medscale.eval.bench import default_questions, load_questions

    system = [{"role": "system", "content": target.system_prompt}] if target.system_prompt else []
    return [render_prompt(tok, system + [{"role": "user", "content": q.prompt}],
                          target.generation.enable_thinking)
            for q in load_questions(default_questions())[:n]]


def _run_reference(model, tok, texts: list[str], new_tokens: int) -> list[dict]:
    """Per prompt: the token ids of prompt + greedy continuation, and the reference's logits over all of them."""
    import torch

    out = []
    with torch.no_grad():
        for text in texts:
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            full = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  pad_token_id=tok.pad_token_id)
            logits = model(input_ids=full).logits[0].float()
            out.append({"ids": full, "prompt_len": ids.shape[1], "logits": logits})
    return out


def _write_merged(model, folder: Path, dtype: str, shard_size: str, reference: list[dict]) -> tuple[list, list]:
    """Fold the adapter in (fp32), untie embeddings a trained lm_head made different, cast, save sharded. Returns the
    logits on the reference's ids of the fp32 merge and of the merge as written (rounded to `dtype`), for the check."""
    import torch

    merged = model.merge_and_unload()
    fp32 = _logits(merged, reference)
    cfg = merged.config
    out_emb, in_emb = merged.get_output_embeddings(), merged.get_input_embeddings()
    if getattr(cfg, "tie_word_embeddings", False) and out_emb is not None and (
            out_emb.weight is not in_emb.weight and not torch.equal(out_emb.weight, in_emb.weight)):
        cfg.tie_word_embeddings = False  # modules_to_save trained them apart: tying them again would lose lm_head
    _cast_parameters(merged, getattr(torch, dtype))
    merged.generation_config.do_sample = False  # replaced by the recipe's below
    merged.save_pretrained(folder, safe_serialization=True, max_shard_size=shard_size)
    if dtype == "float32":
        return fp32, fp32
    _cast_parameters(merged, torch.float32)
    return fp32, _logits(merged, reference)


def _cast_parameters(model, dtype) -> None:
    """Parameters only: `model.to(dtype)` would round buffers too (RoPE's inv_freq), which a load of the folder
    recomputes in fp32, so the in-memory rounding would no longer be what the folder holds."""
    for p in model.parameters():
        p.data = p.data.to(dtype)


def _logits(model, reference: list[dict]) -> list:
    """`model`'s fp32 logits on the reference's ids (prompt + greedy continuation), on the CPU."""
    import torch

    with torch.no_grad():
        return [model(input_ids=r["ids"].to(model.device)).logits[0].float().cpu() for r in reference]


def _write_tokenizer_and_generation(target: ModelRef, folder: Path) -> None:
    """The tokenizer training used (saved beside the adapter: its chat template included), and generation settings
    from the recipe's `generation` section on top of the base's (its eos/pad ids)."""
    from transformers import AutoTokenizer, GenerationConfig

    src = target.adapter if (target.adapter / "tokenizer_config.json").is_file() else target.base
    AutoTokenizer.from_pretrained(src, trust_remote_code=target.trust_remote_code).save_pretrained(folder)
    try:
        gen = GenerationConfig.from_pretrained(target.base)
    except OSError:
        gen = GenerationConfig()
    g = target.generation
    gen.update(do_sample=g.temperature > 0, temperature=g.temperature if g.temperature > 0 else None,
               top_p=g.top_p if g.temperature > 0 else None, top_k=g.top_k, max_new_tokens=g.max_new_tokens)
    gen.save_pretrained(folder)


def _load_exported(target: ModelRef, folder: Path, merged: bool):
    import torch

    from medscale.model.infer import load_for_inference

    cpu = torch.device("cpu")
    if merged:
        return load_for_inference(folder, None, "float32", trained=target.model, device=cpu)[0]
    return load_for_inference(target.base, folder, "float32", trained=target.model, device=cpu)[0]


def _check(exported, reference: list[dict], merged: list, written: list, dtype: str, *, exact: float,
           tol: float) -> Parity:
    """The three comparisons of the module docstring, at every position of every prompt."""
    merge_diff = max(float((m - r["logits"]).abs().max()) for m, r in zip(merged, reference))
    written_diff, drift, worst, positions, mismatched, ties = 0.0, 0.0, {}, 0, 0, 0
    for i, (logits, r, w) in enumerate(zip(_logits(exported, reference), reference, written)):
        diff = (logits - w).abs().max(dim=-1).values
        at = int(diff.argmax())
        if float(diff[at]) >= written_diff:
            written_diff, worst = float(diff[at]), {"prompt": i, "position": at}
        drift = max(drift, float((logits - r["logits"]).abs().max()))
        positions += logits.shape[0]
        top2 = r["logits"].topk(2, dim=-1)
        clear = (top2.values[:, 0] - top2.values[:, 1]) > tol
        changed = logits.argmax(dim=-1) != top2.indices[:, 0]
        mismatched += int((changed & clear).sum())
        ties += int((~clear).sum())
    passed = merge_diff <= exact and written_diff <= exact and mismatched == 0
    return Parity(prompts=len(reference), positions=positions, dtype=dtype, exact_tolerance=exact,
                  merge_diff=merge_diff, written_diff=written_diff, tolerance=tol, max_abs_diff=drift,
                  mismatched_choices=mismatched, near_ties=ties, passed=passed, worst=worst)


def _nf4_difference(target: ModelRef, reference: list[dict]) -> dict:
    """How far the NF4 model the QLoRA job trained on is from its bf16 reference (reported, never failed on)."""
    import torch

    if not torch.cuda.is_available():
        return {"measured": False, "why": "needs CUDA (bitsandbytes 4-bit inference)"}
    from medscale.model.infer import load_for_inference

    model, _ = load_for_inference(target.base, target.adapter, "bfloat16", trained=target.model)
    nf4 = _logits(model, reference)
    del model
    _free()
    pairs = list(zip(nf4, (r["logits"] for r in reference)))
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in pairs)
    return {"measured": True, "max_abs_logit_diff": max(float((a - b).abs().max()) for a, b in pairs),
            "top1_agreement": agree / sum(a.shape[0] for a, _ in pairs)}


def _free() -> None:
    from medscale.model.infer import free_memory

    free_memory()
