"""Trainer callbacks and the small Trainer subclass that feeds them.

HF Trainer stays in charge of the loop; what medscale adds is measurement
(real-token throughput, peak memory, MFU), adaptive clipping, a guard against non-finite losses, and the
Trainer side of the attempt lifecycle (stop agreement across ranks, verified checkpoints, retention; the
record itself is `medscale.jobs.attempt`).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerCallback

from medscale.errors import AttemptStopped, RunFailed, as_disk_full, debugging
from medscale.jobs import stop
from medscale.jobs.attempt import Attempt
from medscale.jobs.checkpoint import delete_checkpoint, retention_plan, write_manifest
from medscale.jobs.record import PRIVATE, RECIPE_FILE, write_text_atomic
from medscale.registry import utcnow
from medscale.train.dist import agree_max, barrier, is_distributed

log = logging.getLogger("medscale.train")

# Dense bf16 peak FLOP/s per device, for the MFU estimate (no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A800": 312e12,
                   "H800": 989e12, "4090": 165e12, "4080": 97e12, "A10": 125e12, "L4": 121e12, "V100": 125e12}


def device_peak_flops() -> float | None:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(total_params: int, trainable_params: int, recompute: float) -> float:
    """Matmul FLOPs per trained token: forward 2N, activation grads 2N, weight grads 2N_trainable,
    plus another forward (2N) over the share `recompute` (0..1, or a bool) of the layers recomputed.
    Attention score FLOPs are left out, so MFU is slightly understated at long context."""
    return 2 * total_params * (2 + float(recompute)) + 2 * trainable_params


def decoder_blocks(model) -> list:
    """The model's repeated decoder layers: the units transformers recomputes."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


class RecomputeFirstLayers(TrainerCallback):
    """gradient_checkpointing=auto: once the Trainer has switched recompute on for every decoder layer, keep it
    on the first `n` only (the plan's choice). The backward reaches those last, after the later layers' kept
    activations are freed, so that is where recompute saves the most peak memory."""

    def __init__(self, n: int):
        self.n = n

    def on_train_begin(self, args, state, control, model=None, **kw):
        for i, block in enumerate(decoder_blocks(model)):
            block.gradient_checkpointing = i < self.n


class ThroughputMeter(TrainerCallback):
    """Tokens/s of real (non-padding) tokens, samples/s, peak GPU memory and MFU, over optimizer steps
    only (evaluation and checkpoint time excluded), per log window and for the whole run (the whole-run
    figures leave out the first, warm-up step; its time is reported as first_step_s)."""

    def __init__(self, samples_per_step: int, world_size: int, flops_per_token: float | None):
        self.samples_per_step, self.world = samples_per_step, world_size
        self.fpt, self.peak = flops_per_token, device_peak_flops()
        self.window = [0.0, 0, 0]   # seconds, tokens, steps since the last log
        self.total = [0.0, 0, 0]    # every step after the first
        self.first_step_s: float | None = None
        self.recent: deque[tuple[float, int]] = deque(maxlen=10)  # (seconds, tokens) of the last steps
        self._t = self._tokens0 = 0

    def on_step_begin(self, args, state, control, **kw):
        self._t, self._tokens0 = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kw):
        dt, dtok = time.perf_counter() - self._t, state.num_input_tokens_seen - self._tokens0
        self.recent.append((dt, dtok))
        if self.first_step_s is None:  # kernel compilation, allocator warm-up: reported, kept out of the totals
            self.first_step_s = dt
            accs = (self.window,)
        else:
            accs = (self.window, self.total)
        for acc in accs:
            acc[0] += dt
            acc[1] += dtok
            acc[2] += 1

    def _rates(self, seconds: float, tokens: int, steps: int) -> dict:
        if seconds <= 0 or steps == 0:
            return {}
        out = {"tokens_per_s": tokens / seconds, "tokens_per_s_per_device": tokens / seconds / self.world,
               "samples_per_s": steps * self.samples_per_step / seconds}
        if torch.cuda.is_available():
            out["peak_mem_alloc_gb"] = torch.cuda.max_memory_allocated() / 2**30
            out["peak_mem_reserved_gb"] = torch.cuda.max_memory_reserved() / 2**30
        if self.peak and self.fpt:
            out["mfu"] = out["tokens_per_s_per_device"] * self.fpt / self.peak
        return out

    def recent_tokens_per_s(self) -> float | None:
        """Real tokens per second over the last few optimizer steps (all processes), for the progress bar."""
        seconds = sum(dt for dt, _ in self.recent)
        return sum(tokens for _, tokens in self.recent) / seconds if seconds > 0 else None

    def pop_window(self) -> dict:
        rates, self.window = self._rates(*self.window), [0.0, 0, 0]
        return rates

    def summary(self) -> dict:
        """Whole-run rates over every optimizer step but the first (warm-up), and the first step's time."""
        return {**self._rates(*self.total), **({"first_step_s": self.first_step_s} if self.first_step_s else {})}


class QuietProgress(ProgressCallback):
    """The Trainer's progress bar without the raw Python dict it prints between the bars at every log line (and
    every evaluation): those numbers are in trainer_state.json, SwanLab, the registry and the run summary, and the
    loss is on the bar itself (ProgressRate). --debug keeps transformers' own callbacks."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


class ProgressRate(TrainerCallback):
    """The latest loss, eval loss and tokens/s on the Trainer's own progress bar (transformers' ProgressCallback
    tqdm), beside its ETA: the figures a person watches, where the log lines every `logging_steps` used to be."""

    def __init__(self, meter: ThroughputMeter, handler):
        self.meter, self.handler = meter, handler
        self.last: dict[str, float] = {}

    def on_log(self, args, state, control, logs=None, **kw):
        self.last.update({k: v for k, v in (logs or {}).items() if k in ("loss", "eval_loss") and v is not None})

    def on_step_end(self, args, state, control, **kw):
        progress = next((cb for cb in self.handler.callbacks if isinstance(cb, ProgressCallback)), None)
        bar, rate = getattr(progress, "training_bar", None), self.meter.recent_tokens_per_s()
        parts = [f"{label} {self.last[k]:.3f}" for k, label in (("loss", "loss"), ("eval_loss", "eval loss"))
                 if k in self.last] + ([f"{rate:,.0f} tok/s"] if rate else [])
        if bar is not None and parts:
            bar.set_postfix_str(", ".join(parts), refresh=False)  # shown by the bar's own update


class AdaptiveClipper:
    """Seed v3's dynamic clipping: threshold = `percentile` of the last `window` finite pre-clip norms, after
    `min_history` of them have been seen (the static max_grad_norm applies before that). The norms, the threshold
    and the scaling stay on the device (numpy's linear percentile and torch's clip_grad_norm_ coefficient,
    reproduced op for op): a step never waits for the GPU to learn its norm. `threshold()` (log lines) reads it."""

    def __init__(self, static: float, percentile: float, window: int, min_history: int):
        self.static, self.q, self.window, self.min_history = static, percentile / 100, window, min_history
        self._norms = None  # float64 ring of the last `window` finite norms, +inf in slots not yet filled
        self._seen = None   # finite norms seen so far (int64)

    def _threshold(self, device) -> torch.Tensor:
        static = torch.full((), self.static, dtype=torch.float64, device=device)  # a fill: no copy from the host
        if self._norms is None:
            return static
        n = torch.clamp(self._seen, max=self.window)
        ordered = torch.sort(self._norms).values  # the n norms first, ascending
        at = (n - 1).to(torch.float64) * self.q  # numpy's virtual index (method "linear")
        lo = torch.clamp(torch.minimum(torch.floor(at), (n - 1).to(torch.float64)), min=0).long()
        a, b = ordered.index_select(0, torch.stack([lo, torch.minimum(lo + 1, torch.clamp(n - 1, min=0))]))
        g, diff = at - torch.floor(at), b - a  # numpy's _lerp: from the nearer end
        value = torch.where(g >= 0.5, b - diff * (1 - g), a + diff * g)
        return torch.where(n < self.min_history, static, value)

    def threshold(self) -> float:
        return float(self._threshold(None if self._norms is None else self._norms.device).item())

    def observe(self, norm) -> None:
        norm = torch.as_tensor(norm, dtype=torch.float64)  # the device's norm, or a float
        if self._norms is None:
            self._norms = torch.full((self.window,), float("inf"), dtype=torch.float64, device=norm.device)
            self._seen = torch.zeros((), dtype=torch.int64, device=norm.device)
        slot = torch.arange(self.window, device=norm.device) == self._seen % self.window
        ok = torch.isfinite(norm)
        self._norms = torch.where(slot & ok, norm, self._norms)
        self._seen = self._seen + ok.long()

    def clip(self, parameters, norm: torch.Tensor) -> None:
        """Scale the gradients at the current threshold as clip_grad_norm_ would (its float32 coefficient,
        max_norm / (norm + 1e-6) at most 1, computed the same way), then remember `norm`."""
        coef = (norm + 1e-6).reciprocal() * self._threshold(norm.device).to(norm.dtype)
        grads = [p.grad for p in parameters if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, torch.clamp(coef, max=1.0))
        self.observe(norm)


class ProgressToCollator(TrainerCallback):
    """Tells the collator the current step, for progressive, step-deterministic augmentation."""

    def __init__(self, collator):
        self.collator = collator

    def on_step_begin(self, args, state, control, **kw):
        self.collator.set_progress(state.global_step, state.max_steps)


def _metrics_at(history: list[dict], step: int) -> dict:
    """Latest train loss / learning rate at or before `step`, and what was evaluated at `step` (eval loss,
    benchmark accuracies, the control set): the metrics a checkpoint is kept or ranked by."""
    out = {}
    for h in history:
        if h.get("step", 0) > step:
            break
        for k in ("loss", "learning_rate", "grad_norm", "epoch"):
            if k in h:
                out[k] = h[k]
        if h["step"] == step:
            out.update({k: v for k, v in h.items() if k == "eval_loss" or k.startswith(("bench/", "control/"))})
    return out


NONFINITE = 3  # above every stop code: a diverged step fails the attempt on every rank, whatever else was asked


class StepHealth:
    """The first optimizer step whose loss or gradient norm was not finite, kept on the device: reading it is a
    host-device sync (the host waits for the GPU to finish the step), so the run reads it only where it must,
    before anything is saved, logged or evaluated (AttemptCallback.on_step_end)."""

    def __init__(self):
        self._finite = None          # this step's flag, on the device
        self._first_bad = None       # device: the first bad step, 0 for none
        self._host_bad: int | None = None  # a value that reached the host already (DeepSpeed's float grad norm)
        self._host_ok = True

    def observe(self, value) -> None:
        if not torch.is_tensor(value):
            self._host_ok = self._host_ok and bool(np.isfinite(value))
            return
        ok = torch.isfinite(value.detach()).all()
        self._finite = ok if self._finite is None else self._finite & ok

    def end_step(self, step: int) -> None:
        """Fold the step's flag into the first bad step, on the device: no sync."""
        if not self._host_ok and self._host_bad is None:
            self._host_bad = step
        self._host_ok = True
        if self._finite is not None:
            bad = torch.where(self._finite, 0, step)
            self._first_bad = bad if self._first_bad is None else torch.where(self._first_bad > 0, self._first_bad, bad)
            self._finite = None

    def code(self, bad: int):
        """`bad` if a step was not finite, else 0: an int, or a device tensor when the answer is still there."""
        if self._host_bad is not None or self._first_bad is None:
            return bad if self._host_bad is not None else 0
        return (self._first_bad > 0).to(torch.int32) * bad

    def first_bad_step(self) -> int | None:
        """The first bad step (a sync: read once the run fails)."""
        found = [s for s in (self._host_bad, None if self._first_bad is None else int(self._first_bad.item())) if s]
        return min(found) if found else None


class AttemptCallback(TrainerCallback):
    """Stops every rank together on a stop request, fails every rank together on a non-finite loss or gradient
    norm (before the step can be saved), turns each Trainer save into a verified checkpoint, and records every log
    line in the registry (rank 0)."""

    def __init__(self, attempt: Attempt, flag: stop.StopFlag, health: StepHealth, keep_last: int | None,
                 keep_best: bool | str):
        self.attempt, self.flag, self.health, self.keep_last, self.keep_best = attempt, flag, health, keep_last, keep_best
        self.stopped = stop.NONE

    def on_step_end(self, args, state, control, **kw):
        """One process reads the finiteness (a host-device sync) only before a step's save, log line, evaluation or
        the run's end, or a stop: a diverged step still saves nothing. Several agree every step, in one all-reduce
        that carries the finiteness too (one sync, not two)."""
        self.attempt.step = state.global_step
        self.health.end_step(state.global_step)
        if (is_distributed() or self.flag.code or control.should_save or control.should_log
                or control.should_evaluate or control.should_training_stop or state.global_step >= state.max_steps):
            self._agree(state, control, args.device)

    def on_epoch_end(self, args, state, control, **kw):
        self._agree(state, control, args.device)  # before what the epoch's end saves, logs or evaluates

    def _agree(self, state, control, device) -> None:
        local = self.health.code(NONFINITE)
        code = agree_max(torch.clamp(local, min=self.flag.code) if torch.is_tensor(local) else
                         max(self.flag.code, local), device)
        if code == NONFINITE:
            from medscale.jobs.resume import nan_advice

            step = self.health.first_bad_step() or state.global_step  # another rank's step: this one
            raise RunFailed(f"the loss or gradient norm became NaN/inf at step {step}: the weights are "
                            f"no longer usable, so nothing was saved from them; "
                            f"{nan_advice(self.attempt.out, self.attempt.resumed_from)}")
        if code and not self.stopped:
            self.stopped = code
            control.should_save = control.should_training_stop = True
            if state.is_world_process_zero:
                log.warning("%s: saving a checkpoint at step %d and stopping",
                            self.flag.reason or stop.stop_status(code), state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if state.is_world_process_zero and logs:
            self.attempt.metrics_logged(state.global_step, logs)

    def on_save(self, args, state, control, **kw):
        barrier()  # every rank has written its part (RNG states, DeepSpeed shards)
        if not state.is_world_process_zero:
            return
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        recipe = self.attempt.recipe
        write_text_atomic(ckpt / RECIPE_FILE, recipe.to_yaml(), mode=PRIVATE)
        number = self.attempt.info.number if self.attempt.info else 0
        manifest = write_manifest(ckpt, state.global_step, {
            "job": recipe.name, "attempt": number, "fingerprint": recipe.fingerprint(),
            "created": utcnow().isoformat(), "metrics": _metrics_at(state.log_history, state.global_step)})
        self.attempt.checkpoint_saved(ckpt, manifest)
        doomed = retention_plan(args.output_dir, self.keep_last, self.keep_best)
        for path in doomed:
            delete_checkpoint(path)
        self.attempt.checkpoints_deleted(doomed)

    def raise_if_stopped(self) -> None:
        """After `trainer.train()` returns: a stop request ended it, with a verified checkpoint saved."""
        if self.stopped:
            raise AttemptStopped(stop.stop_status(self.stopped), self.attempt.step, saved=True,
                                 resume_from=self.attempt.out / f"checkpoint-{self.attempt.step}")


@contextmanager
def disk_full_named(folder):
    """A save that fails because the disk is full raises OSError(ENOSPC) naming the folder: torch.save and
    safetensors report it as a RuntimeError or SafetensorError, which would end in a traceback instead of one line
    and an attempt recorded with a clear reason."""
    try:
        yield
    except Exception as e:
        full = as_disk_full(e, folder)
        if full is None or full is e:
            raise
        raise full from e


class MedscaleTrainer(Trainer):
    """HF Trainer + throughput metrics in every log line + optional adaptive clipping + the finiteness check.

    Overrides small hooks rather than the loop: `log` (documented as the place to inject metrics),
    `training_step` (each micro-batch's loss) and `_clip_grad_norm` (the one place the clip threshold is read,
    in transformers 5.x).
    """

    def __init__(self, *a, meter: ThroughputMeter, health: StepHealth, clipper: AdaptiveClipper | None = None, **kw):
        super().__init__(*a, **kw)
        self.meter, self.health, self.clipper = meter, health, clipper
        if not debugging():
            if self.pop_callback(ProgressCallback) is not None:
                self.add_callback(QuietProgress)
            self.pop_callback(PrinterCallback)  # the bar's stand-in with disable_tqdm: the same dicts, printed
        self.add_callback(ProgressRate(meter, self.callback_handler))

    def log(self, logs: dict, *args, **kwargs) -> None:
        if "loss" in logs:
            logs.update({k: round(v, 4) for k, v in self.meter.pop_window().items()})
            if self.clipper is not None:
                logs["clip_threshold"] = round(self.clipper.threshold(), 4)
        super().log(logs, *args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        self.health.observe(loss)
        return loss

    def _track_num_input_tokens(self, inputs):
        """A padding-free or packed row (no attention mask) holds no padding: its tokens are its length, counted on
        the host. The Trainer's own count (non-padding ids, gathered) reads a device tensor each micro-batch: a
        host-device sync, kept where it is needed (padded batches, several processes)."""
        if self.args.world_size == 1 and "attention_mask" not in inputs:
            self.state.num_input_tokens_seen += inputs["input_ids"].numel()
        else:
            super()._track_num_input_tokens(inputs)

    def _save_checkpoint(self, model, trial):
        with disk_full_named(self.args.output_dir):
            super()._save_checkpoint(model, trial)

    def _clip_grad_norm(self, model):
        if self.clipper is None:
            norm = super()._clip_grad_norm(model)
        else:  # measured only: the Trainer's clipping takes a float threshold, which the host would wait for
            norm = self.accelerator.clip_grad_norm_(model.parameters(), float("inf"))
            self.clipper.clip(model.parameters(), norm)
        if norm is not None:
            self.health.observe(norm)
        return norm
