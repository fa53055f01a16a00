"""Pre-flight views of a data file: which tokens carry loss, and what lengths cost in padding."""
from __future__ import annotations

import random

import numpy as np

from medscale.data.chat import encode, render_with_spans
from medscale.data.sources import load_conversations
from medscale.data.packing import best_fit_decreasing


def segments(tok, msgs: list[dict]) -> list[tuple[str, bool]]:
    """The rendered sample as (text, carries loss) pieces, in order."""
    text, spans = render_with_spans(tok, msgs)
    out, pos = [], 0
    for a, b in spans:
        if a > pos:
            out.append((text[pos:a], False))
        out.append((text[a:b], True))
        pos = b
    if pos < len(text):
        out.append((text[pos:], False))
    return out


def render_segments(segs: list[tuple[str, bool]], color: bool) -> str:
    """Loss-carrying text in green on a terminal, else between [[ and ]]."""
    if color:
        from rich.markup import escape

        return "".join(f"[bold green]{escape(t)}[/]" if trained else f"[dim]{escape(t)}[/]" for t, trained in segs)
    return "".join(f"[[{t}]]" if trained else t for t, trained in segs)


def data_stats(path: str, tok, max_len: int = 2048, batch_size: int = 4, fmt: str = "auto", *, seed: int = 0,
               counts: dict | None = None, **load_kw) -> dict:
    """Length statistics with the tokenizer's chat template, padding waste of random pad-to-longest batches,
    and packing efficiency into rows of max_len x batch_size tokens. `counts` receives what the read found (bad
    records, the formats read)."""
    counts = {} if counts is None else counts
    convs = load_conversations(path, fmt, counts=counts, **load_kw)
    lengths, labels = [], []
    for msgs in convs:
        enc = encode(tok, msgs, max_length=10**9)
        lengths.append(len(enc.input_ids) if enc else 0)
        labels.append(sum(t != -100 for t in enc.labels) if enc else 0)
    arr = np.array(lengths)
    capped = [min(n, max_len) for n in lengths]
    order = list(range(len(capped)))
    random.Random(seed).shuffle(order)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    padded = sum(max(capped[i] for i in b) * len(b) for b in batches)
    budget = max_len * batch_size
    bins = best_fit_decreasing(capped, budget)
    return {
        "file": path, "records": len(convs), "bad_records": counts.get("bad_records", 0),
        "tokens_mean": round(float(arr.mean()), 1), "tokens_median": float(np.median(arr)),
        "tokens_p90": round(float(np.percentile(arr, 90)), 1), "tokens_max": int(arr.max()),
        "label_tokens_mean": round(float(np.mean(labels)), 1),
        "over_max_len": int((arr > max_len).sum()), "max_len": max_len, "batch_size": batch_size,
        "padding_waste": round(1 - sum(capped) / padded, 4),
        "packing_efficiency": round(sum(capped) / (len(bins) * budget), 4), "packed_rows": len(bins),
    }
