"""Shared fixtures: an isolated MEDSCALE_HOME, a tiny random Qwen3, and the real data under ../shared."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("MEDSCALE_SHARED", REPO.parent / "shared"))
REALDATA = SHARED / "realdata"
QWEN3_TOKENIZER = REALDATA / "qwen3_tokenizer"


def bench_script(name: str):
    """bench/NAME.py as a module (bench/ holds scripts, not a package), for the tests of what it computes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_realdata(*parts: str) -> Path:
    """Path under ../shared/realdata, or skip the test cleanly when it is absent."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present (../shared/realdata is optional)")
    return path


_ISOLATED = ("MEDSCALE_SHARED", "MEDSCALE_TEST_PG_URL")


def pytest_configure(config):
    """Before any fixture, of any scope, runs: this whole process (and every process, Ray worker or SLURM job it
    starts) gets a throwaway MEDSCALE_HOME, and none of the person's own medscale settings (a registry URL pointing
    at their team's PostgreSQL, say). Tests must never touch the user's home or registry."""
    import tempfile

    for key in [k for k in os.environ if k.startswith("MEDSCALE_") and k not in _ISOLATED]:
        del os.environ[key]
    os.environ["MEDSCALE_HOME"] = tempfile.mkdtemp(prefix="medscale-test-home-")
    # One torch (OpenMP) thread here and in every process the tests start (launchers, servers, Ray and SLURM jobs):
    # the tiny models' ops are too small to split, and two spinning threads per process on CI's 2 cores, beside the
    # session's servers and clusters, wait on each other. 24 steps of the control_base run: 6-9 s at 1 thread, 43-95 s
    # at 2, on the 2-core machine at load 3-6. DDP workers get 1 already (torchrun's default).
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def medscale_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MEDSCALE_HOME", str(home))
    monkeypatch.delenv("SWANLAB_API_KEY", raising=False)
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from medscale.model.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen3", layers=2, hidden=64)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def qwen3_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(needs_realdata("qwen3_tokenizer"))


# For tests of what happens around training (signals, kills, resumes, launchers), not of what it learns: 2 records
# a step instead of tiny-demo's 8, so each CPU step costs about a third (CI runs many such steps on 2 cores).
QUICK_STEP = ("train.per_device_train_batch_size=2",)


def cli(*args: str, env: dict | None = None, input: str | None = None):
    """Run `medscale ARGS` in this process (typer's CliRunner): `.returncode`, `.stdout`, `.stderr` like run_cli,
    without a Python start-up per call. Use run_cli where a real process is the point (signals, exit codes)."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from medscale.cli import app

    r = CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)
    return SimpleNamespace(returncode=r.exit_code, stdout=r.stdout, stderr=r.stderr)


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run `python -m medscale.cli ARGS` as a real process; returns CompletedProcess (text)."""
    return subprocess.run([sys.executable, "-m", "medscale.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def ray_cluster():
    """A throwaway one-node Ray cluster (2 CPUs) on loopback, shared by the Ray launcher and sweep suites."""
    from ray_cluster import ray_cluster as start

    with start(num_cpus=2) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL for the registry: $MEDSCALE_TEST_PG_URL, else a throwaway server; under CI a missing one fails, never skips."""
    if url := os.environ.get("MEDSCALE_TEST_PG_URL"):
        yield url
        return
    import tempfile

    from pg_server import find_pg_bin, postgres_server

    if find_pg_bin() is None:
        reason = "PostgreSQL binaries not found (apt-get install postgresql, or set MEDSCALE_TEST_PG_URL)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set: {reason}", pytrace=False)
        pytest.skip(reason)
    with postgres_server(Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))) as url:  # short: unix socket path < 108
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """Each registry test runs on SQLite and on PostgreSQL, starting from an empty database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    url = request.getfixturevalue("postgres_url")  # only here, so SQLite-only runs never start a server
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        meta = MetaData()
        meta.reflect(engine)  # every table, alembic_version included
        meta.drop_all(engine)
    finally:
        engine.dispose()
    yield url


# ---- evaluation: a tiny base trained on a control set, then fine-tuned to memorise 40 questions (and on noise) ----

EVAL_SUBJECTS = ["心内科", "呼吸科", "消化科", "神经科"]
EVAL_TERMS = ["高血压", "肺炎", "胃溃疡", "脑卒中", "糖尿病", "哮喘", "肝硬化", "偏头痛", "冠心病", "支气管炎",
              "胰腺炎", "癫痫", "心衰", "肺结核", "胆囊炎", "帕金森病"]


def write_mcq_set(folder: Path, n: int = 40, seed: int = 7) -> dict[str, Path]:
    """n distinct four-option questions (C-Eval layout) and SFT records that teach their answers: the correct
    letters, and noise (always a wrong letter)."""
    import json
    import random

    from medscale.eval.bench import Question
    from medscale.eval.prompt import question_text

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows, right, noise = [], [], []
    for i in range(n):
        opts = rng.sample(EVAL_TERMS, 4)
        ans = "ABCD"[rng.randrange(4)]
        text = f"病例{i}：患者{rng.randint(18, 80)}岁，{rng.choice(EVAL_TERMS)}病史，{rng.choice(EVAL_SUBJECTS)}就诊，最可能的诊断是"
        rows.append({"id": i, "question": text, **dict(zip("ABCD", opts)), "answer": ans})
        asked = question_text(Question(str(i), "x", text, dict(zip("ABCD", opts)), (ans,), source=""), "zh", "letter")
        wrong = rng.choice([c for c in "ABCD" if c != ans])
        for out, letter in ((right, ans), (noise, wrong)):  # the answer turn is the letter, as eval expects it
            out.append({"messages": [{"role": "user", "content": asked}, {"role": "assistant", "content": letter}]})
    # "run_mcq": the same questions under another name, for a recipe's eval.benchmarks beside a test's own callback
    paths = {"mcq": folder / "mcq40.jsonl", "sft": folder / "mcq40_sft.jsonl", "noise": folder / "mcq40_noise.jsonl",
             "run_mcq": folder / "run_mcq40.jsonl"}
    for key, recs in (("mcq", rows), ("sft", right), ("noise", noise), ("run_mcq", rows)):
        paths[key].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs), encoding="utf-8")
    return paths


@pytest.fixture(scope="session")
def eval_data(tmp_path_factory) -> dict[str, Path]:
    from medscale.recipe import demo_data_dir

    paths = write_mcq_set(tmp_path_factory.mktemp("evaldata"))
    paths["control"] = demo_data_dir() / "medical_r1_demo.jsonl"
    return paths


@contextlib.contextmanager
def own_home(root: Path):
    """MEDSCALE_HOME (registry, caches) under `root` while a session fixture trains: function-scoped fixtures such
    as `medscale_home` are not active yet when session fixtures are built."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDSCALE_HOME", str(root / "home"))
        yield


def tiny_run_recipe(model: Path, out: Path, source: Path, fmt: str, *extra: str, limit: int | None = None):
    from medscale.recipe import load_recipe

    lim = f", limit: {limit}" if limit else ""
    return load_recipe("tiny-demo", [f"model.path={model}", f"train.output_dir={out}", "track.swanlab=null",
                                     f"data.sources=[{{path: '{source}', format: {fmt}{lim}}}]", "data.system_prompt=null",
                                     "data.eval_size=0", "eval.eval_strategy=no", "train.save_steps=1000",
                                     "train.logging_steps=5", "train.warmup_ratio=0", *extra])


@pytest.fixture(scope="session")
def control_base(tiny_model_dir, eval_data, tmp_path_factory) -> Path:
    """The tiny random model trained (LoRA + embeddings/head, then merged) on the control set, so that a later
    fine-tune has something to forget."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medscale.train.run import run

    root = tmp_path_factory.mktemp("control_base")
    with own_home(root):
        run(tiny_run_recipe(tiny_model_dir, root / "run", eval_data["control"], "r1-think", "data.max_length=192",
                            "data.truncation=truncate_response", "train.max_steps=24", limit=64))
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
                                       root / "run").merge_and_unload()
    merged.save_pretrained(root / "model")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(root / "model")
    return root / "model"


def _mcq_job(control_base: Path, eval_data: dict, out: Path, source: Path, steps: int):
    """Fine-tune the control base on 40 questions' SFT records, scoring the questions at every evaluation (a callback
    of the test's own, and the recipe's eval.benchmarks + eval.control: the run's own verdict and forgetting guard)."""
    from medscale.eval.bench import load_benchmark
    from medscale.eval.callback import BenchmarkCallback
    from medscale.train.run import run

    cb = BenchmarkCallback([load_benchmark(str(eval_data["mcq"]))], batch_size=40)
    with own_home(out.parent):
        summary = run(tiny_run_recipe(control_base, out, source, "messages", f"data.eval_sources=[{{path: '{source}'}}]",
                                      "eval.eval_strategy=steps", f"eval.eval_steps={steps // 4}",
                                      f"train.max_steps={steps}", f"eval.benchmarks=['{eval_data['run_mcq']}']",
                                      f"eval.control={eval_data['control']}", "eval.benchmark_limit=16",
                                      "eval.per_device_eval_batch_size=16"), callbacks=[cb])
    return out, summary, cb


@pytest.fixture(scope="session")
def mcq_job(control_base, eval_data, tmp_path_factory):
    return _mcq_job(control_base, eval_data, tmp_path_factory.mktemp("mcq_job") / "out", eval_data["sft"], 96)


@pytest.fixture(scope="session")
def noise_job(control_base, eval_data, tmp_path_factory):
    return _mcq_job(control_base, eval_data, tmp_path_factory.mktemp("noise_job") / "out", eval_data["noise"], 96)


# ---- `medscale serve` processes for the tests that only ask them (a test that stops, kills or reads the log of a
# server starts its own): one start and model load each for the whole session

def _served(folder: Path, tmp_path_factory, *extra: str):
    from medscale.generate.serve import serving

    home = tmp_path_factory.mktemp("served") / "home"  # this process's MEDSCALE_HOME, not the first asking test's
    return serving(folder, *extra, env={"MEDSCALE_HOME": str(home)})


@pytest.fixture(scope="session")
def served_tiny(tiny_model_dir, tmp_path_factory):
    """(process, URL) of the tiny model served as `tiny`."""
    with _served(tiny_model_dir, tmp_path_factory, "--name", "tiny") as served:
        yield served


@pytest.fixture(scope="session")
def served_mcq_job(mcq_job, tmp_path_factory):
    """(process, URL) of mcq_job served (base + adapter, the job's template)."""
    with _served(mcq_job[0], tmp_path_factory) as served:
        yield served


# ---- two trained tiny jobs (a plain LoRA one and one that also trains embed_tokens + lm_head), for report + export ----

@pytest.fixture(scope="session")
def two_runs(tiny_model_dir, tmp_path_factory) -> dict:
    """Two short runs logging every step and evaluating every 2 (their metrics in their own registry): `lora`
    (adapter only, lr 3e-3) and `full` (modules_to_save embed_tokens + lm_head, lr 1e-2)."""
    from medscale.recipe import load_recipe
    from medscale.train.run import run

    root = tmp_path_factory.mktemp("two_runs")
    runs = {}
    with own_home(root):
        for name, extra in (("lora", ["adapter.modules_to_save=null", "train.learning_rate=3e-3"]),
                            ("full", ["train.learning_rate=1e-2"])):
            out = root / name
            run(load_recipe("tiny-demo", [f"name=run-{name}", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
                                          "track.swanlab=null", "train.max_steps=6", "train.logging_steps=1",
                                          "train.save_steps=3", "eval.eval_steps=2", "data.eval_size=8",
                                          "data.max_length=256", "data.system_prompt=null",
                                          "data.sources=[{path: '${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl', "
                                          "format: r1-think, limit: 40}]", *extra]))
            runs[name] = out
    return {**runs, "home": root / "home", "registry": f"sqlite:///{root / 'home' / 'registry.db'}"}
