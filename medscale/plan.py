"""Memory plan: what a recipe needs per GPU, component by component, and the token budget it can afford.

`plan(recipe, gpu_mem_gb, gpus)` reads the model's real shapes (its config.json; the tiny spec before a tiny
model is built; the shapes medscale ships for the built-in recipes' models before they are downloaded) and estimates peak GPU memory as the PyTorch allocator would report
it: weights in their stored dtype (NF4 with its constants; what peft's k-bit preparation upcasts to
fp32), LoRA parameters with gradients and optimizer state (ZeRO shards them), activations with recompute
on all, some or none of the decoder layers, the logits and loss (Liger's fused linear cross-entropy or full
logits), and the transient dequantized 4-bit weight. Per-token activation costs count the tensors autograd keeps for one
decoder layer (frozen base, LoRA on the target linears, dropout masks, the fp32 residual stream of a
k-bit-prepared model). Written here because no library plans LoRA/QLoRA memory from a recipe.

Rows: padded and padding_free micro-batches hold at most per_device_train_batch_size x max_length
tokens (with train.merge_accumulation=auto, the larger micro-batch of merged accumulation steps where it
fits); packed rows get the largest budget that fits (capped at PACK_CAP tokens, past which the GEMMs are
saturated and bigger rows only cut the number of optimizer steps).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from medscale.dist import DistContext
from medscale.recipe import Recipe, RecipeError

GIB = 2**30
CONTEXT_GIB = 0.6      # CUDA context + cuBLAS/Triton workspaces: outside the allocator, still on the card
FRAGMENTATION = 1.08   # reserved / allocated with expandable segments, variable-length batches
PACK_CAP = 16384       # tokens per packed row
BLOCK = 256            # packed budgets are multiples of this
EIGHT_BIT_OPTIMIZERS = ("8bit",)
AUTO_HEADROOM = 0.9    # gradient_checkpointing=auto plans for this share of the usable memory: margin for its error


@dataclass(kw_only=True)
class Shape:
    """The decoder shapes a plan needs, from a Hugging Face config.json (Qwen2/Qwen3/Llama-like)."""

    model_type: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "Shape":
        heads = cfg["num_attention_heads"]
        return cls(model_type=cfg.get("model_type", "?"), hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                   intermediate=cfg["intermediate_size"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)))

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each decoder-layer linear, by the module names LoRA targets."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    def linear_params(self) -> int:
        return self.layers * sum(a * b for a, b in self.linears().values())

    def other_params(self) -> int:
        """Embeddings, lm_head, norms and biases: what 4-bit quantization leaves in floating point."""
        h, d = self.hidden, self.head_dim
        per_layer = 2 * h + (2 * d if self.model_type == "qwen3" else 0)
        if self.model_type == "qwen2":  # q/k/v biases
            per_layer += (self.heads + 2 * self.kv_heads) * d
        return self.vocab * h * (1 if self.tied else 2) + self.layers * per_layer + h

    def total_params(self) -> int:
        return self.linear_params() + self.other_params()


@dataclass
class Component:
    name: str
    gib: float
    note: str = ""


@dataclass(kw_only=True)
class Plan:
    recipe: str
    gpu_mem_gb: float
    gpus: int
    shape: Shape
    batching: str
    recompute_layers: int            # decoder layers recomputed in the backward (the first ones): all, none or auto's
    tokens: int                      # tokens of the largest micro-batch planned for
    token_budget: int | None         # batching=packed: the chosen row budget
    components: list[Component]
    per_token_kib: dict              # activation cost per token, with and without recompute
    recompute_needed: bool           # False: the same tokens fit without gradient checkpointing
    problems: list[str] = field(default_factory=list)
    shape_source: str = ""           # the config.json planned from, or the shipped shape before a download
    micro_batch: int = 0             # samples per micro-batch and micro-batches per optimizer step, as planned:
    accumulation: int = 1            # the recipe's, or merged (train.merge_accumulation) where the plan fits them
    batch_note: str = ""             # the batch decision and why, as `plan`, `check` and the run's log say it

    @property
    def allocated_gib(self) -> float:
        return sum(c.gib for c in self.components)

    @property
    def reserved_gib(self) -> float:
        return self.allocated_gib * FRAGMENTATION

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def recompute(self) -> bool:
        return self.recompute_layers > 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(allocated_gib=round(self.allocated_gib, 2), reserved_gib=round(self.reserved_gib, 2), fits=self.fits,
                 recompute=self.recompute)
        return d


def model_shape(recipe: Recipe) -> tuple[Shape, str]:
    """(shapes, where they come from): the model's config.json (its folder, or a hub id's local copy); the tiny
    spec's when a tiny model is not built yet; the shipped shape of a built-in recipe's model not downloaded yet."""
    from medscale.model.resolve import model_folder, model_missing, shipped_config

    cfg_file = model_folder(recipe.model) / "config.json"
    if cfg_file.is_file():
        return Shape.from_config(json.loads(cfg_file.read_text(encoding="utf-8"))), str(cfg_file)
    if recipe.model.tiny is not None:
        from medscale.model.tiny import tiny_shape

        return Shape.from_config(tiny_shape(3000, recipe.model.tiny.layers, recipe.model.tiny.hidden)), "model.tiny"
    if (shipped := shipped_config(recipe.model)) is not None:
        return Shape.from_config(shipped[1]), f"the shipped shape of {shipped[0]} (no weights on disk)"
    raise RecipeError(f"{model_missing(recipe.model)} (the memory plan reads the model's shapes from its config.json)")


def _targets(recipe: Recipe, shape: Shape) -> list[str]:
    t = recipe.adapter.target_modules
    return list(shape.linears()) if t == "all-linear" else [m for m in t if m in shape.linears()]


def _dtype_bytes(name: str) -> int:
    return {"bfloat16": 2, "float16": 2, "float32": 4}[name]


def _residual_bytes(recipe: Recipe) -> int:
    """Bytes per value of the frozen non-linear weights and of the residual stream, which follows the embeddings:
    fp32 after peft's k-bit upcast, else the model's dtype."""
    m = recipe.model
    return 4 if m.load_in_4bit and m.fp32_frozen_weights else _dtype_bytes(m.dtype)


def layer_activation_bytes(recipe: Recipe, shape: Shape) -> tuple[float, float]:
    """(kept, transient) bytes per token for one decoder layer in training: what autograd keeps until
    the layer's backward, and the largest short-lived tensors of its forward/backward."""
    kbit = recipe.model.load_in_4bit
    res = _residual_bytes(recipe)
    act = _dtype_bytes(recipe.model.bnb_4bit_compute_dtype if kbit else recipe.model.dtype)
    liger = recipe.train.use_liger_kernel is True  # its RMSNorm and SwiGLU (not with fused_linear_cross_entropy alone)
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    targets, r = set(_targets(recipe, shape)), recipe.adapter.r
    inputs = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": i}
    dropout = recipe.adapter.lora_dropout > 0
    kept = 0.0
    kept += 2 * (res if liger else 4) * h                 # two RMSNorms keep their (fp32) input
    for m in targets:                                      # LoRA: A keeps its (dropped-out, cast) input, B keeps A's out
        kept += inputs[m] * (act + (1 if dropout else 0)) + r * act
    norm = 4 if shape.model_type == "qwen3" else 0         # Qwen3 q/k RMSNorm over head_dim keeps fp32 inputs
    kept += norm * (q + kv)
    kept += act * (2 * q + 2 * kv) + 4 * shape.heads       # attention keeps q, k, v, out and the log-sum-exp
    kept += act * i * (2 if liger else 3)                  # SwiGLU: gate, up (+ silu(gate) without Liger)
    kept += act * i if "down_proj" not in targets else 0   # the product feeding down_proj
    transient = act * 3 * i + 2 * res * h                  # backward: grads of gate/up/product, residual grads
    return kept, transient


def _loss_bytes_per_token(recipe: Recipe, shape: Shape) -> float:
    """Logits and loss. Liger's fused linear cross-entropy never holds more than a chunk of logits (about
    the size of the fp32 hidden states); plain HF materialises bf16 logits, their fp32 copy and the grads."""
    if recipe.train.use_liger_kernel:
        return 4 * shape.hidden * 3
    return shape.vocab * (2 + 4 + 4 + 2)


def _optimizer_bytes(optim: str) -> int:
    return 2 if any(k in optim.lower() for k in EIGHT_BIT_OPTIMIZERS) else 8


def trainable_params(recipe: Recipe, shape: Shape) -> tuple[int, int]:
    """(LoRA parameters, modules_to_save parameters)."""
    lora = shape.layers * sum(recipe.adapter.r * (a + b) for n, (a, b) in shape.linears().items()
                              if n in _targets(recipe, shape))
    saved = sum(shape.vocab * shape.hidden for m in recipe.adapter.modules_to_save or []
                if m in ("embed_tokens", "lm_head"))
    return lora, saved


def fixed_components(recipe: Recipe, shape: Shape, gpus: int) -> list[Component]:
    """Everything that does not grow with the tokens of a micro-batch."""
    m, dist = recipe.model, recipe.dist
    stage = dist.zero_stage() if dist.deepspeed else 0
    offload = dist.offloads() if dist.deepspeed else []
    shard = lambda n, on: n / gpus if on else n  # noqa: E731
    out: list[Component] = []
    linear, other = shape.linear_params(), shape.other_params()
    if m.load_in_4bit:
        per = 0.5 + (1 / 64 if m.bnb_4bit_use_double_quant else 4 / 64)
        quant = shard(linear * per, stage == 3 and "param" not in offload)
        out.append(Component("weights: decoder linears (4-bit)", quant / GIB,
                             f"{linear / 1e9:.2f}B params x {per:.3f} B (NF4 + {'double-quantized ' if m.bnb_4bit_use_double_quant else ''}constants)"))
        up = m.fp32_frozen_weights
        out.append(Component(f"weights: embeddings, lm_head, norms ({'fp32' if up else m.dtype})",
                             shard(other * _residual_bytes(recipe), stage == 3) / GIB,
                             f"{other / 1e9:.2f}B params" + (" upcast to fp32 by peft's k-bit preparation" if up else "")))
        dq = max(a * b for a, b in shape.linears().values()) * 2
        out.append(Component("dequantized 4-bit weight (transient)", 2 * dq / GIB, "largest linear in bf16, x2"))
    else:
        b = _dtype_bytes(m.dtype)
        out.append(Component(f"weights ({m.dtype})", shard((linear + other) * b, stage == 3 and "param" not in offload) / GIB,
                             f"{(linear + other) / 1e9:.2f}B params x {b} B"))
    lora, saved = trainable_params(recipe, shape)
    trainable = lora + saved
    zero3 = stage == 3
    p_bytes = 2 if zero3 else 4                         # LoRA in fp32 (peft's upcast) unless ZeRO-3 keeps bf16
    out.append(Component("trainable parameters", shard(trainable * p_bytes, zero3) / GIB,
                         f"LoRA r{recipe.adapter.r}: {lora / 1e6:.1f}M" + (f", modules_to_save {saved / 1e6:.0f}M" if saved else "")))
    out.append(Component("gradients", shard(trainable * p_bytes, stage >= 2) / GIB,
                         f"{'sharded over ' + str(gpus) + ' GPUs (ZeRO-' + str(stage) + ')' if stage >= 2 and gpus > 1 else 'one copy'}"))
    opt = (0 if "optimizer" in offload else
           shard(trainable * (_optimizer_bytes(recipe.train.optim) + (4 if stage else 0)), stage >= 1))
    out.append(Component("optimizer state", opt / GIB,
                         "offloaded to CPU" if "optimizer" in offload else
                         f"{recipe.train.optim}" + (" + fp32 master (ZeRO)" if stage else "")))
    return out


def _micro_batch_tokens(recipe: Recipe) -> int:
    return recipe.train.per_device_train_batch_size * recipe.data.max_length


def _batch_said(micro: int, accum: int, why: str) -> str:
    return f"micro-batch {micro} x accumulation {accum} ({why})"


def merge_blocker(recipe: Recipe) -> str | None:
    """Why the recipe's accumulated micro-batches stay as written whatever the memory (None: they may merge)."""
    t = recipe.train
    if t.gradient_accumulation_steps == 1:
        return "no accumulation to merge"
    if t.merge_accumulation == "off":
        return "kept: train.merge_accumulation=off"
    if recipe.data.batching == "packed":
        return "kept: packed rows keep their own budget"
    fixed = [k for k in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")
             if isinstance(recipe.dist.deepspeed_config().get(k), int)]
    if fixed:
        return f"kept: dist.deepspeed's config sets {fixed[0]}"
    return None


def merged_batch(recipe: Recipe, fits) -> tuple[int, int]:
    """(micro-batch, accumulation): the largest micro-batch that divides the recipe's samples per optimizer step
    and for which `fits(samples)` holds, never smaller than the recipe's. The same samples make each step (the
    sampler's order does not depend on the micro-batch) and the Trainer averages the loss over the step's tokens
    (num_items_in_batch), so merging changes the number of launches, not the loss."""
    t = recipe.train
    b, step = t.per_device_train_batch_size, t.per_device_train_batch_size * t.gradient_accumulation_steps
    if merge_blocker(recipe) is not None:
        return b, t.gradient_accumulation_steps
    micro = next((d for d in range(step, b, -1) if step % d == 0 and fits(d)), b)
    return micro, step // micro


def plan(recipe: Recipe, gpu_mem_gb: float, gpus: int = 1, tokens: int | None = None,
         recompute: int | None = None) -> Plan:
    """The memory plan of `recipe` on GPUs of `gpu_mem_gb` GiB each (`gpus` of them, for ZeRO sharding), for
    its largest micro-batch (or, to compare with a measured run, for micro-batches of `tokens` tokens with the
    first `recompute` layers recomputed, as that run chose)."""
    if gpu_mem_gb <= 0 or gpus < 1:
        raise RecipeError(f"plan: --gpu-mem must be > 0 and --gpus >= 1 (got {gpu_mem_gb}, {gpus})")
    shape, source = model_shape(recipe)
    fixed = fixed_components(recipe, shape, gpus)
    kept, transient = layer_activation_bytes(recipe, shape)
    res = _residual_bytes(recipe)
    loss = _loss_bytes_per_token(recipe, shape)
    embed = res * shape.hidden * 2                        # embedding output + final norm input
    layers, gc = shape.layers, recipe.train.gradient_checkpointing

    def per_token(k: int) -> float:
        """Peak bytes per token with the first k layers recomputed. They keep only their input; the backward
        frees the later layers' activations before it rebuilds theirs, one layer at a time."""
        return k * res * shape.hidden + max(layers - k, 1) * kept + transient + loss + embed

    with_rc, without_rc = per_token(layers), per_token(0)
    most = 0 if gc is False else layers                 # the most recompute the recipe allows
    usable = (gpu_mem_gb - CONTEXT_GIB) / FRAGMENTATION * GIB - sum(c.gib for c in fixed) * GIB
    afford = int(usable // per_token(most)) if usable > 0 else 0
    budget = None
    if recipe.data.batching == "packed":
        budget = recipe.data.pack_tokens or max(recipe.data.max_length, min(PACK_CAP, afford // BLOCK * BLOCK))
    planning = tokens is None and recompute is None  # a run's plan, not one to compare with a measured run
    tokens = tokens or budget or _micro_batch_tokens(recipe)
    t = recipe.train
    micro, accum = t.per_device_train_batch_size, t.gradient_accumulation_steps
    if planning and tokens <= afford and budget is None:  # merge what fits, with margin
        micro, accum = merged_batch(recipe, lambda n: n * recipe.data.max_length * per_token(most)
                                    <= AUTO_HEADROOM * usable)
        tokens = micro * recipe.data.max_length
    k = most if recompute is None else min(recompute, layers)
    if gc == "auto" and recompute is None:  # the fewest recomputed layers that fit with headroom, else all
        k = next((n for n in range(layers + 1) if tokens * per_token(n) <= AUTO_HEADROOM * usable), layers)
    act = Component("activations" + (f" (recompute {k}/{layers} layers)" if k else ""),
                    tokens * (per_token(k) - loss) / GIB, f"{tokens} tokens x {(per_token(k) - loss) / 1024:.0f} KiB")
    logits = Component("logits + loss", tokens * loss / GIB,
                       f"{'Liger fused linear cross-entropy' if recipe.train.use_liger_kernel else 'full logits'}: "
                       f"{loss / 1024:.0f} KiB/token")
    p = Plan(recipe=recipe.name, gpu_mem_gb=gpu_mem_gb, gpus=gpus, shape=shape, batching=recipe.data.batching,
             recompute_layers=k, tokens=tokens, token_budget=budget, components=[*fixed, act, logits],
             per_token_kib={"recompute": round(with_rc / 1024, 1), "no_recompute": round(without_rc / 1024, 1)},
             recompute_needed=tokens * without_rc > usable, shape_source=source, micro_batch=micro,
             accumulation=accum)
    if tokens > afford:
        p.problems.append(_advice(recipe, p, afford, with_rc, usable))
    p.batch_note = _batch_said(micro, accum, _merge_why(recipe, p, per_token(most) - per_token(k)))
    return p


def _merge_why(recipe: Recipe, p: Plan, extra_per_token: float) -> str:
    """Why the plan's micro-batch is what it is, with the memory that decided it (`extra_per_token`: the bytes per
    token the most recompute the recipe allows adds to the plan's)."""
    t = recipe.train
    if (micro := t.per_device_train_batch_size) != p.micro_batch:
        per = "step" if p.accumulation == 1 else "micro-batch"
        return (f"was {micro} x {t.gradient_accumulation_steps}: the plan fits {p.micro_batch} per {per} in "
                f"{p.reserved_gib + CONTEXT_GIB:.1f} GB of {p.gpu_mem_gb:g}")
    if (blocked := merge_blocker(recipe)) is not None:
        return blocked
    if p.problems:
        return "kept: the recipe's micro-batch does not fit either"
    step = micro * t.gradient_accumulation_steps
    per_token = (sum(c.gib for c in p.components[-2:]) * GIB / p.tokens + extra_per_token)
    more = (step * recipe.data.max_length - p.tokens) * per_token / GIB  # merged minus planned activations
    return (f"kept: {step} per step would need about {(p.allocated_gib + more) * FRAGMENTATION + CONTEXT_GIB:.1f} "
            f"GB of {p.gpu_mem_gb:g}, over the plan's {AUTO_HEADROOM:.0%} margin")


def _advice(recipe: Recipe, p: Plan, afford: int, with_rc: float, usable: float) -> str:
    """Why a recipe does not fit, and what to change, most effective first."""
    need = p.reserved_gib + CONTEXT_GIB
    fixes = []
    if usable <= 0:
        fixes.append("model.load_in_4bit=true" if not recipe.model.load_in_4bit else "a smaller model or more GPUs "
                     "with dist.deepspeed=zero3")
    else:
        if recipe.train.gradient_checkpointing is False and p.tokens * with_rc <= usable:
            fixes.append("train.gradient_checkpointing=true")
        if not recipe.train.use_liger_kernel:
            fixes.append("train.use_liger_kernel=true (no full logits)")
        if recipe.data.batching == "packed":
            fixes.append(f"data.pack_tokens={max(afford // BLOCK * BLOCK, BLOCK)}")
        else:
            per = max(1, afford // recipe.data.max_length)
            t = recipe.train
            if per < t.per_device_train_batch_size:
                fixes.append(f"train.per_device_train_batch_size={per} with train.gradient_accumulation_steps="
                             f"{-(-t.per_device_train_batch_size * t.gradient_accumulation_steps // per)} (same samples per step)")
            if afford < recipe.data.max_length:
                fixes.append(f"data.max_length={max(afford // 64 * 64, 64)}")
    return (f"{recipe.name} needs about {need:.1f} GiB per GPU for {p.tokens}-token micro-batches but the GPU has "
            f"{p.gpu_mem_gb:g} GiB (it affords {max(afford, 0)} tokens): set " + " or ".join(fixes or ["a larger GPU"]))


def device_memory_gb() -> float | None:
    """This process's usable GPU memory in GiB (the card, times any per-process fraction), or None on CPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    dev = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(dev).total_memory
    frac = torch.cuda.get_per_process_memory_fraction(dev) if hasattr(torch.cuda, "get_per_process_memory_fraction") else 1.0
    return total * frac / GIB


@dataclass(kw_only=True)
class Decision:
    """What the memory plan decides for one run, made once, in pre-flight (the RunPlan carries it to the workers):
    the recompute and the packed token budget follow from the same plan as the problems it reports."""

    gpu_mem_gb: float | None  # the GPU planned for; None: none here, memory is not the limit
    gpus: int
    recompute_layers: int | None  # decoder layers recomputed, the first ones: None = all, 0 = none
    token_budget: int | None  # tokens per packed row; None when the recipe does not pack
    problems: list[str]  # why it cannot fit, naming what to change
    plan: Plan | None  # the plan itself, where a GPU is known and the model's shapes could be read
    micro_batch: int  # samples per micro-batch and micro-batches per step: the recipe's, or merged
    accumulation: int
    batch_note: str  # the batch decision and why


def decide(recipe: Recipe, gpu_mem_gb: float | None = None) -> Decision:
    """The run's memory decisions on this GPU (or one of `gpu_mem_gb` GiB), from one plan. gradient_checkpointing
    true/false recompute all/none; auto the fewest layers that fit, none without a GPU, all when the model's shapes
    cannot be read (model.path is checked on its own). The token budget: data.pack_tokens, else the plan's, else
    (no GPU) max_length x per-device batch."""
    mem = gpu_mem_gb if gpu_mem_gb is not None else device_memory_gb()
    gpus = DistContext.planned(recipe.dist).world_size
    p = None
    if mem is not None:
        try:
            p = plan(recipe, mem, gpus)
        except RecipeError:
            pass
    gc = recipe.train.gradient_checkpointing
    if gc != "auto":
        recompute = None if gc else 0
    else:
        recompute = 0 if mem is None else p.recompute_layers if p is not None else None
    budget = p.token_budget if p is not None else recipe.pack_budget()
    t = recipe.train
    if p is not None:
        batch = p.micro_batch, p.accumulation, p.batch_note
    elif mem is None:  # no GPU: memory does not limit the micro-batch
        micro, accum = merged_batch(recipe, lambda n: True)
        why = (merge_blocker(recipe) or
               f"was {t.per_device_train_batch_size} x {t.gradient_accumulation_steps}: no GPU here")
        batch = micro, accum, _batch_said(micro, accum, why)
    else:
        batch = (t.per_device_train_batch_size, t.gradient_accumulation_steps,
                 _batch_said(t.per_device_train_batch_size, t.gradient_accumulation_steps, "kept: no memory plan"))
    micro_batch, accumulation, batch_note = batch
    return Decision(gpu_mem_gb=mem, gpus=gpus, recompute_layers=recompute, token_budget=budget,
                    problems=p.problems if p is not None else [], plan=p, micro_batch=micro_batch,
                    accumulation=accumulation, batch_note=batch_note)
