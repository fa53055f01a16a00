"""Where a training step's time goes, from a torch.profiler trace (issue 24's profile summaries): top kernels by GPU
time, kernel launches per step, and the host overhead (the share of the step the GPU is idle, the CPU time spent in
CUDA launch calls, the host-device syncs).

    python3 bench/profile_summary.py --out bench/results/profile_qwen3-1.7b_seed_h100 \
        before=speed_qwen3-1.7b_seed_before.json after=speed_qwen3-1.7b_seed.json
    python3 bench/profile_summary.py --out /tmp/p --steps 2 cpu=trace.json.gz   # a trace exported by torch.profiler

Each input is LABEL=PATH: a chrome trace (`prof.export_chrome_trace`, .json or .json.gz, --steps profiled steps in
it), or a bench/speed.py JSON, whose runs profiled with `--profile N` carry this summary (`summarize` runs in the
child). Writes OUT.json and OUT.md, one column per label and run.
"""
from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

GPU_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # kineto's categories of work a stream runs
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")  # host waits


# Kernel name fragments -> where the time goes (first match wins; lower-case).
KINDS = [("attention", ("flash", "fmha", "attn", "varlen")), ("4-bit dequant", ("dequant", "4bit", "kgemm_4bit")),
         ("optimizer", ("adam", "optimizer", "multi_tensor")),
         ("triton (liger)", ("liger", "_rms_norm", "_swiglu", "_rope", "cross_entropy", "triton")),
         ("gemm", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "sm90", "sm100", "wgmma")),
         ("copy / cast", ("copy", "memcpy", "memset", "cast")), ("reduce", ("reduce",)),
         ("elementwise", ("elementwise", "vectorized", "unrolled", "index", "scatter", "gather"))]


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((k for k, frags in KINDS if any(f in low for f in frags)), "other")


def load_trace(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def busy_us(spans: list[tuple[float, float]]) -> float:
    """Time covered by at least one of the (start, end) spans: kernels on several streams overlap."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(spans):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def summarize(trace: dict, steps: int, wall_us: float | None = None, top: int = 15) -> dict:
    """The profiled window's summary per step. `wall_us`: the window's wall time as the caller measured it (default:
    the span of the trace's events)."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in events if e.get("cat", "").lower() in GPU_WORK]
    runtime = [e for e in events if e.get("cat", "").lower() in ("cuda_runtime", "cuda_driver")]
    if wall_us is None:
        wall_us = (max(e["ts"] + e["dur"] for e in events) - min(e["ts"] for e in events)) if events else 0.0
    busy = busy_us([(e["ts"], e["ts"] + e["dur"]) for e in gpu])
    by_name: dict[str, list[float]] = {}
    for e in gpu:
        by_name.setdefault(e["name"], []).append(e["dur"])
    kernel_us = sum(e["dur"] for e in gpu) or 1.0
    kinds: dict[str, float] = {}
    for name, durs in by_name.items():
        kinds[kernel_kind(name)] = kinds.get(kernel_kind(name), 0.0) + sum(durs)
    launches = [e for e in runtime if "launch" in e["name"].lower()]
    ranked = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:top]
    return {
        "steps": steps, "wall_ms_per_step": round(wall_us / steps / 1e3, 2),
        "gpu_busy_pct": round(100 * busy / wall_us, 1) if wall_us else None,
        "gpu_idle_pct": round(100 * (1 - busy / wall_us), 1) if wall_us else None,
        "busy_ms_per_step": round(busy / steps / 1e3, 2),
        "launches_per_step": round(len(gpu) / steps, 1),
        "launch_api_ms_per_step": round(sum(e["dur"] for e in launches) / steps / 1e3, 2),
        "syncs_per_step": round(sum(e["name"] in SYNCS for e in runtime) / steps, 1),
        "kinds_pct_of_busy": {k: round(100 * v / kernel_us, 1)
                              for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        # [name, % of kernel time, calls in the window]: the layout bench/speed.py prints
        "top": [[name[:90], round(100 * sum(durs) / kernel_us, 1), len(durs)] for name, durs in ranked]}


def columns(label: str, path: Path, steps: int) -> dict[str, dict]:
    """label -> summary: a trace summarized here, or each profiled run of a bench/speed.py JSON."""
    doc = load_trace(path)
    if "traceEvents" in doc:
        return {label: summarize(doc, steps)}
    found = {f"{label}: {r['name']}": r["profile"] for r in doc.get("runs", []) if r.get("profile")}
    if not found:
        raise SystemExit(f"{path}: no run with a profile (run bench/speed.py with --profile N) and no traceEvents")
    return found


ROWS = [("ms per step (profiled)", "wall_ms_per_step"), ("GPU busy %", "gpu_busy_pct"), ("GPU idle %", "gpu_idle_pct"),
        ("kernel launches per step", "launches_per_step"),
        ("CPU in launch calls, ms per step", "launch_api_ms_per_step"),
        ("host-device syncs per step", "syncs_per_step")]


def markdown(cols: dict[str, dict], top: int = 10) -> str:
    heads = list(cols)
    lines = ["| | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for title, key in ROWS:
        lines.append(f"| {title} | " + " | ".join(str(cols[h].get(key, "–")) for h in heads) + " |")
    kinds = list(dict.fromkeys(k for c in cols.values() for k in c.get("kinds_pct_of_busy", {})))
    for k in kinds:
        lines.append(f"| {k}, % of kernel time | " + " | ".join(
            str(cols[h].get("kinds_pct_of_busy", {}).get(k, "–")) for h in heads) + " |")
    for h in heads:
        lines += ["", f"Top kernels, {h}:", "", "| kernel | % of kernel time | calls |", "|---|---:|---:|"]
        lines += [f"| `{name}` | {pct} | {n} |" for name, pct, n in cols[h].get("top", [])[:top]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("inputs", nargs="+", help="LABEL=PATH: a chrome trace or a bench/speed.py JSON")
    ap.add_argument("--steps", type=int, default=1, help="optimizer steps a chrome trace holds")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    a = ap.parse_args()
    cols: dict[str, dict] = {}
    for item in a.inputs:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"bench/profile_summary.py: {item!r} is not LABEL=PATH of an existing file")
        cols.update(columns(label, Path(path), a.steps))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{a.out}.json").write_text(json.dumps(cols, indent=1))  # not with_suffix: "qwen3-1.7b" holds a dot
    Path(f"{a.out}.md").write_text(markdown(cols))
    print(markdown(cols))


if __name__ == "__main__":
    main()
