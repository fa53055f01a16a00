"""The Recipe: every section together, and the checks that span sections (one small validator per domain)."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from medscale.dist import DistContext
from medscale.recipe.base import Section, is_saved
from medscale.recipe.fingerprint import recipe_fingerprint, recipe_yaml
from medscale.recipe.sections.adapter import AdapterSection
from medscale.recipe.sections.data import DataSection
from medscale.recipe.sections.dist import DistSection
from medscale.recipe.sections.eval import EvalSection
from medscale.recipe.sections.generation import GenerationSection
from medscale.recipe.sections.model import ModelSection
from medscale.recipe.sections.track import TrackSection
from medscale.recipe.sections.train import TrainSection


class Recipe(Section):
    _output_dir_as_written: str | None = PrivateAttr(None)
    name: str = Field(description="job name; with train.output_dir it identifies a job")
    description: str = Field("", description="one line shown by `medscale recipes`")
    model: ModelSection = Field(description="the base model: folder, dtype, 4-bit quantization, attention")
    data: DataSection = Field(description="training data: files, formats, length limits, how samples are batched")
    adapter: AdapterSection = Field(default_factory=AdapterSection, description="the LoRA adapter that is trained")
    train: TrainSection = Field(description="the optimization (HF TrainingArguments names), checkpoints, resume")
    dist: DistSection = Field(default_factory=DistSection, description="processes, machines, DeepSpeed")
    track: TrackSection = Field(default_factory=TrackSection, description="experiment tracking")
    eval: EvalSection = Field(default_factory=EvalSection, description="held-out loss, benchmarks and the forgetting "
                                                                       "guard, during training and at its end")
    generation: GenerationSection = Field(default_factory=GenerationSection, description="how answers are generated: "
                                          "compare, chat, generate-mode eval, export")

    @field_validator("name")
    @classmethod
    def _name_is_a_plain_word(cls, v: str) -> str:
        """The name becomes a SLURM job name, a folder and a registry key: letters, digits, . _ + - only (a newline
        in it once ended an #SBATCH line and ran the rest as a command)."""
        if not re.fullmatch(r"\w[\w.+-]{0,199}", v):
            raise ValueError(f"name {v!r}: use letters, digits and . _ + - only (no blanks, slashes or control "
                             f"characters), at most 200 characters")
        return v

    # Cross-field checks, one small validator per domain, each naming the key and the fix.
    @model_validator(mode="after")
    def _batch_divides(self) -> "Recipe":
        t, procs = self.train, DistContext.planned(self.dist).world_size
        if t.effective_batch_size is not None:
            got = t.per_device_train_batch_size * t.gradient_accumulation_steps * procs
            if got != t.effective_batch_size:
                per_step = t.per_device_train_batch_size * procs
                fix = (f"set train.gradient_accumulation_steps={t.effective_batch_size // per_step}"
                       if t.effective_batch_size % per_step == 0 else
                       f"pick a per-device batch x processes ({per_step}) that divides it")
                raise ValueError(
                    f"train.effective_batch_size={t.effective_batch_size} but per_device_train_batch_size "
                    f"{t.per_device_train_batch_size} x gradient_accumulation_steps {t.gradient_accumulation_steps} "
                    f"x processes {procs} = {got}: {fix}, or train.effective_batch_size={got}")
        return self

    @model_validator(mode="after")
    def _eval_has_data(self) -> "Recipe":
        if self.eval.eval_strategy != "no" and not (self.data.eval_size or self.data.eval_sources):
            raise ValueError("eval.eval_strategy needs held-out data: set data.eval_size or data.eval_sources")
        if self.eval.eval_strategy == "steps" and self.eval.eval_steps is None:
            raise ValueError("eval.eval_strategy=steps needs eval.eval_steps")
        return self

    @model_validator(mode="after")
    def _packing_fits(self) -> "Recipe":
        d = self.data
        if d.batching == "packed" and d.term_masking is not None:
            raise ValueError("data.batching=packed with data.term_masking: masking changes sample lengths after "
                             "packing; use data.batching=padding_free (masks each sample, then concatenates) or "
                             "remove data.term_masking")
        if d.pack_tokens is not None and d.batching != "packed":
            raise ValueError(f"data.pack_tokens={d.pack_tokens} applies only to data.batching=packed (it is "
                             f"{d.batching}): set data.batching=packed or remove data.pack_tokens")
        if d.pack_tokens is not None and d.pack_tokens < d.max_length:
            raise ValueError(f"data.pack_tokens={d.pack_tokens} is below data.max_length={d.max_length}: "
                             f"a full-length sample would not fit; raise data.pack_tokens")
        return self

    def pack_budget(self) -> int | None:
        """Tokens per packed row without a memory plan (data.pack_tokens, else max_length x per-device
        batch), or None when the recipe does not pack. `medscale.plan.decide` sizes it to the GPU."""
        if self.data.batching != "packed":
            return None
        return self.data.pack_tokens or self.data.max_length * self.train.per_device_train_batch_size

    @model_validator(mode="after")
    def _adapter_fits_quantization(self) -> "Recipe":
        if self.model.load_in_4bit and self.adapter.use_dora and self.dist.num_processes > 1:
            raise ValueError("adapter.use_dora with model.load_in_4bit is single-process only in peft: "
                             "set dist.num_processes=1 or adapter.use_dora=false")
        if self.model.fp32_frozen_weights and not self.model.load_in_4bit:
            raise ValueError(f"model.fp32_frozen_weights applies to QLoRA only (model.load_in_4bit=true); a "
                             f"{self.model.dtype} LoRA keeps its frozen weights in model.dtype: remove it, or set "
                             f"model.dtype=float32 to train in fp32")
        return self

    @model_validator(mode="after")
    def _deepspeed_fits(self, info: ValidationInfo) -> "Recipe":
        if not self.dist.deepspeed or is_saved(info):  # a saved recipe's DeepSpeed file was read where its job ran
            return self
        m, stage, offloads = self.model, self.dist.zero_stage(), self.dist.offloads()
        name = Path(self.dist.deepspeed).stem
        if m.load_in_4bit and offloads:
            raise ValueError(f"model.load_in_4bit with dist.deepspeed={name} (offloads {' and '.join(offloads)} to "
                             f"CPU): bitsandbytes 4-bit weights cannot be offloaded; use dist.deepspeed=zero3 "
                             f"(or zero2), or model.load_in_4bit=false")
        if m.load_in_4bit and stage == 3 and m.bnb_4bit_quant_storage != m.bnb_4bit_compute_dtype:
            raise ValueError(f"model.load_in_4bit with ZeRO-3 (dist.deepspeed={name}) shards the quantized weights "
                             f"only when they are stored in the compute dtype: set "
                             f"model.bnb_4bit_quant_storage={m.bnb_4bit_compute_dtype} (it is "
                             f"{m.bnb_4bit_quant_storage}), or use dist.deepspeed=zero2")
        if m.fp32_frozen_weights and stage == 3:
            raise ValueError(f"model.fp32_frozen_weights with ZeRO-3 (dist.deepspeed={name}): peft's k-bit upcast "
                             f"replaces the sharded weights' storage, and ZeRO-3 then gathers empty tensors; set "
                             f"model.fp32_frozen_weights=false, or use dist.deepspeed=zero2")
        if self.train.adaptive_clip is not None:
            raise ValueError(f"train.adaptive_clip with dist.deepspeed={name}: DeepSpeed clips inside its engine at "
                             f"the fixed train.max_grad_norm, so the adaptive threshold would be ignored; remove "
                             f"train.adaptive_clip or dist.deepspeed")
        optim = self.train.optim.lower()
        if stage == 3 and ("8bit" in optim or "4bit" in optim or optim.startswith("paged_")):
            raise ValueError(f"train.optim={self.train.optim} (an 8-bit/4-bit or paged optimizer) is not supported "
                             f"with ZeRO-3 (dist.deepspeed={name}): ZeRO-3 already shards the optimizer state and "
                             f"hands the optimizer flattened fp32 shards, where its per-parameter settings do not "
                             f"apply; set train.optim=adamw_torch")
        return self

    @property
    def output_dir_as_written(self) -> str:
        """train.output_dir as the recipe or an override wrote it (load_recipe stores it absolute): a Ray job must
        refuse a relative one, which resolves inside the job's temporary copy of the working dir."""
        return self._output_dir_as_written or self.train.output_dir

    def fingerprint(self) -> str:
        return recipe_fingerprint(self)

    def to_yaml(self) -> str:
        return recipe_yaml(self)
