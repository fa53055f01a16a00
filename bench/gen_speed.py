"""Generation throughput of the engine's in-process backends on random weights in the R1-Distill shapes: today's
padded `generate` at batch 8 and 64 against continuous batching and its knobs (CUDA graphs, the scheduler's
batch-token budget, torch.compile of the decode step), on the same prompts, every request forced to
--new-tokens output tokens (min_new_tokens / no end-of-turn), greedy.

    CUDA_VISIBLE_DEVICES=0 python bench/gen_speed.py --configs .gpu/model_configs.json --tokenizer .gpu/tok \
        --eval-data .gpu/eval --shapes deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --new-tokens 2048 --prompts 256
    python bench/gen_speed.py --tiny --new-tokens 16 --prompts 16     # CPU smoke run
    python bench/gen_speed.py --tiny --new-tokens 16 --prompts 16 --variants padded-b8,endpoint

Each run ends with the wall time projected from each rate for --project QUESTIONS,SAMPLES,TOKENS (default:
CMMLU-medical with an R1 model, 4 samples, a 4k think budget plus the answer).

Prompts are CMMLU-medical questions (the shipped eval sets) rendered as R1-style generate-mode prompts. A padded
variant runs B x `--padded-batches` prompts (the planned batch: --prompts per batch), continuous batching
--prompts; a compiled-* variant first runs 4 decode steps of its first batch's shapes apart (`warmup_s`: the compile
and the CUDA graph capture), and `steady_tok_s` is then every timed call's rate (else all calls but the first).
The `endpoint` variant saves the model and tokenizer to a temporary folder, starts `medscale serve` on it as a process
of this Python and sends --prompts through the endpoint backend, --concurrency at a time (default: all), end-of-turn
ignored (`ignore_eos`), and says the batches the server ran. Prints output tok/s per variant, a table, and writes
$OUT/gen_speed.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def cb(**config) -> dict:
    """LocalBackend options for continuous batching with these ContinuousBatchingConfig fields."""
    return {"cb_config": config}


# variant -> (backend mode, batch size, LocalBackend options: padded decoding or continuous batching's config); any
# name may end in "@ATTN" to run with that attention implementation (e.g. cb-graphs@flex_attention), the model's own
# otherwise
VARIANTS = {
    "padded-b8": ("padded", 8, {}),  # today's generate(): eager decoding, batch 8
    "padded-b64": ("padded", 64, {}),
    "padded-b256": ("padded", 256, {}),
    "padded-auto": ("padded", None, {}),  # the batch the free GPU memory holds (fit_batch), eager decoding
    "static-auto": ("padded", None, {"decode": "static"}),  # static cache, decode step not compiled
    "compiled-b8": ("padded", 8, {"decode": "compiled"}),  # static cache + compiled decode step (CUDA graphs)
    "compiled-b64": ("padded", 64, {"decode": "compiled"}),
    "compiled-auto": ("padded", None, {"decode": "compiled"}),  # the candidate default on CUDA, once measured
    "cb-default": ("cb", 0, cb()),
    "cb-no-graphs": ("cb", 0, cb(use_cuda_graph=False)),
    "cb-graphs": ("cb", 0, cb(use_cuda_graph=True)),
    "cb-tokens-2k": ("cb", 0, cb(max_batch_tokens=2048)),
    "cb-tokens-8k": ("cb", 0, cb(max_batch_tokens=8192)),
    "cb-graphs-4k": ("cb", 0, cb(use_cuda_graph=True, max_batch_tokens=4096)),
    "cb-graphs-16k": ("cb", 0, cb(use_cuda_graph=True, max_batch_tokens=16384)),
    "cb-graphs-reqs256": ("cb", 0, cb(use_cuda_graph=True, max_batch_tokens=8192, max_requests_per_batch=256)),
    "cb-compile": ("cb", 0, cb(default_compile_level=1)),
    "cb-graphs-compile": ("cb", 0, cb(use_cuda_graph=True, default_compile_level=1)),
}
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
              "head_dim", "vocab_size", "rope_theta", "tie_word_embeddings", "max_position_embeddings", "rms_norm_eps",
              "bos_token_id", "eos_token_id")


class VariantTimeout(BaseException):
    """Past --variant-timeout: a BaseException, so the engine's fallbacks (which catch Exception) let it through."""


def prompts(eval_data: Path | None, n: int) -> list:
    """CMMLU-medical as generate-mode conversations (the shipped files), else the shipped seed-003 questions."""
    from medscale.generate.engine import Request

    if eval_data is not None:
        from medscale.eval.prompt import mcq_messages
        from medscale.eval.run import load_benchmarks

        bench = load_benchmarks(["cmmlu-med"], str(eval_data))[0]
        qs = (bench.questions * (n // len(bench.questions) + 1))[:n]
        return [Request(f"{q.id}#{i}", mcq_messages(q, bench.language, "generate")) for i, q in enumerate(qs)]

    path = HERE.parent / "medscale" / "eval" / "questions" / "seed003_zh.jsonl"
    qs = [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [Request(f"q{i}", [{"role": "user", "content": qs[i % len(qs)]}]) for i in range(n)]


def build(shape: str, configs: Path, tokenizer: Path, device: str):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    spec = json.loads(configs.read_text())["models"][shape]
    cfg = AutoConfig.for_model(spec["model_type"], **{k: spec[k] for k in SHAPE_KEYS if spec.get(k) is not None})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(tokenizer)


def tiny():
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medscale.model.tiny import build_tiny_model

    d = build_tiny_model(Path(tempfile.mkdtemp()) / "tiny", layers=2, hidden=64)
    return AutoModelForCausalLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d)


def run_variant(model, tok, name: str, reqs: list, new_tokens: int, padded_batches: int) -> dict:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopAt(StoppingCriteria):
        """Stops every row at `length` tokens: the compiled variants' warm-up (a custom type, as generate refuses a
        second MaxLengthCriteria)."""

        def __init__(self, length: int):
            self.length = length

        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, device=input_ids.device)

    from medscale.generate.engine import generate
    from medscale.generate.local import LocalBackend
    from medscale.generate.settings import SamplingSettings

    preset, _, attn = name.partition("@")
    mode, batch, options = VARIANTS[preset]
    if attn:
        model.set_attn_implementation(attn)
    if mode == "padded":  # B x --padded-batches prompts; the planned batch (auto) takes --prompts per batch
        todo = reqs[:(batch or len(reqs) // padded_batches) * padded_batches]
    else:
        todo = reqs[:len(reqs) // padded_batches]
    backend = LocalBackend(model, tok, mode=mode, batch_size=batch, ignore_eos=True, chunk=len(todo), **options)
    s = SamplingSettings(do_sample=False, max_new_tokens=new_tokens)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    calls, plain, warm = [], backend._generate, []

    def timed(args):  # each padded generate call's seconds and new tokens: the first pays for compilation
        if options.get("decode") == "compiled" and not warm:  # compile and capture apart: a few steps, same shapes
            t = time.perf_counter()
            plain({**args, "stopping_criteria": StoppingCriteriaList([StopAt(args["input_ids"].shape[1] + 4)])})
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            warm.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = plain(args)
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        calls.append((time.perf_counter() - t, out.shape[0] * (out.shape[1] - args["input_ids"].shape[1])))
        return out

    backend._generate = timed
    run = generate(todo, s, backend)
    later = calls if warm else calls[1:]  # once compiled apart, every timed call is a steady one
    steady = round(sum(n for _, n in later) / sum(t for t, _ in later), 1) if later else None
    return {"variant": name, "prompts": len(todo), "tokens": run.tokens, "seconds": round(run.seconds, 2),
            "warmup_s": round(warm[0], 1) if warm else None,
            "first_call_s": round(calls[0][0], 1) if calls else None, "steady_tok_s": steady,
            "tok_s": round(run.tokens_per_s, 1), "backend": run.backend["backend"], "fallback": run.backend["fallback"],
            "mean_new_tokens": round(run.tokens / max(1, len(todo)), 1),
            "attn": model.config._attn_implementation}


def run_endpoint(model, tok, reqs: list, new_tokens: int, *, concurrency: int | None, timeout: int) -> dict:
    """The prompts through `medscale serve` (its own process, the model saved first) and the endpoint backend."""
    import re
    import tempfile

    import torch

    from medscale.generate.endpoint import EndpointBackend
    from medscale.generate.engine import generate
    from medscale.generate.serve import serving
    from medscale.generate.settings import SamplingSettings

    s = SamplingSettings(do_sample=False, max_new_tokens=new_tokens)
    with tempfile.TemporaryDirectory(prefix="gen-speed-serve-") as d:
        model.save_pretrained(Path(d) / "model")
        tok.save_pretrained(Path(d) / "model")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the server plans its batches from the free GPU memory
        log = Path(d) / "serve.log"
        wait = ["--batch-wait-ms", "500"]  # one client's burst of --concurrency requests: let it arrive whole
        with serving(Path(d) / "model", "--name", "gen-speed", *wait, log_file=log) as (_, url):
            backend = EndpointBackend(url, concurrency=concurrency or len(reqs), timeout=timeout or 24 * 3600,
                                      retries=0, ignore_eos=True)
            generate(reqs[:1], s.model_copy(update={"max_new_tokens": 1}), backend)  # the server's first-call set-up
            run = generate(reqs, s, backend)
        batches = [int(n) for n in re.findall(r"served a batch: (\d+) requests", log.read_text(encoding="utf-8"))]
    return {"variant": "endpoint", "prompts": len(reqs), "tokens": run.tokens, "seconds": round(run.seconds, 2),
            "tok_s": round(run.tokens_per_s, 1), "backend": f"medscale serve {' '.join(wait)}, batches {batches[1:]}",
            "fallback": None, "mean_new_tokens": round(run.tokens / max(1, len(reqs)), 1), "attn": "server's"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", type=Path, default=Path("/work/shared/realdata/model_configs.json"))
    ap.add_argument("--tokenizer", type=Path, default=Path("/work/shared/realdata/qwen3_tokenizer"))
    ap.add_argument("--eval-data", type=Path, default=None)
    ap.add_argument("--shapes", default="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B,"
                                        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    ap.add_argument("--variants", default="padded-b8,padded-b64,cb-default,cb-tokens-8k")
    ap.add_argument("--prompts", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=2048)
    ap.add_argument("--padded-batches", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=None, help="endpoint: requests in flight (default: all)")
    ap.add_argument("--variant-timeout", type=int, default=0, help="seconds a variant may run (0: no limit)")
    ap.add_argument("--project", type=projection, default=(1815, 4, 4300), metavar="QUESTIONS,SAMPLES,TOKENS",
                    help="wall time projected from each rate: CMMLU-medical's 1,815 questions x 4 samples x a 4k "
                         "think budget plus the answer (default)")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke run on the tiny random Qwen3")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gen_speed.json")
    a = ap.parse_args()

    def too_long(*_):
        raise VariantTimeout(f"over --variant-timeout {a.variant_timeout}s")

    signal.signal(signal.SIGALRM, too_long)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, t0 = [], time.perf_counter()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_suffix(".rows.jsonl")  # each row as it is measured: a run cut short keeps what it had

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    for shape in (["tiny"] if a.tiny else a.shapes.split(",")):
        say(f"building {shape}")
        model, tok = tiny() if a.tiny else build(shape, a.configs, a.tokenizer, device)
        default_attn = model.config._attn_implementation
        reqs = prompts(a.eval_data, a.prompts * a.padded_batches)
        say(f"{len(reqs)} prompts ready")
        for name in a.variants.split(","):
            say(f"{shape} {name}")
            signal.alarm(a.variant_timeout)  # a variant that stalls (e.g. a paged cache without flash) is cut short
            try:
                model.set_attn_implementation(default_attn)
                measured = run_endpoint(model, tok, reqs[:a.prompts], a.new_tokens, concurrency=a.concurrency,
                                        timeout=a.variant_timeout) if name == "endpoint" else \
                    run_variant(model, tok, name, reqs, a.new_tokens, a.padded_batches)
                row = {"shape": shape, "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
                       **measured}
            except (Exception, VariantTimeout) as e:  # noqa: BLE001 - one failed variant must not lose the others'
                row = {"shape": shape, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]}
            finally:
                signal.alarm(0)
            print(json.dumps(row), flush=True)
            with partial.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    a.out.write_text(json.dumps({"new_tokens": a.new_tokens, "prompts": a.prompts, "rows": rows}, indent=1))
    print("\n| shape | variant | prompts | new tokens each | output tok/s | steady tok/s | warm-up s | first call s "
          "| backend | attention |\n|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['shape'].split('/')[-1]} | {r['variant']} | {r.get('prompts', '–')} | "
              f"{r.get('mean_new_tokens', '–')} | {r.get('tok_s', r.get('error', ''))} | {r.get('steady_tok_s', '')} | "
              f"{'' if r.get('warmup_s') is None else r['warmup_s']} | {r.get('first_call_s', '')} | "
              f"{r.get('backend', '')} | {r.get('attn', '')} |")
    questions, samples, tokens = a.project
    print(f"\nProjected: {questions} questions x {samples} samples x {tokens} tokens each "
          f"({questions * samples * tokens / 1e6:.1f}M tokens), at each variant's steady (else overall) rate:")
    for r in rows:
        rate = r.get("steady_tok_s") or r.get("tok_s")
        if rate:
            print(f"  {r['shape'].split('/')[-1]} {r['variant']}: {questions * samples * tokens / rate / 3600:.1f} h")


def projection(text: str) -> tuple[int, int, int]:
    questions, samples, tokens = (int(x) for x in text.split(","))
    return questions, samples, tokens


if __name__ == "__main__":
    main()
