"""Side-by-side throughput: medscale's batching/attention/kernel paths vs the seed stack, in one call.

    python bench/speed.py --assets .gpu --suite qwen3-1.7b,qwen3-8b [--steps 12] [--warm 3] [--deadline 560]
    python bench/speed.py --assets .gpu --suite r1-1.5b,r1-7b,r1-14b --dry-run   # CPU: lengths + commands only

For each suite: builds the model folder (random weights in the real shape, real Qwen3 tokenizer), writes
the exact token lengths medscale trains on (its own data pipeline on the real records) and gives them to
../shared/gpu/hf_baseline.py (--lengths, --max_len), then runs the recipe's variants, each in its own
process under the suite's memory cap. Timing covers the steps after `--warm` for both stacks. Prints one
table (tokens/s, samples/s, MFU, peak allocated/reserved, the memory plan at the largest micro-batch
seen, loss at step N, ratio to the seed stack) and writes $OUT/speed_<suite>.json (copy to bench/results/).
Assets (--assets): qwen3_tokenizer/, model_configs.json, hf_baseline.py and the data files named below.
The R1 suites (seed 004's grid: R1-Distill-Qwen 1.5B/7B/14B, 4-bit LoRA, 2 x 32 = 64 medical-o1 records per step)
time fewer, longer steps (their own --steps/--warm) against hf_baseline.py --shape r1-*, as seed 004 ran it; the
lengths come from the Qwen3 tokenizer (R1-Distill's is Qwen2's, nearly the same vocabulary), the same for both stacks.
`--dry-run` writes the lengths on CPU and prints each command a GPU call would run, without running them.
`--semantics seed|packed` (issue 24) runs only the variants of that step semantics, every one of the suite, after its
baseline: `seed` = the recipe as shipped (its samples per optimizer step, its logging steps, 50 steps unless --steps;
every variant not packed), `packed` = packed rows (fewer, fuller steps). The loss match (dloss%: mean loss over the
steps, step-weighted over the log windows) is against the seed stack reproduced on the same batches (padded, SDPA, the
k-bit fp32 upcast, no Liger, the recipe's micro-batch x accumulation): hf_baseline.py trains on random token ids of
the same lengths, so its loss is shown for reference only. JSON: speed_<suite>[_<semantics>].json.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

COMMON = ["eval.eval_strategy=no", "eval.benchmarks=[]", "eval.control=null", "data.eval_sources=[]", "data.eval_size=0",
          "track.swanlab=null", "train.save_steps=100000", "train.resume=never"]
EVERY_STEP = "train.logging_steps=1"  # a loss per step; --semantics seed keeps the recipe's (a log line syncs)
NO_LIGER, FLCE_ONLY = "train.use_liger_kernel=false", "train.use_liger_kernel=fused_linear_cross_entropy"
COMPILE = "train.compile=default"  # accelerate compiles the whole model (inductor); rows padded to a few lengths
# lever 2: compiled steps at the seeds' semantics, Liger off or its fused linear CE alone (its RMSNorm kernel does not
# compile under inductor: bench/liger_rmsnorm_compile.py)
COMPILED = [(f"padding_free, compile {mode}, {name}", [f"train.compile={mode}", liger], {})
            for mode in ("reduce-overhead", "max-autotune-no-cudagraphs")
            for name, liger in (("no Liger", NO_LIGER), ("Liger FLCE only", FLCE_ONLY))]
NO_CAP_FULL = ["data.batching=packed", "train.gradient_checkpointing=false"]  # 8B: packed, nothing recomputed
MERGE_OFF = "train.merge_accumulation=off"  # the recipe's micro-batch x accumulation as written (issue 24, lever 1)
FUSED_ADAM = "train.optim=adamw_torch_fused"  # one fused kernel per step instead of paged 8-bit / foreach (lever 5)
# the seed stack inside medscale, on medscale's batches: the loss reference of --semantics seed (fp32 upcast: QLoRA only)
SEED_REF = ["data.batching=padded", "model.attn_implementation=sdpa", "train.use_liger_kernel=false", MERGE_OFF]
SEED_REF_4BIT = [*SEED_REF, "model.fp32_frozen_weights=true"]
PIN_OFF = "train.dataloader_pin_memory=false"  # batches copied from pageable memory: the host waits (lever 5)
# v3's adaptive clipping on the 1.7B as shipped: its threshold stays on the device, no sync per step (lever 5)
ADAPTIVE = "train.adaptive_clip={percentile: 90, window: 100, min_history: 10}"
ZERO3_4BIT = ["dist.deepspeed=zero3", "model.bnb_4bit_quant_storage=bfloat16", "train.optim=adamw_torch"]
# seed 004's fast runs on the seed stack (../shared/gpu/README.md); max_len and lengths come from the recipe
R1_SEED = ["--qlora", "--lora_r", "16", "--lora_alpha", "16", "--lora_dropout", "0", "--bs", "2", "--accum", "32",
           "--optim", "adamw_8bit"]
R1_ONE = ["train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=64"]
R1_STEPS = {"steps": 5, "warm": 1}  # a step is 64 records (~45k tokens): 4 timed steps, not 10
SUITES = {
    "qwen3-1.7b": dict(
        shape="Qwen/Qwen3-1.7B", recipe="qwen3-1.7b-qlora-v1", cap=16,
        data="delicate_medical_r1/val.jsonl", format="r1-think",
        baseline=["--shape", "qwen3-1.7b", "--qlora", "--lora_r", "64", "--lora_alpha", "32", "--lora_dropout", "0.1",
                  "--optim", "paged_adamw_8bit", "--bs", "4", "--accum", "2"],
        runs=[("padding_free, varlen (default)", [], {}),
              ("packed, varlen, plan budget", ["data.batching=packed"], {}),
              ("padded, sdpa (as shipped before)", ["data.batching=padded", "model.attn_implementation=sdpa"], {}),
              ("padding_free, sdpa dense mask", ["model.attn_implementation=sdpa"], {}),
              ("padding_free, Liger FLCE only", [FLCE_ONLY], {}),
              # the plan refuses no-recompute on 16 GB (4 x 2048 tokens would not fit): measured without the cap
              ("padding_free, no recompute, no cap", ["train.gradient_checkpointing=false"], {"cap": 0}),
              ("padding_free, bf16 LoRA (no 4-bit)", ["model.load_in_4bit=false", "train.optim=adamw_torch"], {}),
              ("packed, no recompute, plan budget", ["data.batching=packed", "train.gradient_checkpointing=false"],
               {}),
              ("packed, fp32 frozen weights (before)", ["data.batching=packed", "model.fp32_frozen_weights=true"],
               {}),
              ("padding_free, recompute auto", ["train.gradient_checkpointing=auto"], {}),
              ("packed, recompute auto", ["data.batching=packed", "train.gradient_checkpointing=auto"], {}),
              ("packed, no Liger", ["data.batching=packed", "train.use_liger_kernel=false"], {}),
              ("packed, no Liger, torch.compile", ["data.batching=packed", NO_LIGER, COMPILE], {}),
              ("padding_free, merge off (4 x 2 as written)", [MERGE_OFF], {}),
              ("seed stack on these batches (loss reference)", SEED_REF_4BIT, {"loss_ref": True}),
              ("padding_free, fused AdamW (not paged 8-bit)", [FUSED_ADAM], {}),
              ("packed, no cap, no recompute", NO_CAP_FULL, {"cap": 0}),
              ("padding_free, pageable batches (pin off)", [PIN_OFF], {}),
              ("padding_free, 2 dataloader workers", ["train.dataloader_num_workers=2"], {}),
              # lever 6: ZeRO-3 shards the 4-bit weights once they are stored in bf16; on one GPU, against plain QLoRA
              ("padding_free, ZeRO-3, 4-bit stored in bf16", ZERO3_4BIT, {}), *COMPILED,
              ("padding_free, adaptive clipping (v3's)", [ADAPTIVE], {})]),
    "qwen3-8b": dict(
        shape="Qwen/Qwen3-8B", recipe="qwen3-8b-lora-huatuo", cap=32,
        data="medical_sft_1K_format.jsonl", format="sharegpt",
        extra=["dist.num_processes=1", "train.effective_batch_size=null", "dist.config=null", "data.num_proc=1"],
        baseline=["--shape", "qwen3-8b", "--lora_r", "16", "--lora_alpha", "32", "--lora_dropout", "0.05",
                  "--bs", "4", "--accum", "2"],
        runs=[("padding_free, varlen (default)", [], {}),
              ("packed, varlen, plan budget", ["data.batching=packed"], {}),
              ("packed, no cap, no recompute", NO_CAP_FULL, {"cap": 0}),
              ("padding_free, recompute auto", ["train.gradient_checkpointing=auto"], {}),
              ("padding_free, no cap, recompute auto", ["train.gradient_checkpointing=auto"], {"cap": 0}),
              # Liger's Triton kernels do not compile under inductor (torch 2.11, liger 0.8.5): compile runs go without
              ("packed, no cap, no recompute, no Liger", [*NO_CAP_FULL, "train.use_liger_kernel=false"], {"cap": 0}),
              ("packed, no cap, no recompute, no Liger, torch.compile", [*NO_CAP_FULL, NO_LIGER, COMPILE],
               {"cap": 0}),
              ("padding_free, merge off (4 x 2 as written)", [MERGE_OFF], {}),
              ("seed stack on these batches (loss reference)", SEED_REF, {"loss_ref": True}),
              ("padding_free, fused AdamW", [FUSED_ADAM], {}),
              ("padding_free, pageable batches (pin off)", [PIN_OFF], {}), *COMPILED], est=75),
    "r1-7b": dict(
        shape="deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", recipe="r1-distill-7b-lora-fast", cap=16,
        data="medical_o1_zh_916.jsonl", format="medical-o1", baseline=["--shape", "r1-7b", *R1_SEED],
        runs=[("packed 8192-token rows, 4-bit", ["data.batching=packed", "data.pack_tokens=8192",
                                                 "train.per_device_train_batch_size=1",
                                                 "train.gradient_accumulation_steps=2",
                                                 "train.effective_batch_size=null"], {}),
              # 2 x 8192 tokens is over 16 GB in the plan: its fix, the same 64 samples per step
              ("as shipped, 1 x 64 (the plan's fix on 16 GB)", R1_ONE, {}),
              ("as shipped, no cap (merged as the plan fits)", [], {"cap": 0}),
              ("as shipped, no cap, merge off (2 x 32)", [MERGE_OFF], {"cap": 0}),
              ("as shipped, no cap, fused AdamW (not 8-bit)", [FUSED_ADAM], {"cap": 0}),
              ("seed stack on these batches (loss reference), no cap", SEED_REF_4BIT, {"cap": 0, "loss_ref": True})],
        est=240, **R1_STEPS),
    "r1-1.5b": dict(
        shape="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", recipe="r1-distill-1.5b-lora-fast", cap=16,
        data="medical_o1_zh_916.jsonl", format="medical-o1", baseline=["--shape", "r1-1.5b", *R1_SEED],
        runs=[("as shipped (merged as the plan fits)", [], {}),
              ("as shipped, merge off (2 x 32)", [MERGE_OFF], {}),
              ("as shipped, fused AdamW (not 8-bit)", [FUSED_ADAM], {})], est=120, **R1_STEPS),
    "r1-14b": dict(  # 2 x 8192 tokens of the 14B do not fit 16 GB even recomputed: measured on the whole card
        shape="deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", recipe="r1-distill-14b-lora-fast", cap=0,
        data="medical_o1_zh_916.jsonl", format="medical-o1", baseline=["--shape", "r1-14b", *R1_SEED],
        runs=[("as shipped, no cap (merged as the plan fits)", [], {}),
              ("as shipped, no cap, merge off (2 x 32)", [MERGE_OFF], {})], est=300, **R1_STEPS),
}
# Most telling first, across suites, so a deadline cuts the least useful runs: (suite, run index or "baseline").
ORDER = [("qwen3-1.7b", "baseline"), ("qwen3-1.7b", 0), ("qwen3-8b", "baseline"), ("qwen3-8b", 0),
         ("qwen3-1.7b", 1), ("qwen3-8b", 1), ("qwen3-1.7b", 2), ("qwen3-8b", 2), ("qwen3-1.7b", 3),
         ("qwen3-1.7b", 4), ("qwen3-1.7b", 5), ("qwen3-1.7b", 6), ("r1-7b", "baseline"), ("r1-7b", 1),
         ("r1-7b", 2), ("r1-7b", 3), ("r1-1.5b", "baseline"), ("r1-1.5b", 0), ("r1-1.5b", 1), ("r1-7b", 0),
         ("r1-14b", "baseline"), ("r1-14b", 0), ("r1-14b", 1)]


def semantics(run: tuple) -> str:
    """`packed` for a variant that packs rows (fewer, fuller optimizer steps than the recipe's), else `seed`."""
    return "packed" if "data.batching=packed" in run[1] else "seed"


def run_order(a: argparse.Namespace) -> list[tuple[str, int | str]]:
    """(suite, run index or "baseline") to run, in order: --runs as given; under --semantics every variant of those
    semantics after each suite's baseline; else ORDER (most telling first) for the chosen suites."""
    if a.runs:
        order = [(n, w if w == "baseline" else int(w)) for n, w in (x.split(":") for x in a.runs.split(","))]
    elif a.semantics:  # the baseline, the recipe as shipped, the loss reference, then the levers
        order = [(n, w) for n in a.suite.split(",") for w in sorted(
            ["baseline", *range(len(SUITES[n]["runs"]))],
            key=lambda w: (w != "baseline", w != 0, not (w != "baseline" and SUITES[n]["runs"][w][2].get("loss_ref")),
                           -1 if w == "baseline" else w))]
    else:
        order = [o for o in ORDER if o[0] in a.suite.split(",")]
    wanted = a.semantics.split(",") if a.semantics else None
    return [(n, w) for n, w in order if w == "baseline" or not wanted or semantics(SUITES[n]["runs"][w]) in wanted]


def data_overrides(suite: dict, assets: Path) -> list[str]:
    src = f"[{{path: {assets / suite['data']}, format: {suite['format']}}}]"
    return [f"data.sources={src}", *suite.get("extra", []), *COMMON]


def write_lengths(suite: dict, assets: Path, out: Path) -> tuple[Path, int]:
    """The token lengths of the records medscale trains on (its own pipeline), shuffled: the baseline takes
    the first bs x accum x (steps + 1) of them."""
    from medscale.data.pipeline import build_datasets
    from medscale.model.tokenizer import load_tokenizer
    from medscale.recipe import load_recipe

    r = load_recipe(suite["recipe"], data_overrides(suite, assets) + ["data.batching=padded"])
    r.model.path = str(assets / "qwen3_tokenizer")
    lengths = [len(x) for x in build_datasets(r.data, load_tokenizer(r.model), r.train.seed).train["input_ids"]]
    random.Random(0).shuffle(lengths)
    out.write_text("\n".join(map(str, lengths)) + "\n")
    return out, r.data.max_length


# --------------------------------------------------------------------------- one medscale run (child process)

def child(a: argparse.Namespace, recipe_args: list[str]) -> None:
    import torch
    from transformers import TrainerCallback

    import medscale.train.run as train_run
    from gpu_check import build_random
    from medscale.data import pipeline
    from medscale.plan import plan
    from medscale.recipe import load_recipe
    from medscale.train.callbacks import decoder_blocks

    path = build_random(a.shape, a.assets / "model_configs.json", a.assets / "qwen3_tokenizer",
                        Path("/tmp/medscale-models") / a.shape.replace("/", "--"))
    if a.cap_gb:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(a.cap_gb * 2**30 / total)
    seen = {"max_tokens": 0}
    collate = pipeline.SFTCollator.__call__

    def counting(self, features):  # the largest micro-batch, padding included, for the plan comparison
        batch = collate(self, features)
        seen["max_tokens"] = max(seen["max_tokens"], batch["input_ids"].numel())
        return batch

    pipeline.SFTCollator.__call__ = counting
    targs = json.loads(a.targs or "{}")  # the driver passes {} where a run sets none
    if targs:
        make_args = train_run.training_arguments

        def with_targs(*args_, **kw):
            args = make_args(*args_, **kw)
            for k, v in targs.items():
                setattr(args, k, v)
            return args

        train_run.training_arguments = with_targs

    class Steady(TrainerCallback):
        """Tokens and seconds over the steps after the warm-up ones (as hf_baseline.py times them), up to the
        profiled steps (the last --profile ones), which the profiler slows down."""

        t0 = tok0 = t1 = tok1 = None
        end = a.steps - a.profile
        recompute = (0, 0)  # decoder layers the run recomputes, of all: what run() set, read back

        def on_train_begin(self, args, state, control, model=None, **kw):
            flags = [b.gradient_checkpointing for b in decoder_blocks(model)]
            self.recompute = sum(flags), len(flags)

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step in (a.warm, self.end):
                torch.cuda.synchronize()
                mark = time.perf_counter(), state.num_input_tokens_seen
                if state.global_step == a.warm and self.t0 is None:
                    self.t0, self.tok0 = mark
                if state.global_step == self.end:  # only with --profile: otherwise the run ends first
                    self.t1, self.tok1 = mark

        def on_train_end(self, args, state, control, **kw):
            if self.t1 is None:
                torch.cuda.synchronize()
                self.t1, self.tok1 = time.perf_counter(), state.num_input_tokens_seen

    class Profile(_ProfileBase, TrainerCallback):
        pass

    steady = Steady()
    recipe = load_recipe(recipe_args[0], [*recipe_args[1:], f"model.path={path}"])
    torch.cuda.reset_peak_memory_stats()
    callbacks = [steady] + ([Profile(a.steps - a.profile, a.profile)] if a.profile else [])
    s = train_run.run(recipe, callbacks=callbacks)
    el, timed = steady.t1 - steady.t0, s.global_step - a.profile - a.warm
    recomputed, layers = steady.recompute
    stats = s.data.train
    tps = (steady.tok1 - steady.tok0) / el
    per_step = recipe.train.per_device_train_batch_size * recipe.train.gradient_accumulation_steps
    sps = tps / stats.mean_tokens if recipe.data.batching == "packed" else timed * per_step / el
    history = json.loads(Path(s.paths.trainer_state).read_text())["log_history"]
    losses = {h["step"]: h["loss"] for h in history if "loss" in h}
    marks = sorted(losses)  # each logged loss is the mean over the steps since the previous one
    loss_mean = sum(losses[s] * (s - p) for p, s in zip([0, *marks], marks)) / marks[-1] if marks else None
    p = plan(recipe, a.cap_gb or torch.cuda.get_device_properties(0).total_memory / 2**30, 1,
             tokens=seen["max_tokens"], recompute=recomputed)
    print("RESULT " + json.dumps({
        "tokens_per_s": round(tps), "samples_per_s": round(sps, 2), "timed_steps": timed,
        "peak_alloc_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "plan_alloc_gb": round(p.allocated_gib, 2), "plan_reserved_gb": round(p.reserved_gib, 2),
        "max_micro_batch_tokens": seen["max_tokens"], "pack_tokens": stats.get("pack_tokens"),
        "loss_first": losses.get(1), "loss_at_n": losses.get(s.global_step), "loss_mean": loss_mean,
        "steps": s.global_step,
        "first_step_s": s.first_step_s, "gradient_checkpointing": recipe.train.gradient_checkpointing,
        "recompute_layers": f"{recomputed}/{layers}", "recompute_share": recomputed / layers,
        "total_params": s.total_params, "trainable_params": s.trainable_params,
        "profile": callbacks[-1].summary if a.profile else None}), flush=True)


class _ProfileBase:
    """torch.profiler over `n` optimizer steps from step `start`: GPU busy share of the wall time, the time per
    kernel kind, the top kernels. Where a step's time goes, before choosing a lever."""

    def __init__(self, start: int, n: int):
        self.start, self.n, self.prof, self.t0, self.summary = start, n, None, 0.0, None

    def on_step_begin(self, args, state, control, **kw):
        import torch
        from torch.profiler import ProfilerActivity, profile

        if state.global_step == self.start and self.prof is None:
            torch.cuda.synchronize()
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.__enter__()
            self.t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        import torch

        if self.prof is None or self.summary is not None or state.global_step < self.start + self.n:
            return
        torch.cuda.synchronize()
        wall_us = (time.perf_counter() - self.t0) * 1e6
        self.prof.__exit__(None, None, None)
        from profile_summary import load_trace, summarize

        with tempfile.TemporaryDirectory() as d:  # the trace is summarized here, only the summary travels
            self.prof.export_chrome_trace(f"{d}/trace.json")
            self.summary = summarize(load_trace(Path(d) / "trace.json"), self.n, wall_us)


# --------------------------------------------------------------------------- driver

def _result(text: str) -> dict | None:
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    return json.loads(lines[-1][7:]) if lines else None


def _run(cmd: list[str], log: Path, timeout: float) -> dict | None:
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(timeout, 1))
        text = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        text = f"TIMEOUT after {timeout:.0f}s\n{e.stdout or ''}{e.stderr or ''}"
    with log.open("a") as f:
        f.write(f"\n===== {' '.join(cmd)}  ({time.time() - t:.0f}s)\n{text[-20000:]}\n")
    return _result(text)


def _mfu(res: dict, recompute: float) -> float | None:
    from medscale.train.callbacks import device_peak_flops, flops_per_token

    peak = device_peak_flops()
    if not peak or not res.get("tokens_per_s"):
        return None
    return round(res["tokens_per_s"] * flops_per_token(res["total_params"], res["trainable_params"], recompute) / peak, 4)


def _baseline_params(suite: dict, assets: Path) -> tuple[int, int]:
    from medscale.plan import Shape, trainable_params
    from medscale.recipe import load_recipe

    spec = json.loads((assets / "model_configs.json").read_text())["models"][suite["shape"]]
    shape = Shape.from_config(spec)
    return shape.total_params(), sum(trainable_params(load_recipe(suite["recipe"]), shape))


def _baseline_cmd(suite: dict, a: argparse.Namespace, lengths: Path, max_len: int) -> list[str]:
    """The seed stack on the same token lengths (and max length) as the medscale runs of the suite."""
    return [sys.executable, str(a.assets / "hf_baseline.py"), *suite["baseline"], "--cap_gb", str(suite["cap"]),
            "--steps", str(suite.get("steps", a.steps) - a.profile), "--warm", str(suite.get("warm", a.warm)),
            "--lengths", str(lengths), "--max_len", str(max_len)]


def _child_cmd(name: str, which: int, suite: dict, a: argparse.Namespace) -> list[str]:
    """One medscale run of the suite, in its own process under its memory cap; a loss every step, or under
    --semantics seed the recipe's own log lines (each one a host-device sync)."""
    _, overrides, opts = suite["runs"][which]
    every = [] if a.semantics == "seed" else [EVERY_STEP]
    steps, warm = suite.get("steps", a.steps), suite.get("warm", a.warm)
    return [sys.executable, __file__, "child", "--assets", str(a.assets), "--shape", suite["shape"],
            "--steps", str(steps), "--cap-gb", str(opts.get("cap", suite["cap"])), "--warm", str(warm),
            "--targs", json.dumps(opts.get("targs", {})), "--profile", str(a.profile), "--",
            suite["recipe"], *data_overrides(suite, a.assets), *every, f"train.max_steps={steps}",
            f"train.output_dir=/tmp/bench-runs/{name}-{which}-{int(time.time())}", *overrides]


def _environment() -> tuple[dict, str]:
    import torch

    versions = {}
    for mod in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "liger_kernel"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            versions[mod] = None
    return versions, torch.cuda.get_device_name(0)


def driver(a: argparse.Namespace) -> None:
    out = Path(os.environ.get("OUT", "/tmp/bench-out"))
    out.mkdir(parents=True, exist_ok=True)
    log, start = out / "bench.log", time.time()
    versions, device = ({}, None) if a.dry_run else _environment()
    commit = (HERE.parent / "COMMIT").read_text().strip() if (HERE.parent / "COMMIT").exists() else None
    order = run_order(a)
    chosen = list(dict.fromkeys(n for n, _ in order))
    runs: dict[str, list] = {n: [] for n in chosen}
    base: dict[str, dict | None] = {}
    max_len: dict[str, int] = {}
    lengths: dict[str, Path] = {}
    for name, which in order:
        suite = SUITES[name]
        if name not in lengths:
            # beside $OUT, not in it: the GPU host returns a limited number of files, the JSONs come first
            lengths[name], max_len[name] = write_lengths(suite, a.assets, out.parent / f"lengths_{name}.txt")
        left = a.deadline - (time.time() - start)
        est = suite.get("est", a.min_left)
        if a.dry_run:  # CPU: the lengths are written, the commands printed, nothing run
            if which != "baseline":
                print(" ".join(_child_cmd(name, which, suite, a)))
            elif suite["baseline"]:
                print(" ".join(_baseline_cmd(suite, a, lengths[name], max_len[name])))
            continue
        if which == "baseline":
            if suite["baseline"] and left >= est:
                res = _run(_baseline_cmd(suite, a, lengths[name], max_len[name]), log, left - 5)
                if res:
                    res["total_params"], res["trainable_params"] = _baseline_params(suite, a.assets)
                    res.update(name="seed stack (hf_baseline.py)", recipe=None, cap_gb=suite["cap"],
                               mfu=_mfu(res, True), loss_at_n=res.get("loss_last"), ratio=1.0)
                    runs[name].append(res)
                base[name] = res
            continue
        title, overrides, opts = suite["runs"][which]
        if left < est:
            runs[name].append({"name": title, "skipped": f"{left:.0f}s left of the deadline"})
            continue
        cap = opts.get("cap", suite["cap"])
        res = _run(_child_cmd(name, which, suite, a), log, left - 5) or {"failed": "see bench.log"}
        res.update(name=title, recipe=suite["recipe"], overrides=overrides, cap_gb=cap,
                   semantics=semantics(suite["runs"][which]), loss_ref=bool(opts.get("loss_ref")))
        b = base.get(name)
        if "tokens_per_s" in res:
            res["mfu"] = _mfu(res, res["recompute_share"])
            res["ratio"] = round(res["tokens_per_s"] / b["tokens_per_s"], 2) if b else None
        runs[name].append(res)
        _write(out, name, runs[name], device, versions, commit, a, max_len[name])
    if a.dry_run:
        return
    for name in chosen:
        _write(out, name, runs[name], device, versions, commit, a, max_len.get(name))
    _table(runs, device, commit, a)
    for name, rs in runs.items():
        for r in rs:
            if r.get("profile"):
                p = r["profile"]
                print(f"\nPROFILE {name} / {r['name']}: {p['wall_ms_per_step']} ms/step, GPU busy {p['gpu_busy_pct']}%; "
                      + ", ".join(f"{k} {v}%" for k, v in p["kinds_pct_of_busy"].items()))
                for k, pct, n in p["top"][:10]:
                    print(f"   {pct:5.1f}%  x{n:<5d} {k}")


def _write(out: Path, name: str, runs: list, device, versions, commit, a, max_len) -> None:
    ref = next((r for r in runs if r.get("loss_ref") and r.get("loss_mean")), None)  # the seed stack, same batches
    if ref is None:
        ref = next((r for r in runs if r.get("name", "").startswith("padded") and r.get("loss_at_n")), None)
    key = "loss_mean" if ref and ref.get("loss_ref") else "loss_at_n"
    for r in runs:
        if ref and r.get(key) and r.get("recipe") and r.get("semantics", "seed") == "seed":
            r["loss_vs_ref_pct"] = round(100 * (r[key] / ref[key] - 1), 2)
    doc = {"date": date.today().isoformat(), "device": device, "versions": versions, "commit": commit,
           "command": " ".join(["python3", "bench/speed.py", *sys.argv[1:]]), "suite": name,
           "steps": SUITES[name].get("steps", a.steps), "warm": SUITES[name].get("warm", a.warm),
           "max_length": max_len, "semantics": a.semantics, "loss_ref": ref and {"run": ref["name"], "of": key},
           "runs": runs}
    tag = f"_{a.semantics.replace(',', '_')}" if a.semantics else ""
    (out / f"speed_{name}{tag}.json").write_text(json.dumps(doc, indent=1))


def _table(runs: dict, device: str, commit, a) -> None:
    print(f"\n{device}; {a.steps} steps, timed after {a.warm}; commit {commit}")
    print(f"{'suite':10s} {'sem':6s} {'run':36s} {'cap':>4s} {'tok/s':>7s} {'smp/s':>6s} {'MFU':>5s} {'alloc':>6s} {'resv':>6s} "
          f"{'plan':>6s} {'maxtok':>6s} {'rc':>5s} {'loss@N':>7s} {'dloss%':>6s} {'ratio':>5s}")
    for name, rs in runs.items():
        for r in rs:
            if "tokens_per_s" not in r:
                print(f"{name:10s} {r.get('semantics', '-'):6s} {r['name'][:36]:36s} {r.get('skipped') or r.get('failed')}")
                continue
            f = lambda k, fmt: format(r[k], fmt) if r.get(k) is not None else "-"  # noqa: E731
            print(f"{name:10s} {r.get('semantics', 'seed'):6s} {r['name'][:36]:36s} {r.get('cap_gb') or '-':>4} {f('tokens_per_s', '7d')} "
                  f"{f('samples_per_s', '6.2f')} {f('mfu', '5.3f')} {f('peak_alloc_gb', '6.2f')} "
                  f"{f('peak_reserved_gb', '6.2f')} {f('plan_alloc_gb', '6.2f')} {f('max_micro_batch_tokens', '6d')} "
                  f"{r.get('recompute_layers', '-'):>5s} "
                  f"{f('loss_at_n', '7.4f')} {f('loss_vs_ref_pct', '6.2f')} {f('ratio', '5.2f')}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="driver", choices=["driver", "child"])
    ap.add_argument("--assets", type=Path, default=Path(".gpu"))
    ap.add_argument("--suite", default="qwen3-1.7b")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps a run takes (default 12; 50 under "
                                                              "--semantics seed: the loss match's window)")
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--deadline", type=float, default=540, help="seconds for the whole driver")
    ap.add_argument("--min-left", type=float, default=45, help="do not start a run with less time left")
    ap.add_argument("--shape")
    ap.add_argument("--cap-gb", type=float, default=0)
    ap.add_argument("--targs", default="", help="JSON: TrainingArguments fields set after the recipe's")
    ap.add_argument("--profile", type=int, default=0, help="profile each run's last N steps (not timed)")
    ap.add_argument("--dry-run", action="store_true", help="CPU: write each suite's token lengths (medscale's "
                                                           "pipeline) and print the commands, run nothing")
    ap.add_argument("--semantics", default=None, choices=["seed", "packed", "seed,packed"],
                    help="only the variants of these step semantics (see the top of this file); default: all")
    ap.add_argument("--runs", default=None, help="only these, in this order: suite:index or suite:baseline, "
                                                 "comma-separated (default: every run, most telling first)")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # the child's recipe and overrides follow `--`
    a = ap.parse_args(argv[:cut])
    a.assets = a.assets.resolve()
    if a.steps is None:
        a.steps = 50 if a.mode == "driver" and a.semantics == "seed" else 12
    if a.mode == "child":
        child(a, argv[cut + 1:])
    else:
        driver(a)


if __name__ == "__main__":
    main()
