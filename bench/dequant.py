"""QLoRA's NF4 dequantization (issue 24, lever 4): its share of a training step's GPU time, and bitsandbytes' dequant
against a torch.compile'd pure-PyTorch one and torchao's NF4 tensor, per linear of the seeds' shapes.

    python3 bench/dequant.py [--models Qwen/Qwen3-1.7B,Qwen/Qwen3-8B] [--tokens 1024,4096] [--iters 20] [--out DIR]
    python3 bench/dequant.py --tiny    # CPU, tiny random Qwen3: the code path in seconds, not a measurement

(a) `step` rows: a QLoRA training step (medscale.model.load.load_model on qwen3-1.7b-qlora-v1's settings: NF4 with
double quant, bf16 compute, LoRA r64 on all seven projections; bf16 autocast, forward + backward + paged 8-bit AdamW)
of a random model in the real shape with 1 and with 2 decoder layers, recompute off and on, one sequence of
`--tokens` tokens (SDPA attention), profiled: the share of GPU time in bitsandbytes' dequant kernels
(kDequantizeBlockwise<..., 2> is NF4, <float, ..., 0> the double quant's absmax) and in its fused 4-bit GEMM
(gemm_4bit_*, chosen for micro-batches of at most 1,536 tokens where bnb's heuristic says it wins). The two layer
counts give one decoder layer's time; `share_full` projects the share to the model's whole depth (the embedding,
lm_head and loss counted once; no Liger here, so the loss is heavier than the recipe's and the share a lower bound).
(b) `linear` rows, per projection: ms of bnb's dequantize_4bit, the compiled dequant (`nf4_dequantize` below) and
torchao's NF4 (if `import torchao` works), each alone and followed by the matmul; bnb's matmul_4bit as Linear4bit
calls it; and the compiled dequant's largest difference from bnb's (0 expected: the same fp32 products rounded once).
A 4-bit linear dequantizes its weight once in forward, once in backward and once more when recomputed.
Writes dequant.json under --out (default $OUT, else /tmp/bench-out); copy it to bench/results/.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # lora_kernel's projection shapes, gpu_check's config keys
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # medscale from this checkout, as bench/speed.py

DEQUANT = ("kdequantize", "dequant")  # bnb's dequant kernels (CUDA) and ops (bitsandbytes::dequantize_4bit on CPU)
FUSED_4BIT = ("gemm_4bit",)  # bnb's fused dequant + GEMM kernels (gemm_4bit_sm80_*, kgemm_4bit_inference_naive)
RECIPE = "qwen3-1.7b-qlora-v1"
PROFILED = 3  # steps averaged: one layer's time is the difference of two step times


def nf4_dequantize(packed: torch.Tensor, qs) -> torch.Tensor:
    """bitsandbytes' NF4 weight from its packed bytes and QuantState, in plain tensor ops so torch.compile can fuse
    the lookup, the scaling and the double quant's absmax into one kernel (bnb's is an opaque library call).
    bnb's layout: two codes a byte, the high nibble first; one absmax per `blocksize` values, itself 8-bit
    (state2's code x its absmax per 256 blocks, plus offset) under double quant; product in fp32, rounded once."""
    absmax = qs.absmax
    if qs.nested:
        s2 = qs.state2
        absmax = s2.code[absmax.long()] * s2.absmax.repeat_interleave(s2.blocksize)[: absmax.numel()] + qs.offset
    n = qs.shape.numel()
    codes = torch.stack((packed.view(-1) >> 4, packed.view(-1) & 15), dim=-1).view(-1)[:n]
    values = qs.code[codes.long()].view(-1, qs.blocksize) * absmax.float().view(-1, 1)
    return values.to(qs.dtype).view(qs.shape)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, iters: int, device: str) -> float:
    """ms per call after two warm-up calls (compilation happens there)."""
    for _ in range(2):
        fn()
    sync(device)
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return 1e3 * (time.perf_counter() - t) / iters


@functools.cache
def torchao_nf4():
    """torchao's (to_nf4, linear_nf4), or None where torchao does not import (looked for once)."""
    import importlib

    for where in ("torchao.quantization.quantize_.workflows.nf4.nf4_tensor", "torchao.dtypes.nf4tensor"):  # 0.18, <0.18
        try:
            mod = importlib.import_module(where)
        except Exception:  # noqa: BLE001 - missing or incompatible with this torch: said in the output, not fatal
            continue
        return mod.to_nf4, mod.linear_nf4
    return None


def linear_row(k: int, n: int, tokens: int, *, device: str, iters: int) -> dict:
    """One projection (in k, out n) as QLoRA stores it (NF4, double quant, blocksize 64, bf16 compute)."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    w = (torch.randn(n, k, device=device) * 0.02).to(torch.bfloat16)
    x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16)
    packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    compiled = torch.compile(nf4_dequantize, dynamic=False)
    compiled_linear = torch.compile(lambda x: torch.nn.functional.linear(x, nf4_dequantize(packed, qs)), dynamic=False)
    ref = F.dequantize_4bit(packed, qs)
    out_ref = bnb.matmul_4bit(x, packed.t(), quant_state=qs)
    row = {"in": k, "out": n, "tokens": tokens,
           "bnb_dequant_ms": timed(lambda: F.dequantize_4bit(packed, qs), iters, device),
           "compiled_dequant_ms": timed(lambda: compiled(packed, qs), iters, device),
           "bnb_matmul_4bit_ms": timed(lambda: bnb.matmul_4bit(x, packed.t(), quant_state=qs), iters, device),
           "bnb_dequant_linear_ms": timed(lambda: torch.nn.functional.linear(x, F.dequantize_4bit(packed, qs)),
                                          iters, device),
           "compiled_dequant_linear_ms": timed(lambda: compiled_linear(x), iters, device),
           "compiled_vs_bnb_max_diff": (compiled(packed, qs).float() - ref.float()).abs().max().item(),
           "compiled_linear_vs_bnb_max_rel": rel_diff(compiled_linear(x), out_ref)}
    # the same weight bit for bit, and the output within bf16 rounding of bnb's (its fused GEMM sums in its own order)
    row["numerics_match"] = row["compiled_vs_bnb_max_diff"] == 0 and row["compiled_linear_vs_bnb_max_rel"] < 1e-2
    ao = torchao_nf4()
    if ao:
        to_nf4, linear_nf4 = ao
        t = to_nf4(w, block_size=64, scaler_block_size=256)
        row.update(torchao_dequant_ms=timed(t.get_original_weight, iters, device),
                   torchao_linear_ms=timed(lambda: linear_nf4(x, t), iters, device),
                   # torchao quantizes its own way: its error against the bf16 weight, beside bnb's
                   torchao_weight_err=(t.get_original_weight().float() - w.float()).abs().mean().item(),
                   bnb_weight_err=(ref.float() - w.float()).abs().mean().item())
    return row


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def model_config(hub_id: str | None, layers: int):
    """The real shape's config with `layers` decoder layers (the tiny Qwen3 of medscale.model.tiny for None)."""
    from transformers import AutoConfig

    if hub_id is None:
        from medscale.model.tiny import tiny_config

        return tiny_config(512, layers, 64)
    from gpu_check import SHAPE_KEYS
    from medscale.model.resolve import shipped_config
    from medscale.recipe import ModelSection

    c = shipped_config(ModelSection(path=hub_id))[1]
    return AutoConfig.for_model(c["model_type"], **{k: c[k] for k in SHAPE_KEYS if c.get(k) is not None},
                                **{"num_hidden_layers": layers})


def qlora_model(cfg, folder: Path, device: str):
    """Random bf16 weights saved to `folder`, loaded as medscale trains them (NF4 + LoRA, medscale.model.load)."""
    from transformers import AutoModelForCausalLM

    from medscale.model.load import load_model
    from medscale.recipe import load_recipe

    with torch.device(device):
        AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder)
    recipe = load_recipe(RECIPE, [f"model.path={folder}", "model.attn_implementation=sdpa"])
    return load_model(recipe, folder=folder).train()


def profiled_step(model, tokens: int, *, recompute: bool, device: str, vocab: int) -> dict:
    """GPU (on CPU: op) time of a training step (the mean of PROFILED after a warm-up step), split into bnb's
    dequant, its fused 4-bit GEMM and the rest."""
    from torch.profiler import ProfilerActivity, profile

    if recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
    params = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        import bitsandbytes as bnb

        opt = bnb.optim.PagedAdamW8bit(params, lr=1e-5)
    else:  # bnb's paged optimizer needs CUDA
        opt = torch.optim.AdamW(params, lr=1e-5)
    ids = torch.randint(0, vocab, (1, tokens), device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(PROFILED):
            step()
        sync(device)
    kind = torch.autograd.DeviceType.CUDA if device == "cuda" else torch.autograd.DeviceType.CPU
    events = [e for e in prof.key_averages() if e.device_type == kind]
    if device != "cuda":  # CPU: the bnb ops themselves (aten ops below them hold the rest)
        events = [e for e in events if not e.key.startswith("aten::") or "dequant" in e.key]

    def self_us(e) -> float:
        return e.self_device_time_total if device == "cuda" else e.self_cpu_time_total

    total = sum(self_us(e) for e in events)

    def us(frags):
        return sum(self_us(e) for e in events if any(f in e.key.lower() for f in frags))

    return {"step_us": total / PROFILED, "dequant_us": us(DEQUANT) / PROFILED,
            "fused_4bit_us": us(FUSED_4BIT) / PROFILED,
            "kernels": sum(e.count for e in events) / PROFILED if device == "cuda" else None}


def step_rows(hub_id: str | None, tokens: list[int], *, device: str, full_layers: int) -> list[dict]:
    """The step at 1 and 2 decoder layers (each model built once), recompute off and on, and the share projected
    to `full_layers`."""
    at: dict[tuple, dict] = {}
    for layers in (1, 2):
        cfg = model_config(hub_id, layers)
        with tempfile.TemporaryDirectory(prefix="dequant-") as d:
            model = qlora_model(cfg, Path(d), device)
            for recompute in (False, True):
                for t in tokens:
                    at[layers, recompute, t] = profiled_step(model, t, recompute=recompute, device=device,
                                                             vocab=cfg.vocab_size)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    rows = []
    for recompute in (False, True):
        for t in tokens:
            one, two = at[1, recompute, t], at[2, recompute, t]
            layer = {k: two[k] - one[k] for k in ("step_us", "dequant_us", "fused_4bit_us")}
            full = one["step_us"] - layer["step_us"] + full_layers * layer["step_us"]
            rows.append({"model": hub_id or "tiny", "tokens": t, "recompute": recompute,
                         "step_us_1_layer": one["step_us"], "step_us_2_layers": two["step_us"],
                         "kernels_2_layers": two["kernels"],
                         "dequant_pct_2_layers": pct(two["dequant_us"], two["step_us"]),
                         "fused_4bit_pct_2_layers": pct(two["fused_4bit_us"], two["step_us"]),
                         "layer_us": layer["step_us"], "layer_dequant_us": layer["dequant_us"],
                         "full_layers": full_layers,
                         "dequant_pct_full": pct(full_layers * layer["dequant_us"], full),
                         "fused_4bit_pct_full": pct(full_layers * layer["fused_4bit_us"], full)})
            print(step_line(rows[-1]), flush=True)
    return rows


def pct(part: float, whole: float) -> float | None:
    return round(100 * part / whole, 1) if whole > 0 else None


def step_line(r: dict) -> str:
    return (f"step   {r['model'].split('/')[-1]:12s} tokens {r['tokens']:>5} recompute {str(r['recompute']):5s} "
            f"2 layers {r['step_us_2_layers'] / 1e3:8.2f} ms: dequant {r['dequant_pct_2_layers']}%, fused 4-bit "
            f"{r['fused_4bit_pct_2_layers']}%; per layer {r['layer_us'] / 1e3:.2f} ms; at {r['full_layers']} layers "
            f"dequant {r['dequant_pct_full']}%, fused 4-bit {r['fused_4bit_pct_full']}%")


def linear_line(r: dict) -> str:
    ao = (f"{r['torchao_dequant_ms']:8.3f} {r['torchao_linear_ms']:8.3f}" if "torchao_dequant_ms" in r
          else f"{'-':>8s} {'-':>8s}")
    return (f"linear {r['model'].split('/')[-1]:12s} {r['proj']:5s} {r['in']:>6} {r['out']:>6} {r['tokens']:>6} "
            f"{r['bnb_dequant_ms']:8.3f} {r['compiled_dequant_ms']:8.3f} {r['bnb_dequant_linear_ms']:8.3f} "
            f"{r['compiled_dequant_linear_ms']:8.3f} {r['bnb_matmul_4bit_ms']:8.3f} {ao} "
            f"{r['compiled_vs_bnb_max_diff']:9.2e} {r['compiled_linear_vs_bnb_max_rel']:9.2e}")


def save(a: argparse.Namespace, device: str, steps: list, linears: list) -> None:
    import bitsandbytes as bnb

    doc = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "bitsandbytes": bnb.__version__, "torchao": bool(torchao_nf4()), "recipe": RECIPE,
           "command": " ".join(["python3", "bench/dequant.py", *sys.argv[1:]]), "step": steps, "linear": linears}
    (a.out / "dequant.json").write_text(json.dumps(doc, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="Qwen/Qwen3-1.7B,Qwen/Qwen3-8B")
    ap.add_argument("--tokens", default="1024,4096", help="tokens a micro-batch (bnb fuses at <= 1536)")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--skip", default="", help="`step` or `linear`: leave that half out")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench-out")))
    ap.add_argument("--tiny", action="store_true", help="CPU, tiny random Qwen3: checks the code path only")
    a = ap.parse_args()
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:  # noqa: BLE001 - no bnb, no QLoRA to measure
        raise SystemExit(f"bench/dequant.py: bitsandbytes does not import ({e}); nothing to measure")
    device = "cpu" if a.tiny else "cuda"
    # one compile per weight shape of the same two functions: past dynamo's default 8 it would fall back to eager
    torch._dynamo.config.recompile_limit = 64
    if not a.tiny and not torch.cuda.is_available():
        raise SystemExit("bench/dequant.py: no CUDA GPU here; --tiny checks the code path on CPU")
    from lora_kernel import projection_shapes
    from medscale.model.resolve import shipped_config
    from medscale.recipe import ModelSection

    models = [None] if a.tiny else a.models.split(",")
    tokens = [32] if a.tiny else [int(t) for t in a.tokens.split(",")]
    iters = 1 if a.tiny else a.iters
    print("torchao:", "NF4 tensor importable" if torchao_nf4() else "not importable here (not installed?): "
                                                                   "its columns stay empty")
    steps, linears = [], []
    a.out.mkdir(parents=True, exist_ok=True)
    for m in models:
        if a.skip != "step":
            full = 2 if m is None else shipped_config(ModelSection(path=m))[1]["num_hidden_layers"]
            steps += step_rows(m, tokens, device=device, full_layers=full)
            save(a, device, steps, linears)  # after each part: a call cut short keeps what it measured
    print(f"linear {'model':12s} {'proj':5s} {'in':>6s} {'out':>6s} {'tokens':>6s} {'bnb dq':>8s} {'comp dq':>8s} "
          f"{'bnb dq+mm':>8s} {'comp dq+mm':>8s} {'bnb mm4':>8s} {'ao dq':>8s} {'ao mm':>8s} {'dq diff':>9s} "
          f"{'mm rel':>9s}   (ms)")
    for m in models:
        if a.skip == "linear":
            break
        shapes = {"q": (128, 128), "down": (384, 128)} if m is None else projection_shapes(m)
        done: dict[tuple, dict] = {}  # k and v (gate and up) share a shape: measured once
        for t in tokens:
            for proj, (k, n) in shapes.items():
                if (k, n, t) not in done:
                    done[(k, n, t)] = linear_row(k, n, t, device=device, iters=iters)
                linears.append({"model": m or "tiny", "proj": proj, **done[(k, n, t)]})
                print(linear_line(linears[-1]), flush=True)
            save(a, device, steps, linears)
    print(f"wrote {a.out / 'dequant.json'}")


if __name__ == "__main__":
    main()
