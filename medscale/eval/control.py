"""The forgetting guard: measure a control set before and after fine-tuning, flag a regression past a threshold.

A control set is general-domain SFT data in any layout medscale.data reads (mean per-token loss on the answer
tokens, rendered exactly as training renders them), or a multiple-choice benchmark (accuracy).
"""
from __future__ import annotations

import torch

from medscale.data.chat import IGNORE, encode
from medscale.data.formats import detect
from medscale.data.sources import expand_sources, load_conversations, read_records
from medscale.eval.bench import BUILTINS, BenchmarkError, load_benchmark
from medscale.eval.result import ControlResult
from medscale.verdicts import ForgettingVerdict
from medscale.eval.score import process_group_rank, gather_all, progress, score


def is_sft_data(path: str) -> bool:
    """True when the first record of the control path is an SFT conversation, False for a multiple-choice set."""
    if path in BUILTINS:
        return False
    files = expand_sources(path)
    first = next(iter(read_records(files[0])), None)
    if first is None:
        raise BenchmarkError(f"control set {path}: empty file")
    return isinstance(first[1], dict) and detect(first[1]) is not None


@torch.no_grad()
def control_loss(model, tok, path: str, max_length: int = 1024, limit: int | None = None, *, batch_size: int = 4,
                 system_prompt: str | None = None) -> ControlResult:
    """Mean per-token cross-entropy over the answer tokens of the control conversations (the first `limit`), each
    cut to `max_length` tokens from the end of its answer. Distributed: shards records, sums across processes."""
    convs = load_conversations(path, limit=limit, system_prompt=system_prompt)
    encoded = [e for c in convs if (e := encode(tok, c, max_length, truncation="truncate_response")) is not None]
    rank, world = process_group_rank()
    mine = encoded[rank::world]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with progress(len(mine), "control loss") as bar:
            order = sorted(range(len(mine)), key=lambda i: -len(mine[i].input_ids))
            for start in range(0, len(order), batch_size):
                batch = [mine[i] for i in order[start:start + batch_size]]
                width = max(len(e.input_ids) for e in batch)
                ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, e in enumerate(batch):  # right padding: positions need no adjusting
                    ids[row, :len(e.input_ids)] = torch.tensor(e.input_ids)
                    labels[row, :len(e.labels)] = torch.tensor(e.labels)
                    mask[row, :len(e.input_ids)] = 1
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
                target = labels[:, 1:].to(device)
                total += torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), target,
                                                           ignore_index=IGNORE, reduction="sum").item()
                count += int((target != IGNORE).sum())
                bar.update(len(batch))
    finally:
        model.train(was_training)
    parts = gather_all([(total, count)], world)
    total, count = sum(p[0] for p in parts), sum(p[1] for p in parts)
    return ControlResult(kind="loss", value=total / max(count, 1), n=len(encoded), tokens=count, path=str(path))


def measure_control(model, tok, path: str, *, limit: int | None = None, max_length: int = 1024, batch_size: int = 4,
                    system_prompt: str | None = None, data_dir: str | None = None, seed: int = 0,
                    model_meta: dict | None = None) -> ControlResult:
    """The control measurement of `model`: loss for SFT data, accuracy (letter mode) for a multiple-choice set."""
    if is_sft_data(path):
        result = control_loss(model, tok, path, max_length, limit, batch_size=batch_size, system_prompt=system_prompt)
    else:
        bench = load_benchmark(path, data_dir).subset(limit, seed)
        outcomes, _ = score(model, tok, bench, "letter", batch_size=batch_size, system_prompt=system_prompt)
        result = ControlResult(kind="accuracy", value=sum(o.ok for o in outcomes) / len(outcomes), n=len(outcomes),
                               path=str(path))
    result.model = model_meta or {}
    return result


def forgetting_verdict(before: ControlResult, after: ControlResult, threshold: float) -> ForgettingVerdict:
    """Flag when the control set got worse by more than `threshold` (eval.max_control_regression): a relative rise
    of the loss, or an absolute drop of the accuracy."""
    if before.kind != after.kind or before.path != after.path:
        raise ValueError(f"control results differ in kind or set: {before.kind} {before.path} vs {after.kind} "
                         f"{after.path}")
    if before.kind == "loss":
        regression = (after.value - before.value) / max(before.value, 1e-12)
        change = f"loss {before.value:.4f} -> {after.value:.4f} ({100 * regression:+.1f}%)"
    else:
        regression = before.value - after.value
        change = f"accuracy {100 * before.value:.1f}% -> {100 * after.value:.1f}% ({-100 * regression:+.1f} points)"
    flagged = regression > threshold
    line = (f"FORGETTING: control set {before.path}: {change}, beyond eval.max_control_regression={threshold}"
            if flagged else f"control set {before.path}: {change}, within eval.max_control_regression={threshold}")
    return ForgettingVerdict(kind=before.kind, before=before.value, after=after.value, regression=regression,
                             threshold=threshold, flagged=flagged, line=line)
