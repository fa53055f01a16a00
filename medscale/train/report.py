"""What a run tells its user at the end: was the fine-tune better than the base, and the curves."""
from __future__ import annotations

import math
from pathlib import Path


def eval_verdict(history: list[dict], final_eval_loss: float | None) -> dict:
    """Held-out loss of the base model (step 0) vs the fine-tune, said plainly (seed 004: most
    fine-tunes there were worse than the base, and nothing told the user)."""
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    base = next((loss for step, loss in evals if step == 0), None)
    final = final_eval_loss if final_eval_loss is not None else (evals[-1][1] if evals else None)
    out = {"eval_loss_base": base, "eval_loss_final": final,
           "eval_loss_best": min((loss for _, loss in evals), default=None)}
    if base is None or final is None:
        out["verdict"] = "no held-out evaluation (set eval.eval_strategy and data.eval_size to measure)"
        return out
    if not math.isfinite(final):
        out["verdict"] = f"held-out loss {base:.4f} (base) -> {final}: the fine-tune DIVERGED; lower the learning rate"
        return out
    change = (final - base) / base * 100
    better = final < base
    out["eval_loss_change_pct"] = round(change, 2)
    out["verdict"] = (f"held-out loss {base:.4f} (base) -> {final:.4f} ({change:+.1f}%): "
                      + ("the fine-tune is better than the base model on held-out data" if better else
                         "WORSE than the base model on held-out data: lower the learning rate or train fewer steps"))
    return out


def plot_losses(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.5)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss", lw=1.5)
        base = next((loss for step, loss in evals if step == 0), None)
        if base is not None:
            ax.axhline(base, ls="--", c="grey", lw=1, label=f"base model eval loss {base:.3f}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
