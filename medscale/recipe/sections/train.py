"""The optimization (HF TrainingArguments names), gradient clipping, checkpoints and resume."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Literal

from pydantic import Field, model_validator

from medscale.recipe.base import Section


class AdaptiveClip(Section):
    """Clip at a running percentile of recent pre-clip gradient norms (seed v3 "dynamic clipping").

    Until `min_history` norms are seen the static `train.max_grad_norm` applies; after
    that the threshold is the `percentile` of the last `window` norms, so only spikes
    above the recent typical norm are cut, whatever the norm's scale.
    """

    percentile: float = Field(90, gt=0, le=100, description="clip at this percentile of recent gradient norms")
    window: int = Field(100, ge=2, description="how many recent norms the percentile is taken over")
    min_history: int = Field(10, ge=1, description="norms seen before the adaptive threshold replaces max_grad_norm")


# TrainingArguments fields medscale sets itself: the recipe key that sets each, or None where medscale decides it
# (the why follows the name). train.trainer_args may not name them: two places for one setting drift apart.
OWNED_TRAINER_ARGS: dict[str, str | None] = {
    "output_dir": "train.output_dir", "num_train_epochs": "train.num_train_epochs", "max_steps": "train.max_steps",
    "per_device_train_batch_size": "train.per_device_train_batch_size",
    "per_device_eval_batch_size": "eval.per_device_eval_batch_size",
    "gradient_accumulation_steps": "train.gradient_accumulation_steps", "learning_rate": "train.learning_rate",
    "lr_scheduler_type": "train.lr_scheduler_type", "warmup_steps": "train.warmup_steps",
    "warmup_ratio": "train.warmup_ratio", "weight_decay": "train.weight_decay", "optim": "train.optim",
    "max_grad_norm": "train.max_grad_norm", "bf16": "train.bf16", "fp16": "model.dtype", "deepspeed": "dist.deepspeed",
    "gradient_checkpointing": "train.gradient_checkpointing", "gradient_checkpointing_kwargs":
    "train.gradient_checkpointing", "activation_checkpointing": "train.gradient_checkpointing",
    "activation_checkpointing_kwargs": "train.gradient_checkpointing", "use_liger_kernel": "train.use_liger_kernel",
    "liger_kernel_config": "train.use_liger_kernel", "torch_compile": "train.compile",
    "torch_compile_mode": "train.compile",
    "logging_steps": "train.logging_steps", "save_steps": "train.save_steps", "save_total_limit":
    "train.save_total_limit", "seed": "train.seed", "data_seed": "train.seed", "eval_strategy": "eval.eval_strategy",
    "eval_steps": "eval.eval_steps", "eval_on_start": "eval.eval_on_start", "report_to": "track.report_to",
    "run_name": "track.run_name", "dataloader_num_workers": "train.dataloader_num_workers",
    "dataloader_pin_memory": "train.dataloader_pin_memory", "dataloader_persistent_workers": None,
    "resume_from_checkpoint": "train.resume", "use_cpu": None, "save_strategy": None, "logging_first_step": None,
    "logging_nan_inf_filter": None, "include_num_input_tokens_seen": None, "remove_unused_columns": None,
    "label_names": None, "ddp_find_unused_parameters": None, "accelerator_config": None}


class TrainSection(Section):
    output_dir: str = Field(min_length=1, description="where checkpoints, the adapter and the job record go; with "
                                                      "`name` it identifies the job (a rerun resumes it); a relative "
                                                      "path is made absolute against the working dir")
    num_train_epochs: float = Field(3, gt=0, description="passes over the training data (unless max_steps > 0)")
    max_steps: int = Field(-1, description="> 0 overrides num_train_epochs")
    per_device_train_batch_size: int = Field(4, ge=1, description="samples per micro-batch per GPU: more is faster "
                                                                  "until memory runs out")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step: a larger batch "
                                                                  "without more memory, fewer steps")
    merge_accumulation: Literal["auto", "off"] = Field(
        "auto", description="auto: where the memory plan fits them, accumulated micro-batches are merged into fewer, "
                            "larger ones (e.g. 4 x 2 -> 8 x 1): the same samples per step, the same per-token loss, "
                            "fewer launches; off: train the recipe's micro-batch x accumulation as written. Packed "
                            "rows keep their own budget")
    effective_batch_size: int | None = Field(
        None, ge=1, description="if set, must equal per-device batch x accumulation x processes (checked)")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate: LoRA usually 1e-4..2e-4; lower "
                                                          "(5e-6) changes a good model less")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts",
                               "polynomial"] = Field("linear", description="how the rate falls after warm-up")
    warmup_ratio: float = Field(0, ge=0, lt=1, description="warm-up as a fraction of total steps")
    warmup_steps: int = Field(0, ge=0, description="warm-up in steps (exclusive with warmup_ratio)")
    weight_decay: float = Field(0.0, description="AdamW weight decay; LoRA rarely needs it")
    optim: str = Field("adamw_torch", description="any HF optimizer name: adamw_torch, paged_adamw_8bit, adamw_bnb_8bit, ...")
    max_grad_norm: float = Field(1.0, ge=0, description="clip the gradient norm to this (0: no clipping); lower is "
                                                         "steadier, slower to learn")
    adaptive_clip: AdaptiveClip | None = Field(None, description="seed v3: clip at a percentile of recent norms "
                                                                 "instead (null: off)")
    bf16: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        False, description="recompute activations in the backward: true: every decoder layer (least memory, ~25% "
                           "slower); auto: only as many layers as the memory plan needs on this GPU (none on CPU)")
    use_liger_kernel: bool | Literal["fused_linear_cross_entropy"] = Field(
        False, description="Liger Triton kernels (fused linear cross-entropy: the full-vocabulary logits are never "
                           "materialised; also RMSNorm, SwiGLU, RoPE); fused_linear_cross_entropy: that one alone "
                           "(the only one that compiles with train.compile); needs CUDA and `pip install "
                           "medscale[gpu]`; ignored on CPU")
    compile: Literal["off", "default", "reduce-overhead", "max-autotune-no-cudagraphs"] = Field(
        "off", description="torch.compile the model (inductor; the mode: reduce-overhead adds CUDA graphs); padding-"
                           "free and packed rows are then padded to a few lengths so graphs are reused. Off until "
                           "bench/speed.py's compile variants measure that it pays")
    logging_steps: int = Field(10, ge=1, description="steps between log lines (loss, learning rate, tokens/s)")
    save_steps: int = Field(500, ge=1, description="steps between verified checkpoints: at most this much work is "
                                                   "lost to a crash; each save costs time and disk")
    save_total_limit: int | None = Field(
        None, ge=1, description="keep the newest N verified checkpoints (plus the best by eval loss, and always the "
                                "newest verified one); null keeps all")
    keep_best_checkpoint: bool | str = Field(
        True, description="retention also keeps the best checkpoint: true = lowest eval loss; or a metric logged at "
                          "eval steps, e.g. bench/cmmlu-med/acc (higher is better for accuracies) or control/loss; "
                          "false: newest only")
    resume: str = Field(
        "auto", description="auto: continue from the newest verified checkpoint of this job (output_dir), if any; "
                            "never: refuse to start over existing checkpoints; or a checkpoint folder path")
    seed: int = Field(42, description="seeds data order, the adapter's init and the eval split")
    dataloader_num_workers: int = Field(0, ge=0, description="processes preparing batches (kept across epochs); >0 "
                                                             "helps when collation (term masking) is slow; 0: the "
                                                             "main process, which runs ahead of the GPU anyway")
    dataloader_pin_memory: bool = Field(True, description="batches in page-locked memory, copied to the GPU without "
                                                          "the host waiting for it (non-blocking); off on CPU")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, description="any other Hugging Face TrainingArguments field, passed as given (e.g. "
                                          "{ddp_timeout: 7200, neftune_noise_alpha: 5, torch_compile_backend: "
                                          "aot_eager}); checked "
                                          "against the installed transformers; fields a recipe key sets are refused")

    def trainer_args_problems(self, arguments_class) -> list[str]:
        """Why each train.trainer_args key cannot be passed to `arguments_class` (the installed transformers'
        TrainingArguments): not one of its fields (the closest named), or one medscale sets itself."""
        fields, problems = set(inspect.signature(arguments_class).parameters), []
        for key in self.trainer_args:
            if key in OWNED_TRAINER_ARGS:
                owner = OWNED_TRAINER_ARGS[key]
                problems.append(f"train.trainer_args.{key}: " + (f"set {owner} instead" if owner else
                                "medscale sets this TrainingArguments field itself; remove it"))
            elif key not in fields:
                close = difflib.get_close_matches(key, sorted(fields - OWNED_TRAINER_ARGS.keys()), n=1)
                problems.append(f"train.trainer_args.{key}: not a TrainingArguments field of the installed "
                                f"transformers" + (f"; did you mean '{close[0]}'?" if close else ""))
        return problems

    @model_validator(mode="after")
    def _one_warmup(self) -> "TrainSection":
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set train.warmup_ratio or train.warmup_steps, not both")
        return self
