"""Why Liger's RMSNorm fails under torch.compile (issue 24, lever 2): the smallest cases, each eager then compiled
with inductor, forward and backward, one line each (ok, or the exception's type and first line).

    python3 bench/liger_rmsnorm_compile.py [--json bench/results/liger_rmsnorm_compile_h100.json]

The 8B packed run (bench/results/speed_qwen3-8b_uncapped_h100.json) failed with "AttributeError: 'float' object has
no attribute 'to'" compiling Liger's RMSNorm. The likely cause, from the sources: inductor hands a user-defined Triton
kernel's non-tensor arguments to Triton as `ASTSource.constants` (torch/_higher_order_ops/triton_kernel_wrap.py), and
since Triton 3.5 (triton-lang/triton#8248) every entry there is compiled as a constexpr; Liger's RMSNorm kernels call
`eps.to(...)` / `offset.to(...)` on their float scalars (pinned to fp32, Liger #1350), and a constexpr float has no
`.to` (triton-lang/triton#2939). pytorch/pytorch#170049 is the upstream issue (its fix #169782 was reverted, #171926).
The cases separate the three layers:
  triton-scalar-to   a six-line Triton kernel that calls `.to` on a float argument: fails alone => torch/Triton's bug
  liger-rmsnorm      LigerRMSNorm (Qwen3's eps, offset 0) on a bf16 activation
  liger-rmsnorm-off  the same inside torch.compiler.disable: the rest compiles, the kernel runs eagerly
  liger-flce         Liger's fused linear cross-entropy (train.use_liger_kernel=fused_linear_cross_entropy)
On a machine without CUDA it says so and exits 0: there is nothing to reproduce.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path

import torch

HIDDEN, VOCAB, TOKENS = 4096, 151936, 512  # Qwen3-8B's width and vocabulary, a short row


def _triton_scalar_to():
    import triton
    import triton.language as tl

    @triton.jit
    def scale(x_ptr, y_ptr, n, eps, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + i, mask=i < n)
        tl.store(y_ptr + i, x * eps.to(tl.float32), mask=i < n)

    def fn(x):
        y = torch.empty_like(x)
        scale[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), 1e-6, BLOCK=1024)
        return y

    return fn, lambda: (torch.randn(4096, device="cuda"),), False


def _rmsnorm(disabled: bool):
    from liger_kernel.transformers.rms_norm import LigerRMSNorm

    norm = LigerRMSNorm(HIDDEN, eps=1e-6).cuda().to(torch.bfloat16)
    fn = torch.compiler.disable(norm) if disabled else norm
    return (lambda x: fn(x) * 2), lambda: (torch.randn(1, TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16,
                                                      requires_grad=True),), True


def _flce():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    loss = LigerFusedLinearCrossEntropyLoss()
    weight = torch.randn(VOCAB, HIDDEN, device="cuda", dtype=torch.bfloat16) * 0.02
    return (lambda h, y: loss(weight, h, y)), lambda: (
        torch.randn(TOKENS, HIDDEN, device="cuda", dtype=torch.bfloat16, requires_grad=True),
        torch.randint(0, VOCAB, (TOKENS,), device="cuda")), True


CASES = {"triton-scalar-to": _triton_scalar_to, "liger-rmsnorm": lambda: _rmsnorm(False),
         "liger-rmsnorm-off": lambda: _rmsnorm(True), "liger-flce": _flce}


def _once(fn, inputs, backward: bool):
    out = fn(*inputs)
    if backward:
        out.float().sum().backward()
    return out.detach().float()


def run_case(name: str) -> dict:
    """Eager, then compiled (inductor): 'ok' with the largest difference, or where it failed and how."""
    row: dict = {"case": name}
    torch._dynamo.reset()
    try:
        fn, make, backward = CASES[name]()
        torch.manual_seed(0)
        eager = _once(fn, make(), backward)
    except Exception as e:  # noqa: BLE001 - a failing case is the measurement
        return {**row, "eager": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    row["eager"] = "ok"
    torch.manual_seed(0)
    try:
        compiled = _once(torch.compile(fn, backend="inductor"), make(), backward)
        row["compiled"] = "ok"
        row["max_abs_diff_vs_eager"] = float((compiled - eager).abs().max()) if compiled.shape == eager.shape else None
    except Exception as e:  # noqa: BLE001
        lines = [ln for ln in traceback.format_exception_only(type(e), e) if ln.strip()]
        causes = [f"{type(c).__name__}: {c}" for c in _chain(e)]
        row.update(compiled="failed", error=lines[-1].strip()[:400], root=causes[-1][:400] if causes else None)
    return row


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def versions() -> dict:
    out = {"torch": torch.__version__}
    for mod in ("triton", "liger_kernel", "transformers"):
        try:
            from importlib.metadata import version

            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    ap.add_argument("--json", type=Path, help="also write the rows and versions here")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("bench/liger_rmsnorm_compile.py needs a CUDA GPU (Liger's kernels are Triton): nothing to reproduce here")
        return
    result = {"versions": versions(), "device": torch.cuda.get_device_name(), "rows": []}
    print(json.dumps(result["versions"]))
    for name in a.cases.split(","):
        row = run_case(name)
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
