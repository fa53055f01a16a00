"""The Recipe: one validated, typed description of a fine-tuning run.

A recipe is YAML (a built-in name or a path) plus `a.b.c=value` overrides. It is
validated once, here, into the `Recipe` object that `medscale.train.run` receives;
nothing downstream re-reads dicts, so a typo can never silently become a default.
Keys follow the HF names (TrainingArguments, LoraConfig, BitsAndBytesConfig) so
users' habits carry over.
"""
from __future__ import annotations

from medscale.errors import UserError

import difflib
import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
                      model_validator)

from medscale import medscale_home, settings
from medscale.data.formats import format_names
from medscale.paths import shipped


class RecipeError(UserError):
    """A recipe that cannot run, with a message that names the file, key and fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- sections


class TinySpec(Section):
    """Shape of the tiny random Qwen3 built when `model.path` does not exist (demo, tests)."""

    layers: int = Field(2, ge=1, description="decoder layers")
    hidden: int = Field(64, ge=16, description="hidden size")
    tokenizer: str | None = Field(None, description="copy this tokenizer folder; default: train a small BPE on the demo data")


class ModelSection(Section):
    path: str = Field(description="local folder with config.json, weights and tokenizer")
    hub_id: str | None = Field(None, description="the hub name of the weights, used only to say what to download into `path`")
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="compute/storage dtype of the base weights")
    load_in_4bit: bool = Field(False, description="QLoRA: quantize the base weights to 4 bit with bitsandbytes (CUDA only)")
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type: nf4 (normal float, QLoRA's choice for normally distributed weights) or fp4")
    bnb_4bit_use_double_quant: bool = Field(True, description="quantize the quantization constants too (~0.4 bit/param saved)")
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype 4-bit weights are dequantized to for each matmul; float16 on GPUs without bf16")
    bnb_4bit_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="dtype the packed 4-bit weights are stored in; ZeRO-3 (and FSDP) shard them only "
                             "when it equals bnb_4bit_compute_dtype")
    fp32_frozen_weights: bool = Field(
        False, description="QLoRA only: upcast the frozen embeddings, norms and lm_head to fp32 as peft's "
                           "prepare_model_for_kbit_training does (the seed scripts' numerics). The residual stream "
                           "then runs in fp32: more memory, and about 40% of a step goes to casts")
    attn_implementation: str = Field(
        "sdpa", description="varlen (torch's variable-length flash kernel on GPU: padding-free and packed rows "
                            "without a dense mask; sdpa elsewhere) | sdpa | eager | flash_attention_2 | "
                            "flex_attention | kernels-community/...")
    trust_remote_code: bool = Field(False, description="run Python shipped with the weights; off unless you trust the folder")
    tiny: TinySpec | None = Field(None, description="build a tiny random Qwen3 at `path` if it is missing: by itself "
                                                    "only under $MEDSCALE_HOME/models, elsewhere with `medscale "
                                                    "tiny-model PATH`; never over a folder of yours")


# Generated from the format registry: a new format module is a new choice here.
Format = Literal[("auto", *format_names())]


class DataSource(Section):
    path: str = Field(description="file (.jsonl/.json/.parquet/.csv), folder or glob")
    format: Format = Field("auto", description="record layout; auto-detected per file when `auto`")
    skip: int = Field(0, ge=0, description="leave out the first N records of this source (e.g. the ones another "
                                           "source trains on: validate on records after the training ones)")
    limit: int | None = Field(None, ge=1, description="use only the first N records of this source (after skip)")
    sample: int | None = Field(None, ge=1, description="a random N of the records left after skip and limit "
                                                       "(seeded by train.seed; file order kept)")
    weight: float = Field(1.0, gt=0, description="mixing weight: 2 = every record twice, 0.5 = a seeded random half")


class TermMasking(Section):
    """Seed v3: hide medical terms in the prompt so the model must reason from context."""

    p: float = Field(0.15, ge=0.0, le=1.0, description="probability of masking each term occurrence (final value if progressive)")
    progressive: bool = Field(True, description="ramp p linearly from 0 to `p` over training")
    mask_token: str = Field("[MASK]", description="text that replaces a masked term")
    lexicon: str | None = Field(None, description="one term a line; default: medscale's built-in Chinese clinical lexicon")


class DataSection(Section):
    sources: list[DataSource] = Field(min_length=1, description="training files, each with its own format, limit "
                                                               "and weight; at least one")
    eval_sources: list[DataSource] = Field(default_factory=list, description="held-out files; if empty, `eval_size` is split off")
    eval_size: float = Field(0, ge=0, description="validation records: a count (>= 1) or a fraction (< 1); 0 = none")
    max_length: int = Field(2048, ge=16, description="tokens per sample after chat templating")
    truncation: Literal["drop", "truncate_prompt_left", "truncate_response"] = Field(
        "drop", description="samples over max_length: drop them, cut the prompt from the left, or cut the response end")
    no_reasoning: Literal["empty_think", "drop"] = Field(
        "empty_think", description="records without reasoning: render Qwen3's empty <think></think> (not trained), "
                                   "or drop them (think-only training)")
    on_bad_record: Literal["error", "skip"] = Field("error", description="a malformed record stops the run, or is skipped and counted")
    max_bad_fraction: float = Field(0.01, ge=0, le=1, description="with on_bad_record=skip: fail above this fraction")
    prompt_field: Literal["question", "instruction"] = Field("question", description="r1-think: which field is the prompt")
    system_prompt: str | None = Field(None, description="system turn added to records that have none; it counts "
                                                         "toward max_length but carries no loss")
    train_on: Literal["all_assistant", "last_assistant"] = Field("all_assistant", description="which assistant turns carry loss")
    term_masking: TermMasking | None = Field(None, description="seed v3: hide medical terms in prompts (null: off)")
    batching: Literal["padded", "padding_free", "packed"] = Field(
        "padded", description="padded: each micro-batch padded to its longest sample (the seed scripts); "
                              "padding_free: the same samples per micro-batch and per optimizer step, concatenated "
                              "into one row without padding (position_ids restart per sample); packed: samples "
                              "packed best-fit into rows of a token budget (more samples per step, fewest steps)")
    pack_tokens: int | None = Field(None, ge=16, description="batching=packed: tokens per row; default: the memory "
                                                             "plan's budget on a GPU (`medscale plan`), else "
                                                             "max_length x per-device batch")
    num_proc: int = Field(1, ge=1, description="processes for tokenization (datasets.map)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_packing(cls, data: Any) -> Any:
        """`data.packing: true|false` (before data.batching existed) still reads as batching packed|padded."""
        if not isinstance(data, dict) or "packing" not in data:
            return data
        data = dict(data)
        packing = data.pop("packing")
        if not isinstance(packing, bool):
            raise ValueError(f"data.packing: expected true or false, got {packing!r}; it is replaced by "
                             f"data.batching=padded|padding_free|packed")
        want = "packed" if packing else "padded"
        if data.get("batching", want) != want:
            raise ValueError(f"data.packing={str(packing).lower()} contradicts data.batching={data['batching']}: "
                             f"remove data.packing (replaced by data.batching)")
        data["batching"] = want
        return data


class AdapterSection(Section):
    type: Literal["lora"] = Field("lora", description="adapter kind (LoRA, with DoRA/rsLoRA as options below)")
    r: int = Field(16, ge=1, description="LoRA rank: higher learns more, costs memory and overfits small data sooner")
    lora_alpha: int = Field(32, ge=1, description="LoRA scale numerator: the update is scaled by lora_alpha / r")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="dropout on the LoRA input; 0 for tiny data or "
                                                                  "very short runs")
    target_modules: list[str] | Literal["all-linear"] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="layers that get LoRA: attention + FFN (the seeds), fewer for less memory, or all-linear")
    modules_to_save: list[str] | None = Field(None, description="fully trained and saved modules, e.g. [embed_tokens, lm_head]")
    use_dora: bool = Field(False, description="DoRA: learn magnitude and direction apart; often a bit better, slower")
    use_rslora: bool = Field(False, description="scale by alpha/sqrt(r) instead of alpha/r")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="which biases are trained and saved")


class AdaptiveClip(Section):
    """Clip at a running percentile of recent pre-clip gradient norms (seed v3 "dynamic clipping").

    Until `min_history` norms are seen the static `train.max_grad_norm` applies; after
    that the threshold is the `percentile` of the last `window` norms, so only spikes
    above the recent typical norm are cut, whatever the norm's scale.
    """

    percentile: float = Field(90, gt=0, le=100, description="clip at this percentile of recent gradient norms")
    window: int = Field(100, ge=2, description="how many recent norms the percentile is taken over")
    min_history: int = Field(10, ge=1, description="norms seen before the adaptive threshold replaces max_grad_norm")


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
    use_liger_kernel: bool = Field(
        False, description="Liger Triton kernels (fused linear cross-entropy: the full-vocabulary logits are never "
                           "materialised); needs CUDA and `pip install medscale[gpu]`; ignored on CPU")
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
    dataloader_num_workers: int = Field(0, ge=0, description="processes preparing batches; >0 helps when collation "
                                                             "(term masking) is slow")

    @model_validator(mode="after")
    def _one_warmup(self) -> "TrainSection":
        if self.warmup_ratio and self.warmup_steps:
            raise ValueError("set train.warmup_ratio or train.warmup_steps, not both")
        return self


class DistSection(Section):
    DS_CONFIG_DIR: ClassVar[Path] = shipped("ds_configs")

    num_processes: int = Field(1, ge=1, description="processes (GPUs) on this machine")
    num_machines: int = Field(1, ge=1, description="machines (SLURM nodes, Ray hosts) with num_processes each")
    config: str | None = Field(None, description="accelerate config: a name in cluster/accelerate/ or a path")
    deepspeed: str | None = Field(
        None, description="DeepSpeed ZeRO config: zero2 | zero3 | zero3_offload (in ds_configs/) or a path to a "
                          "JSON; stored as an absolute path. The HF Trainer's own optimizer is used (torch AdamW)")

    @field_validator("deepspeed")
    @classmethod
    def _resolve_deepspeed(cls, v: str | None) -> str | None:
        if v is None:
            return None
        builtins = sorted(p.stem for p in cls.DS_CONFIG_DIR.glob("*.json"))
        path = Path(os.path.expanduser(v))
        if path.suffix != ".json":
            if v not in builtins:
                close = difflib.get_close_matches(v, builtins, n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"dist.deepspeed: unknown DeepSpeed config '{v}'{hint} (built-in: "
                                 f"{', '.join(builtins)}; or a path to a .json file)")
            path = cls.DS_CONFIG_DIR / f"{v}.json"
        if not path.is_file():
            raise ValueError(f"dist.deepspeed: {path} does not exist (built-in: {', '.join(builtins)})")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"dist.deepspeed: {path} is not valid JSON: {e}") from None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("zero_optimization"), dict):
            raise ValueError(f"dist.deepspeed: {path} has no zero_optimization section")
        return str(path.resolve())

    def deepspeed_config(self) -> dict:
        """The DeepSpeed JSON as written ("auto" values unfilled); {} without DeepSpeed."""
        return json.loads(Path(self.deepspeed).read_text(encoding="utf-8")) if self.deepspeed else {}

    def zero_stage(self) -> int:
        """ZeRO stage of dist.deepspeed (0 without DeepSpeed)."""
        stage = self.deepspeed_config().get("zero_optimization", {}).get("stage", 0)
        return stage if isinstance(stage, int) else 0

    def offloads(self) -> list[str]:
        """What dist.deepspeed moves off the accelerator: 'optimizer' and/or 'param' (to cpu or nvme)."""
        zero = self.deepspeed_config().get("zero_optimization", {})
        return [what for what in ("optimizer", "param")
                if (zero.get(f"offload_{what}") or {}).get("device", "none") not in ("none", None)]


class SwanLab(Section):
    project: str = Field(description="SwanLab project the run is logged to")
    experiment: str | None = Field(None, description="experiment name (default: track.run_name or the recipe name)")
    workspace: str | None = Field(None, description="SwanLab workspace (default: your own)")
    mode: Literal["cloud", "local", "offline", "disabled"] = Field(
        "cloud", description="cloud falls back to offline when no API key is configured")


class TrackSection(Section):
    run_name: str | None = Field(None, description="name of the run in logs and trackers (default: the recipe name)")
    swanlab: SwanLab | None = Field(None, description="log to SwanLab (null: off)")


BENCHMARK_NAMES = ("cmmlu-med", "ceval-med", "medqa-zh", "cmexam", "medqa-en", "mmlu-med")  # medscale.eval.bench


class BenchmarkSource(Section):
    """A benchmark with what `medscale eval` takes as flags: the fields medscale cannot guess, and what becomes of
    malformed and repeated questions (read the same in pre-flight, at eval steps and at the end of a run)."""

    path: str = Field(description="a multiple-choice file (.jsonl/.json/.csv) or a folder of subject files")
    question_field: str | None = Field(None, description="field holding the question text")
    options_field: str | None = Field(
        None, description="field holding the options (a dict letter->text or a list), or the option fields "
                          "comma-separated in order, e.g. opa,opb,opc,opd")
    answer_field: str | None = Field(None, description="field holding the answer: letter(s), an option number (from "
                                                       "0; MedMCQA's cop from 1 where the file shows it), the "
                                                       "option's field name (opc) or its text")
    skip_bad: bool = Field(False, description="score the usable questions, each malformed one named in the result "
                                              "with its reason, instead of stopping at the first; more than "
                                              "max_bad of them still stops (like --skip-bad)")
    max_bad: float | None = Field(
        None, ge=0, le=1, description="the share of malformed questions skip_bad tolerates (null: 0.01); implies "
                                      "skip_bad (like --max-bad)")
    dedupe: bool = Field(False, description="score a repeated question (the same id, or the same text and options) "
                                            "once, the first, and say how many were dropped; false: a repeat in "
                                            "your file stops, naming both places (like --dedupe)")

    @model_validator(mode="before")
    @classmethod
    def _max_bad_implies_skip_bad(cls, data: Any) -> Any:
        """As on the command line: a tolerance for malformed questions means skipping them; `skip_bad: false`
        beside it contradicts it (written back as true, the resolved recipe reloads the same)."""
        if not isinstance(data, dict) or data.get("max_bad") is None:
            return data
        if data.get("skip_bad") is False:
            raise ValueError(f"eval.benchmarks: {data.get('path')}: max_bad tolerates malformed questions and "
                             f"skip_bad: false stops at the first: remove one of them")
        return {**data, "skip_bad": True}


class EvalSection(Section):
    eval_strategy: Literal["no", "steps", "epoch"] = Field(
        "no", description="when held-out loss is measured: never, every eval_steps, or each epoch")
    eval_steps: int | None = Field(None, ge=1, description="steps between evaluations (eval_strategy=steps)")
    eval_on_start: bool = Field(True, description="measure the base model first, so a fine-tune that hurts is visible")
    per_device_eval_batch_size: int = Field(4, ge=1, description="samples per evaluation batch per GPU")
    benchmarks: list[str | BenchmarkSource] = Field(
        default_factory=list, description=f"multiple-choice benchmarks scored at eval steps and at the end: built-in "
                                          f"names ({', '.join(BENCHMARK_NAMES)}) under eval.data_dir, or paths")
    benchmark_limit: int | None = Field(
        None, ge=1, description="score a fixed random subset of this many questions per benchmark at each eval step "
                                "(same questions every step, seeded by train.seed); null: all")
    benchmark_mode: Literal["letter", "option", "generate"] = Field(
        "letter", description="letter: log-likelihood of the answer letter (one forward per question); option: "
                              "length-normalised log-likelihood of each option's text; generate: think, then the "
                              "letter parsed after </think> (reasoning models; uses the generation section)")
    shots: int = Field(0, ge=0, le=10, description="worked examples before each question, from the dev split")
    data_dir: str | None = Field(
        None, description="where built-in benchmarks live; default $MEDSCALE_EVAL_DATA, else "
                          "${MEDSCALE_DATA:-~/data}/eval")
    control: str | None = Field(
        None, description="forgetting guard: general-domain SFT data (mean per-token loss) or a multiple-choice "
                          "benchmark (accuracy), measured before and after fine-tuning")
    max_control_regression: float = Field(
        0.05, ge=0, description="flag the run when the control set regresses by more than this: relative rise of "
                                "the loss (0.05 = 5%), or absolute drop of the accuracy (0.05 = 5 points)")
    fail_on_regression: bool = Field(False, description="a flagged control regression makes the job end failed")

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list) -> list:
        for b in v:
            if isinstance(b, str) and b not in BENCHMARK_NAMES and not _looks_like_path(b):
                close = difflib.get_close_matches(b, BENCHMARK_NAMES, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise ValueError(f"eval.benchmarks: unknown benchmark '{b}'; {hint}(built-in: "
                                 f"{', '.join(BENCHMARK_NAMES)}; or a file/folder path)")
        return v

    @model_validator(mode="after")
    def _regression_needs_control(self) -> "EvalSection":
        if self.fail_on_regression and not self.control:
            raise ValueError("eval.fail_on_regression needs a control set: set eval.control=PATH "
                             "(e.g. general-domain SFT data) or eval.fail_on_regression=false")
        return self


def _looks_like_path(s: str) -> bool:
    return "/" in s or "\\" in s or Path(s).suffix in (".jsonl", ".json", ".csv") or s.startswith(("~", "$", "."))


class GenerationSection(Section):
    """How answers are generated by compare, chat, generate-mode eval and export (seed 001 deployed 0.7 / 0.9 / 512)."""

    temperature: float = Field(0.7, ge=0, description="sampling temperature; 0 = greedy (reproducible comparisons)")
    top_p: float = Field(0.9, gt=0, le=1, description="nucleus sampling: keep the smallest token set with this mass")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens; null: no top-k cut")
    max_new_tokens: int = Field(512, ge=1, description="answer tokens after the think block (with thinking: the "
                                                       "think budget comes on top)")
    enable_thinking: bool | None = Field(
        None, description="Qwen3 thinking: true / false, or null for the chat template's default")
    think_budget: int | None = Field(
        None, ge=1, description="most tokens inside <think>; at the budget </think> is forced and the answer follows")

    @model_validator(mode="after")
    def _budget_needs_thinking(self) -> "GenerationSection":
        if self.think_budget is not None and self.enable_thinking is False:
            raise ValueError("generation.think_budget is set but generation.enable_thinking=false: remove "
                             "generation.think_budget or set generation.enable_thinking=true")
        return self


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
        t, procs = self.train, self.dist.num_processes * self.dist.num_machines
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
        batch), or None when the recipe does not pack. `medscale.plan.token_budget` sizes it to the GPU."""
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
    def _deepspeed_fits(self) -> "Recipe":
        if not self.dist.deepspeed:
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
        """Content hash of the resolved recipe; independent of key order and formatting."""
        canon = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


# --------------------------------------------------------------------------- loading

class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read `eval_strategy: no` as False."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _expand_vars(text: str) -> str:
    """Expand ${VAR} / ${VAR:-default} so model and data paths follow the environment. ${MEDSCALE_HOME} is always
    medscale_home(), so a file named by MEDSCALE_HOME is reported as such, not as a bad train.output_dir."""
    builtin = {settings.HOME.name: lambda: str(medscale_home()),
               settings.DEMO_DATA.name: lambda: settings.DEMO_DATA.get() or str(demo_data_dir())}

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3)
        val = builtin[name]() if name in builtin else os.environ.get(name) or default
        if val is None:
            raise RecipeError(f"environment variable ${{{name}}} is not set and has no default (write ${{{name}:-/path}})")
        return val

    return os.path.expanduser(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, text))


def demo_data_dir() -> Path:
    return Path(str(resources.files("medscale") / "data" / "demo"))


def builtin_dir() -> Path:
    return Path(str(resources.files("medscale") / "recipes"))


def builtin_names() -> list[str]:
    """Public built-in recipes (files starting with `_` are shared bases)."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml") if not p.name.startswith("_"))


def _recipe_file(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise RecipeError(f"recipe file {p} does not exist")
        return p
    p = builtin_dir() / f"{name_or_path}.yaml"
    if not p.exists():
        close = difflib.get_close_matches(name_or_path, builtin_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"unknown recipe '{name_or_path}'{hint} (see `medscale recipes`, or pass a .yaml path)")
    return p


def _read_yaml(path: Path) -> dict:
    try:
        data = _yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping of sections (model, data, train, ...)")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """YAML with `base: NAME` inheritance, so recipe variants state only what differs."""
    if path in seen:
        raise RecipeError(f"{path}: `base` chain loops: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return _deep_merge(_load_raw(_recipe_file(str(base)), seen + (path,)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override '{item}' is not of the form section.key=value (e.g. train.learning_rate=5e-6)")
    key, _, raw = item.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override '{item}': empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(keys[:i + 1])} is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def _expand_paths(data: dict) -> dict:
    """Apply ${VAR} expansion to the path-valued keys only (never to prompts or names)."""
    def fix(d: dict | None, key: str) -> None:
        if isinstance(d, dict) and isinstance(d.get(key), str):
            d[key] = _expand_vars(d[key])

    fix(data.get("model"), "path")
    fix((data.get("model") or {}).get("tiny"), "tokenizer")
    fix(data.get("train"), "output_dir")
    data_sec = data.get("data") or {}
    for group in ("sources", "eval_sources"):
        for src in data_sec.get(group) or []:
            fix(src, "path")
    fix(data_sec.get("term_masking"), "lexicon")
    eval_sec = data.get("eval") or {}
    fix(eval_sec, "control")
    fix(eval_sec, "data_dir")
    for i, bench in enumerate(eval_sec.get("benchmarks") or []):
        if isinstance(bench, str) and bench.startswith(("~", "$")):
            eval_sec["benchmarks"][i] = _expand_vars(bench)
        fix(bench, "path")
    return data


_TYPE_WORDS = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
    "model_type": "a mapping (section)", "dict_type": "a mapping (section)",
}


def _fields_at(loc: tuple) -> list[str]:
    """Valid key names at the parent of `loc`, for "did you mean" suggestions."""
    model: Any = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        for c in candidates:
            for inner in (c, *getattr(c, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
            else:
                continue
            break
        else:
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _line_of(path: Path | None, loc: tuple) -> str:
    """`file:line` of a key in the recipe YAML (best effort; overrides and bases have none)."""
    if path is None:
        return ""
    try:
        node = yaml.compose(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return f"{path}: "
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == part]
            if not match:
                break
            line, node = match[0][0].start_mark.line + 1, match[0][1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return f"{path}:{line}: " if line else f"{path}: "


def _override_of(loc: tuple, message: str, overrides: list[str]) -> str | None:
    """The command-line override behind an error: the one that set the key at `loc`, a section above it or a key
    inside it (`trian.max_steps=5` made the section 'trian'), else, for a cross-field check, the one whose key the
    message names. None: the error comes from the file."""
    keys = tuple(str(p) for p in loc)
    for item in reversed(overrides):
        key = tuple(item.partition("=")[0].strip().split("."))
        if keys and keys[:len(key)] == key[:len(keys)]:
            return item
    return next((item for item in reversed(overrides)
                 if re.search(rf"(?<![\w.]){re.escape(item.partition('=')[0].strip())}(?![\w])", message)), None)


def _explain(err: ValidationError, path: Path | None, overrides: list[str] = ()) -> str:
    """One line per problem, each pointing where the user can fix it: the override they typed, or the file:line.
    Unknown keys come first, and a required key that one of them misspells is not reported missing as well: `trian:`
    is "unknown section 'trian'; did you mean 'train'?", the cause, not "missing required key 'train'"."""
    lines, suggested = [], set()
    for e in sorted(err.errors(), key=lambda e: e["type"] != "extra_forbidden"):  # stable: pydantic's order within
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
        dotted = ".".join(str(p) for p in loc) or "(recipe)"
        item = _override_of(loc, e["msg"], list(overrides))
        kind = e["type"]
        where = f"override '{item}': " if item else _line_of(path, loc)
        if not item and overrides and kind == "value_error" and len(loc) <= 1:  # a cross-field check
            where = f"{where.rstrip(': ')} with {' '.join(overrides)}: "
        if kind == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(loc), n=1, cutoff=0.5)
            suggested.update([loc[:-1] + (close[0],)] if close else [])
            hint = f"; did you mean '{'.'.join(map(str, loc[:-1] + (close[0],)))}'?" if close else ""
            what = "section" if len(loc) == 1 and isinstance(e.get("input"), dict) else "key"
            lines.append(f"{where}unknown {what} '{dotted}'{hint}")
        elif kind == "missing" and loc in suggested:
            continue
        elif kind == "missing":
            lines.append(f"{where}missing required key '{dotted}'")
        elif kind in _TYPE_WORDS:
            lines.append(f"{where}{dotted}: expected {_TYPE_WORDS[kind]}, got {e.get('input')!r}")
        elif kind == "value_error":
            lines.append(f"{where}{e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"{where}{dotted}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(data: dict, source: Path | None = None, overrides: list[str] = ()) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_explain(e, source, overrides)) from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Built-in name or YAML path + overrides -> validated Recipe (or RecipeError)."""
    path = _recipe_file(name_or_path)
    data = _load_raw(path)
    data.setdefault("name", path.stem)
    data = _expand_paths(apply_overrides(data, overrides or []))
    written = _absolute_output_dir(data)
    recipe = validate(data, path, overrides or [])
    recipe._output_dir_as_written = written
    return recipe


def _absolute_output_dir(data: dict) -> str | None:
    """train.output_dir made absolute against the working dir, once, where the recipe is resolved: checkpoint paths,
    the registry, results and run summaries then name the folder wherever they are read. It is the abspath the job's
    registry key always used, and resume compares recipes without it, so a job whose recipe had a relative dir
    still resumes from the same cwd. Returns the value as written."""
    train = data.get("train")
    written = train.get("output_dir") if isinstance(train, dict) else None
    if isinstance(written, str) and written:
        train["output_dir"] = os.path.abspath(written)
    return written if isinstance(written, str) else None


def recipe_schema() -> dict:
    """JSON schema of the recipe, generated from the field descriptions above."""
    return Recipe.model_json_schema()


class KeyDoc(BaseModel):
    """One recipe key as `medscale recipe schema` shows it."""

    section: str  # top-level section ("" for the recipe's own keys: name, description)
    key: str  # the rest of the dotted path; list items as `sources[].path`
    type: str
    default: str
    description: str | None


def _sections_in(annotation) -> list[tuple[type[BaseModel], bool]]:
    """(section model, inside a list) found in a field's annotation: `X`, `X | None`, `list[X]`, `list[str | X]`
    (eval.benchmarks: a name or a mapping)."""
    import typing

    def is_section(a) -> bool:
        return isinstance(a, type) and issubclass(a, BaseModel)

    if typing.get_origin(annotation) is list:
        return [(b, True) for a in typing.get_args(annotation) for b in (a, *typing.get_args(a)) if is_section(b)]
    return [(a, False) for a in (annotation, *typing.get_args(annotation)) if is_section(a)]


def _type_words(annotation) -> str:
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
            return "list of mappings"
        return f"list of {_type_words(args[0])}" if args else "list"
    if args and origin is not None:  # a union
        words = [_type_words(a) for a in args if a is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _default_words(field) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
        return "(section)" if isinstance(value, BaseModel) else json.dumps(value, ensure_ascii=False)
    if field.default is PydanticUndefined:
        return "required"
    return "null" if field.default is None else json.dumps(field.default, ensure_ascii=False)


def recipe_keys(model: type[BaseModel] = Recipe, prefix: str = "") -> list[KeyDoc]:
    """Every key of the recipe, sections and the keys inside them, in declaration order, with its type, default and
    description (the `Field(description=...)` above)."""
    rows = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if "." in path:
            section, key = path.split(".", 1)
        else:  # a top-level key: a section's own row, or one of the recipe's own keys (name, description)
            section, key = (path, "") if _sections_in(field.annotation) else ("", path)
        rows.append(KeyDoc(section=section, key=key, type=_type_words(field.annotation),
                           default=_default_words(field), description=field.description))
        for sub, in_list in _sections_in(field.annotation):
            rows += recipe_keys(sub, f"{path}{'[]' if in_list else ''}.")
    return rows
