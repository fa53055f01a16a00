"""Pre-flight: every cheap check that can fail, before any process starts or any file is written, all problems at
once (torchtune `config/_validate.py`, litgpt `validate_args`).

Three callers, one set of checks:
- every launcher's `prepare` calls `check_launch` and its `submit` refuses to spawn or queue anything while the
  report has errors (local `accelerate launch`, `sbatch`, `ray job submit`): on a submit host it checks what that
  host can see;
- `run()` calls `worker_plan` in each process before training: the RunPlan the local launcher's pre-flight decided
  for it (memory plan, tokenized data), else this host's checks and decisions, made there once;
- `medscale check RECIPE` prints the full report, data read and tokenized included (issue 14).
A problem is an error (the run cannot work: exit 2, nothing written) or a warning (it can, but you should know).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from medscale.dist import DistContext
from medscale.errors import UserError
from medscale.recipe import Recipe

if TYPE_CHECKING:
    from medscale.jobs.runplan import RunPlan

WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.pt", "*.gguf")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


class PreflightError(UserError):
    """The recipe cannot run here; the message lists every problem found, one a line, each with its fix."""


@dataclass
class Finding:
    level: str  # error | warning | info
    topic: str  # what it is about: model, data, dist, output, registry, ...
    message: str


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    plan: "RunPlan | None" = None  # what it decided, where it checked the host that trains (`devices`)

    def error(self, topic: str, message: str) -> None:
        self.findings.append(Finding("error", topic, message))

    def warn(self, topic: str, message: str) -> None:
        self.findings.append(Finding("warning", topic, message))

    def info(self, topic: str, message: str) -> None:
        self.findings.append(Finding("info", topic, message))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    def raise_if_failed(self) -> "Report":
        if self.errors:
            raise PreflightError("\n".join(f.message for f in self.errors))
        return self


def model_dir_problem(model) -> str | None:
    """Why the recipe's model cannot be loaded (its folder, or a hub id's local copy: model.resolve), or None. A
    `model.tiny` recipe builds its folder itself, where it may."""
    from medscale.model.resolve import download_command, hub_id, model_missing, model_source

    path = Path(model.path).expanduser()
    if model.tiny is not None and not (path / "config.json").exists():
        from medscale.model.tiny import tiny_build_problem

        return tiny_build_problem(model)
    if path.is_file():
        return f"model.path: {path} is a file, not a model folder: set model.path=/your/model/folder"
    found = model_source(model)
    if found is None:
        return model_missing(model)
    folder = found.path
    missing = [name for name, ok in (
        ("config.json", (folder / "config.json").is_file()),
        ("weights (*.safetensors)", any(any(folder.glob(g)) for g in WEIGHT_GLOBS)),
        ("tokenizer files", any((folder / f).is_file() for f in TOKENIZER_FILES))) if not ok]
    if missing:
        repo = hub_id(model.hub_id or "") or hub_id(model.path)
        what = f"`{download_command(repo[0], repo[1], folder)}`" if repo else "put a Hugging Face model folder there"
        return f"model.path: {found} has no {', '.join(missing)}: {what} (config.json, *.safetensors, tokenizer files)"
    return None


def tokenizer_dir_problem(path: Path) -> str | None:
    """Why `path` is not a tokenizer folder (a model folder or a saved tokenizer), or None."""
    if not path.exists():
        return "no such folder"
    if not path.is_dir():
        return "is a file, not a tokenizer folder"
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return f"has no tokenizer files ({', '.join(TOKENIZER_FILES)})"
    return None


def _unwritable(folder: Path) -> Path | None:
    """The existing folder (or its nearest existing parent) that stops `folder` from being created or written by
    this user, or None when it can be."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return None if probe.is_dir() and os.access(probe, os.W_OK | os.X_OK) else probe


def _output_dir_problem(out: Path) -> str | None:
    if out.exists() and not out.is_dir():
        return f"train.output_dir: {out} is a file: choose a folder path (train.output_dir=/path/to/run)"
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            return f"train.output_dir: {parent} is a file, not a folder: choose another train.output_dir"
    if (probe := _unwritable(out)) is not None:
        return (f"train.output_dir: {out} cannot be written ({probe} is read-only for this user): choose a "
                f"writable train.output_dir or fix the permissions")
    return None


def _deepspeed(recipe: Recipe, report: Report, on_worker: bool) -> None:
    from medscale.jobs.checkpoint import MANIFEST, checkpoint_dirs, deepspeed_layout

    ds = recipe.dist
    ds_name = f"dist.deepspeed={Path(ds.deepspeed).stem}" if ds.deepspeed else "no dist.deepspeed"
    if on_worker and "ACCELERATE_CONFIG_DS_FIELDS" in os.environ and not ds.deepspeed:
        report.error("dist", "started by accelerate with a DeepSpeed config (distributed_type: DEEPSPEED) but the "
                             "recipe has no dist.deepspeed: set dist.deepspeed=zero2 | zero3 | zero3_offload (or a "
                             ".json path), or launch with a non-DeepSpeed accelerate config")
    if on_worker and ds.deepspeed and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        report.error("dist", "dist.deepspeed is set but accelerate was started with use_cpu (e.g. cpu_ddp.yaml): the "
                             "Trainer would skip DeepSpeed and train plain DDP; use cluster/accelerate/cpu_deepspeed.yaml "
                             "(the local launcher picks it when dist.config is unset)")
    if ds.deepspeed and importlib.util.find_spec("deepspeed") is None:
        report.error("dist", f"{ds_name} needs DeepSpeed: pip install deepspeed, or remove dist.deepspeed")
    # A checkpoint resumes only under the same DeepSpeed layout and, with ZeRO, the same number of processes: else
    # the Trainer fails after loading the model, or silently starts a fresh optimizer. A cheap look at the checkpoint
    # train.resume would pick (manifest present, not re-hashed).
    mode, out = recipe.train.resume, Path(recipe.train.output_dir)
    ckpt = (None if mode == "never" else Path(mode).expanduser() if mode != "auto" else
            next((c for _, c in reversed(checkpoint_dirs(out)) if (c / MANIFEST).is_file()), None))
    if ckpt is None or not ckpt.is_dir():
        return
    saved, ranks = deepspeed_layout(ckpt)
    want = "no DeepSpeed" if not ds.deepspeed else "ZeRO-3" if ds.zero_stage() == 3 else "ZeRO-1/2"
    procs = DistContext.planned(ds).world_size
    if saved != want:
        report.error("dist", f"train.resume: {ckpt} was saved with {saved}, but this recipe runs {want} ({ds_name}); "
                             f"its optimizer state would not load (DeepSpeed refuses the folder; without DeepSpeed the "
                             f"Trainer silently starts a fresh optimizer): continue with the dist.deepspeed it was "
                             f"saved with, or choose a new train.output_dir")
    elif ranks and ranks != procs:
        report.error("dist", f"train.resume: {ckpt} was saved by {ranks} DeepSpeed processes and ZeRO cannot "
                             f"re-partition its optimizer state for {procs}: set dist.num_processes so that "
                             f"processes x machines = {ranks}, or choose a new train.output_dir")


def _trainer_args(recipe: Recipe, report: Report) -> None:
    """train.trainer_args against the installed transformers' TrainingArguments."""
    if recipe.train.trainer_args:
        from transformers import TrainingArguments

        for problem in recipe.train.trainer_args_problems(TrainingArguments):
            report.error("train", problem)


def _devices(recipe: Recipe, report: Report) -> None:
    """What the host that trains must have (this one: a worker, or the local launcher's machine)."""
    import torch

    cuda = torch.cuda.is_available()
    if recipe.model.load_in_4bit and not cuda:
        report.error("model", "model.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit training); on CPU set "
                              "model.load_in_4bit=false")
    if recipe.train.use_liger_kernel and cuda and importlib.util.find_spec("liger_kernel") is None:
        report.error("train", "train.use_liger_kernel needs liger-kernel: pip install 'medscale[gpu]', or set "
                              "train.use_liger_kernel=false")
    gpus = torch.cuda.device_count()
    if gpus and recipe.dist.num_processes > gpus:
        report.error("dist", f"dist.num_processes={recipe.dist.num_processes} but this machine has {gpus} GPU(s): "
                             f"set dist.num_processes={gpus} (and train.gradient_accumulation_steps to keep the batch)")


def _data(recipe: Recipe, report: Report, missing_is_error: bool, read: bool, counted: dict | None = None) -> None:
    """Each source found, and read: its records and bad records counted as they stream by (a big file is never
    held here), or taken from `counted` (`medscale check`: tokenizing read them already, {group: per source})."""
    from medscale.data.sources import DataError, expand_sources, iter_conversations

    d = recipe.data
    missing: dict[str, tuple[list[str], str]] = {}  # a file named by several sources is one problem
    for group, sources in (("data.sources", d.sources), ("data.eval_sources", d.eval_sources)):
        for i, src in enumerate(sources):
            if src.path in missing:
                missing[src.path][0].append(f"{group}[{i}].path")
                continue
            try:
                expand_sources(src.path)
            except DataError as e:
                missing[src.path] = ([f"{group}[{i}].path"], str(e))
                continue
            if not read:
                continue
            per_source = (counted or {}).get(group)
            if per_source is not None:
                counts = per_source[i]
                n = counts["records"]
            else:
                counts = {}
                try:
                    n = sum(1 for _ in iter_conversations(src.path, src.format, d.prompt_field, d.system_prompt,
                                                          src.limit, on_bad_record=d.on_bad_record,
                                                          max_bad_fraction=d.max_bad_fraction, counts=counts,
                                                          skip=src.skip))
                    n = min(n, src.sample) if src.sample else n
                except DataError as e:
                    report.error("data", str(e))
                    continue
            bad = f", {counts['bad_records']} bad record(s) skipped" if counts.get("bad_records") else ""
            report.info("data", f"{group}[{i}] {src.path}: {n} record(s){bad}")
            if group == "data.sources" and d.eval_size >= 1 and not d.eval_sources and d.eval_size >= n:
                report.error("data", f"data.eval_size={d.eval_size:g} holds out every record of {src.path} "
                                     f"({n}): lower data.eval_size or set data.eval_sources")
    for keys, problem in missing.values():
        (report.error if missing_is_error else report.warn)("data", f"{', '.join(keys)}: {problem}")


def _eval(recipe: Recipe, report: Report) -> None:
    """eval.benchmarks and eval.control are read at eval steps and at the end: a missing file would fail the run
    after hours of training."""
    from medscale.errors import UserError
    from medscale.eval.bench import load_benchmark
    from medscale.eval.control import is_sft_data

    e = recipe.eval
    for b in e.benchmarks:
        try:
            load_benchmark(b, e.data_dir)
        except UserError as err:
            report.error("eval", f"eval.benchmarks: {err}")
    if e.control:
        try:
            if not is_sft_data(e.control):
                load_benchmark(e.control, e.data_dir)
        except (UserError, OSError) as err:
            report.error("eval", f"eval.control: {err}")


def _adapter(recipe: Recipe, report: Report, folder: Path) -> None:
    """adapter.target_modules / modules_to_save against the model's module names (its config on the meta device):
    a wrong name otherwise fails after the model is loaded and the job recorded, or is skipped without a word."""
    from medscale.model.modules import adapter_problems

    try:
        problems = adapter_problems(recipe, folder=folder)
    except (OSError, ValueError, KeyError, ImportError):  # a config transformers cannot build: loading says why
        return
    for problem in problems:
        report.error("adapter", problem)


def _tokenized_data(recipe: Recipe, budget: int | None):
    """`medscale check`: the data through the recipe's tokenizer and chat template, as training will see it,
    reading each file once (its records counted on the way). Written to the run's own data cache (same key: files,
    tokenizer, options, packed-row budget), so training loads it. (built data, None) or (None, why it failed)."""
    from medscale.data.pipeline import build_datasets, cache_root
    from medscale.model.tokenizer import load_tokenizer

    try:
        tok = load_tokenizer(recipe.model, planned=True)
        return build_datasets(recipe.data, tok, recipe.train.seed, budget, cache_root()), None
    except (UserError, OSError, ValueError) as e:
        return None, e


def _tokens(recipe: Recipe, report: Report, stats: dict) -> None:
    """What data.max_length / data.truncation do to each split (dropped and cut records, with the key that changes
    it)."""
    from medscale.data.pipeline import truncation_note

    for split in ("train", "eval"):
        if split not in stats:
            continue
        s, note = stats[split], truncation_note(stats[split])
        formats = f" ({', '.join(sorted(s['formats']))})" if s.get("formats") else ""
        report.info("tokens", f"{split}: {s['kept']} of {s['records']} records kept{formats}, "
                              f"{s['mean_tokens']:g} tokens on average, longest {s['max_tokens']} "
                              f"(data.max_length={recipe.data.max_length})")
        if note is not None:
            report.warn("tokens", f"{split}: {note}")


def _registry(report: Report) -> None:
    """Reachable or not, a warning at most: training does not need the registry. A SQLite registry that does not
    exist yet is not created here (a check creates no registry): its folder only has to be writable."""
    from medscale.registry import Registry, RegistryError, default_url
    from medscale.registry.store import sqlite_path

    later = ("training does not need it: the run records itself in its output dir; `medscale jobs sync` restores "
             "the rows later")
    path = sqlite_path(default_url())
    if path is not None and not path.exists():
        if _unwritable(path.parent) is not None:
            report.warn("registry", f"{path} cannot be created ({_unwritable(path.parent)} is read-only) ({later})")
        else:
            report.info("registry", f"{path} (SQLite) will be created by the first run")
        return
    try:
        Registry(connect_timeout=3).close()
    except RegistryError as e:
        report.warn("registry", f"{e} ({later})")


def check(recipe: Recipe, *, devices: bool, paths_must_exist: bool = True, read_data: bool = True,
          registry: bool = True, tokenize: bool = False) -> Report:
    """Every check for running `recipe`; `devices`: this host is where it trains (GPUs, 4-bit, kernels);
    `paths_must_exist`: a missing model or data path is an error here (a Ray head may not see the workers' paths:
    then it is a warning and the workers check); `tokenize` (`medscale check`): also tokenize the data with the
    recipe's tokenizer when the model folder is fine, counting the records on the way (each file read once; read
    again to name every problem only when tokenizing failed). With `devices`, the report also carries what it
    decided (report.plan: the memory plan's decisions, and the data manifest when it tokenized)."""
    from medscale.jobs.runplan import source_counts
    from medscale.model.resolve import model_folder, model_source, shipped_config

    report = Report()
    folder = model_folder(recipe.model)  # looked up once: the adapter check and the RunPlan use it
    model_problem = model_dir_problem(recipe.model)
    shipped = shipped_config(recipe.model) if model_problem is not None and recipe.model.tiny is None else None
    if model_problem is not None:
        (report.error if paths_must_exist else report.warn)("model", model_problem)
        if shipped is not None:
            report.info("model", f"planned from the shipped shape of {shipped[0]} (no weights on disk): the adapter "
                                 f"and memory checks use it in place of its config.json")
    elif recipe.model.tiny is not None and not (Path(recipe.model.path) / "config.json").is_file():
        report.info("model", f"{recipe.model.path}: a tiny random Qwen3 ({recipe.model.tiny.layers} layers, hidden "
                             f"{recipe.model.tiny.hidden}), built there on first use")
    else:
        report.info("model", str(model_source(recipe.model)))
    if model_problem is None or shipped is not None:
        _adapter(recipe, report, folder)
    if (why := _output_dir_problem(Path(recipe.train.output_dir).expanduser())) is not None:
        report.error("output", why)
    for problem in recipe.track.tracker_problems():  # rank 0 logs on the host that trains
        (report.error if devices else report.warn)("track", problem)
    _trainer_args(recipe, report)
    _deepspeed(recipe, report, on_worker=devices)
    decision = None
    if devices:
        _devices(recipe, report)
        from medscale.plan import decide

        decision = decide(recipe)  # the memory plan, once, where this host's GPU is known
        for problem in decision.problems:
            report.error("memory", problem)
        report.info("batch", decision.batch_note)
    budget = decision.token_budget if decision is not None else recipe.pack_budget()
    built, failed = (_tokenized_data(recipe, budget) if tokenize and read_data and model_problem is None
                     else (None, None))
    _data(recipe, report, paths_must_exist, read_data, source_counts(built.stats) if built is not None else None)
    if read_data and (recipe.eval.benchmarks or recipe.eval.control):
        _eval(recipe, report)
    if built is not None:
        _tokens(recipe, report, built.stats)
    elif failed is not None and not any(f.topic == "data" for f in report.errors):  # else the data's own errors say why
        report.error("data", f"tokenizing with {recipe.model.path}: {failed}")
    if registry:
        _registry(report)
    if decision is not None:
        report.plan = _run_plan(recipe, decision, built, folder)
    return report


def _run_plan(recipe: Recipe, decision, built, folder: Path) -> "RunPlan":
    from medscale.jobs.runplan import DataManifest, MemoryPlan, RunPlan

    memory = MemoryPlan(gpu_mem_gb=decision.gpu_mem_gb, gpus=decision.gpus, recompute_layers=decision.recompute_layers,
                        token_budget=decision.token_budget, problems=decision.problems,
                        micro_batch=decision.micro_batch, accumulation=decision.accumulation,
                        batch_note=decision.batch_note,
                        components=decision.plan.to_dict() if decision.plan is not None else None)
    return RunPlan.decided_here(recipe, folder, memory,
                                DataManifest.of(recipe, built) if built is not None else None)


def check_launch(recipe: Recipe, *, devices: bool, paths_must_exist: bool = True) -> Report:
    """What a launcher's `prepare` records; its `submit` raises the errors before anything is spawned or queued
    (a `--dry-run` prints the plan and the problems instead). `devices`: the processes start on this host (the
    local launcher), so pre-flight decides for them too, once: the memory plan, and the data tokenized into the
    run's cache; the launcher writes report.plan into the job record for its workers (worker_plan)."""
    return check(recipe, devices=devices, paths_must_exist=paths_must_exist, tokenize=devices)


def check_eval_launch(spec, *, devices: bool, paths_must_exist: bool = True) -> Report:
    """An evaluation job's pre-flight (medscale.eval.spec.EvalSpec): its benchmarks load (bad input fails in
    seconds, before any model does), its models resolve, its folder can be written; the registry as for training.
    `devices` and `paths_must_exist` as in check_launch: the processes that score check their own host again."""
    from medscale.eval.bench import load_benchmark
    from medscale.eval.spec import as_eval_spec
    from medscale.jobs.resolve import resolve

    report, spec = Report(), as_eval_spec(spec)
    for ref in spec.benchmarks:
        try:
            load_benchmark(ref, spec.data_dir, spec.skip_bad, spec.max_bad, spec.dedupe)
        except UserError as e:
            report.error("eval", str(e))
    from medscale.model.infer import check_adapter_folder, check_base_folder

    for model, kw in ((spec.model, {"checkpoint": spec.checkpoint, "adapter": spec.adapter}), (spec.against, {})):
        if model and model != "base":
            try:
                found = resolve(model, **kw)
                check_base_folder(found.base)
                if found.adapter is not None:
                    check_adapter_folder(found.adapter)
                if spec.mode == "generate":  # the settings with the model's own generation_config.json
                    spec.sampling_settings(found.base)
            except UserError as e:
                (report.error if paths_must_exist else report.warn)("model", str(e))
    if (why := _output_dir_problem(Path(spec.train.output_dir))) is not None:
        report.error("output", why.replace("train.output_dir", "--out"))
    _registry(report)
    return report


def worker_plan(recipe: Recipe, launch: str | None) -> "RunPlan":
    """What a training process runs by: the RunPlan its launcher's pre-flight wrote for this launch (`launch`: its
    LaunchInfo.launched_at) on this host; else decided here, once, by this host's pre-flight (paths, devices,
    DeepSpeed layout and memory plan: all problems at once, before any work), its data manifest left for the run to
    fill in when it tokenizes."""
    from medscale.jobs.runplan import RunPlan

    found = RunPlan.load(recipe.train.output_dir)
    if found is not None and found.made_for(recipe.fingerprint(), launch):
        return found
    return check(recipe, devices=True, read_data=False, registry=False).raise_if_failed().plan
