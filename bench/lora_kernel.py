"""peft's LoRA linear against medscale's fused branch (`adapter.fused: auto`, medscale/model/kernels), forward and
backward of one adapted linear as training runs it: a frozen bf16 base, fp32 adapters, bf16 autocast, an input that
needs its gradient (activation checkpointing), at the seeds' shapes (Qwen3-1.7B and 8B projections, r 16 and 64,
900 to 16k tokens a micro-batch, the recipes' dropout 0.05 and none).

    python3 bench/lora_kernel.py [--models Qwen/Qwen3-1.7B,Qwen/Qwen3-8B] [--ranks 16,64] [--tokens 900,4096,16384]
                                 [--dropouts 0.05,0] [--iters 20] [--json bench/results/lora_kernel_h100.json]
    python3 bench/lora_kernel.py --dry-run     # CPU, tiny shapes: the code path, not a measurement

Per row: ms per forward+backward of peft and of the fused branch, and on CUDA the kernels one step launches and the
share of GPU time in elementwise kernels (PyTorch's elementwise and dropout kernels: what issue 24 wants from 17% to
under 5%). A `layer` row sums a decoder layer's seven projections.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/profile_summary.py's kernel kinds
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # medscale from this checkout, as bench/speed.py

PROJECTIONS = ("q", "k", "v", "o", "gate", "up", "down")


def projection_shapes(hub_id: str) -> dict[str, tuple[int, int]]:
    """(in, out) features of each adapted projection, from the config.json facts medscale ships."""
    from medscale.model.resolve import shipped_config
    from medscale.recipe import ModelSection

    c = shipped_config(ModelSection(path=hub_id))[1]
    h, inter, hd = c["hidden_size"], c["intermediate_size"], c.get("head_dim") or c["hidden_size"] // c[
        "num_attention_heads"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, inter), "up": (h, inter),
            "down": (inter, h)}


def lora_layers(k: int, n: int, r: int, p: float, device: str):
    """(peft's, fused) LoRA linears on one frozen base, as medscale.model.load builds them for training."""
    from peft import LoraConfig, get_peft_model

    from medscale.model.kernels.lora import fuse_lora
    from medscale.model.load import keep_lora_inputs_under_autocast

    base = torch.nn.Linear(k, n, bias=False, device=device, dtype=torch.bfloat16)
    peft_model = get_peft_model(torch.nn.Sequential(base), LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=p,
                                                                      target_modules=["0"], init_lora_weights=False))
    keep_lora_inputs_under_autocast(peft_model)
    fused = copy.deepcopy(peft_model)
    keep_lora_inputs_under_autocast(fused)
    fuse_lora(fused)
    return peft_model.train(), fused.train()


def step(model, x: torch.Tensor, grad: torch.Tensor) -> None:
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    out.backward(grad)


def timed(model, x, grad, iters: int) -> float:
    """ms per forward+backward, after two warm-up steps (Triton compiles there)."""
    for _ in range(2):
        step(model, x, grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        step(model, x, grad)
    if x.is_cuda:
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / iters


def kernel_profile(model, x, grad) -> tuple[int, float]:
    """(kernels launched, % of their GPU time in elementwise kernels, as bench/profile_summary.py sorts them, and
    PyTorch's dropout kernel) of one forward+backward."""
    from profile_summary import kernel_kind
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(model, x, grad)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    busy = sum(e.self_device_time_total for e in kernels) or 1.0
    elementwise = sum(e.self_device_time_total for e in kernels
                      if kernel_kind(e.key) == "elementwise" or "dropout" in e.key.lower())
    return sum(e.count for e in kernels), 100.0 * elementwise / busy


def measure(k: int, n: int, r: int, p: float, tokens: int, *, device: str, iters: int) -> dict:
    peft_model, fused = lora_layers(k, n, r, p, device)
    x = torch.randn(tokens, k, device=device, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(tokens, n, device=device, dtype=torch.bfloat16)
    row = {"peft_ms": timed(peft_model, x, grad, iters), "fused_ms": timed(fused, x, grad, iters)}
    if device == "cuda":
        (row["peft_kernels"], row["peft_elementwise_pct"]), (row["fused_kernels"], row["fused_elementwise_pct"]) = \
            kernel_profile(peft_model, x, grad), kernel_profile(fused, x, grad)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="Qwen/Qwen3-1.7B,Qwen/Qwen3-8B")
    ap.add_argument("--ranks", default="16,64")
    ap.add_argument("--tokens", default="900,4096,16384")
    ap.add_argument("--dropouts", default="0.05,0")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, 1 step: checks the code path only")
    a = ap.parse_args()
    device = "cpu" if a.dry_run else "cuda"
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench/lora_kernel.py: no CUDA GPU here; --dry-run checks the code path on CPU")
    shapes = {"tiny": {"q": (64, 64), "down": (96, 64)}} if a.dry_run else \
        {m: projection_shapes(m) for m in a.models.split(",")}
    ranks, tokens = ([8], [32]) if a.dry_run else ([int(v) for v in a.ranks.split(",")],
                                                   [int(v) for v in a.tokens.split(",")])
    dropouts = [float(v) for v in a.dropouts.split(",")]
    print(f"{'model':16s} {'proj':5s} {'in':>6s} {'out':>6s} {'r':>3s} {'tokens':>6s} {'p':>5s} {'peft ms':>8s} "
          f"{'fused ms':>8s} {'speedup':>7s} {'kernels':>9s} {'elementwise %':>13s}")
    rows = []
    for model, projs in shapes.items():
        for r in ranks:
            for t in tokens:
                for p in dropouts:
                    layer = {"peft_ms": 0.0, "fused_ms": 0.0}
                    for name, (k, n) in projs.items():
                        row = {"model": model, "proj": name, "in": k, "out": n, "r": r, "tokens": t, "p": p,
                               **measure(k, n, r, p, t, device=device, iters=1 if a.dry_run else a.iters)}
                        rows.append(row)
                        layer = {key: layer[key] + row[key] for key in layer}
                        print(line(row))
                    print(line({"model": model, "proj": "layer", "in": "", "out": "", "r": r, "tokens": t, "p": p,
                                **layer}))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                       "torch": torch.__version__, "rows": rows}, f, indent=1)


def line(row: dict) -> str:
    kernels = f"{row['peft_kernels']}/{row['fused_kernels']}" if "peft_kernels" in row else "-"
    share = f"{row['peft_elementwise_pct']:.0f}/{row['fused_elementwise_pct']:.0f}" if "peft_kernels" in row else "-"
    return (f"{row['model'].split('/')[-1]:16s} {row['proj']:5s} {row['in']:>6} {row['out']:>6} {row['r']:>3} "
            f"{row['tokens']:>6} {row['p']:>5} {row['peft_ms']:8.3f} {row['fused_ms']:8.3f} "
            f"{row['peft_ms'] / row['fused_ms']:6.2f}x {kernels:>9s} {share:>13s}")


if __name__ == "__main__":
    main()
