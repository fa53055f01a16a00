"""Say what was chosen, and what happened: `medscale check` before a run (tokenized data, truncation, every problem
at once), the end-of-run report, the progress bar, `data stats/inspect`, Ctrl-C (issue 14)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import warnings

import pytest

from conftest import cli
from medscale.errors import EXIT_CANCELLED
from medscale.jobs.checkpoint import latest_verified
from medscale.recipe import demo_data_dir

DEMO = str(demo_data_dir() / "medical_r1_demo.jsonl")
SHORT = 250  # tokens: about a tenth of the demo records are longer (up to ~290 with the demo tokenizer)


def _over(tiny_model_dir, max_len: int) -> int:
    """Records of the demo file longer than max_len, counted by `data stats` (its own code path; no system prompt,
    so the recipes below set data.system_prompt=null)."""
    r = cli("data", "stats", DEMO, "--tokenizer", str(tiny_model_dir), "--max-len", str(max_len), "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["over_max_len"]


# --------------------------------------------------------------------------- medscale check

def test_check_tokenizes_and_says_how_many_records_truncation_drops_and_which_key_changes_it(
        tiny_model_dir, tmp_path, medscale_home):
    over = _over(tiny_model_dir, SHORT)
    assert over > 0
    r = cli("check", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}/run",
            f"data.max_length={SHORT}", "data.system_prompt=null",
            env={"MEDSCALE_REGISTRY_URL": "postgresql+psycopg://medscale:secret@127.0.0.1:9/nowhere"})
    assert r.returncode == 0, r.stdout + r.stderr  # a registry that cannot be reached is a warning, never a failure
    dropped = [int(m.group(1)) for m in re.finditer(r"! tokens +\w+: (\d+) of \d+ records \(\d+%\) dropped", r.stderr)]
    assert sum(dropped) == over  # train + eval together: every record over the limit, counted once
    assert f"data.max_length ({SHORT} tokens, data.truncation=drop)" in r.stderr
    assert "set data.truncation=truncate_response" in r.stderr
    assert re.search(r"^! registry .*unreachable.*training does not need it", r.stderr, re.M)
    assert "secret" not in r.stdout + r.stderr
    assert "· tokens    train:" in r.stdout and "(r1-think)" in r.stdout
    assert r.stdout.rstrip().endswith("medscale check tiny-demo: ok")
    assert not (tmp_path / "run").exists() and not (medscale_home / "registry.db").exists()  # a check writes nothing


def test_check_lists_every_problem_at_once_and_the_zero3_line_of_the_readme_is_not_one(tmp_path, medscale_home):
    """README's `medscale train qwen3-8b-lora-huatuo dist.deepspeed=zero3`: on a machine without the model and the
    data those are the only problems (the recipe no longer pins a DDP accelerate config against ZeRO-3)."""
    env = {"MEDSCALE_MODELS": str(tmp_path / "models"), "MEDSCALE_DATA": str(tmp_path / "data")}
    r = cli("check", "qwen3-8b-lora-huatuo", "dist.deepspeed=zero3", env=env)
    assert r.returncode == 2
    problems = [ln for ln in r.stderr.splitlines() if ln.startswith("✗")]
    assert [p.split()[1] for p in problems] == ["model", "data"], r.stderr
    assert "download Qwen/Qwen3-8B" in problems[0] and "HuatuoGPT-sft-data-v1.jsonl" in problems[1]
    assert "2 problem(s)" in r.stdout


def test_the_zero3_override_picks_the_zero3_accelerate_config(monkeypatch):
    import torch

    from launcher.local import accelerate_command
    from medscale.recipe import load_recipe

    ov = ["dist.deepspeed=zero3"]
    for cuda, config in ((True, "zero3_4gpu"), (False, "cpu_deepspeed")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        cmd = accelerate_command(load_recipe("qwen3-8b-lora-huatuo", ov), "qwen3-8b-lora-huatuo", ov)
        assert cmd[cmd.index("--config_file") + 1].endswith(f"{config}.yaml")
        assert cmd[cmd.index("--num_processes") + 1] == "4"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plain = accelerate_command(load_recipe("qwen3-8b-lora-huatuo"), "qwen3-8b-lora-huatuo", [])
    assert plain[plain.index("--config_file") + 1].endswith("ddp_4gpu.yaml")  # README: 4 processes, ddp_4gpu


# --------------------------------------------------------------------------- a run: report, progress bar, warnings

def test_a_run_reports_dropped_records_shows_tokens_per_second_and_no_deprecation_noise(tiny_model_dir, tmp_path):
    over = _over(tiny_model_dir, SHORT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = cli("train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path}/run",
                "train.max_steps=3", "eval.eval_strategy=no", "track.swanlab=null", "data.eval_size=0",
                f"data.max_length={SHORT}", "data.system_prompt=null")
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("data "))
    assert f"train: {over} of 200 records" in line and "dropped" in line and "data.max_length" in line
    assert re.search(r"3/3 \[[^\]]*, *[\d,]+ tok/s\]", r.stderr), r.stderr[-2000:]  # on the progress bar
    future = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert not future, future
    assert "tokenizing:" not in r.stderr and "Filter:" not in r.stderr  # 200 records: no datasets progress bars


# --------------------------------------------------------------------------- data stats / inspect

def test_data_commands_name_the_tokenizer_and_format_and_warn_about_the_toy_tokenizer(tiny_model_dir, tmp_path):
    real = tmp_path / "qa.jsonl"
    real.write_text(json.dumps({"question": "发热怎么办？", "answer": "多喝水，必要时就医。"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    r = cli("data", "stats", str(real), "--json")
    s = json.loads(r.stdout)
    assert r.returncode == 0 and s["format"] == "r1-think (detected)" and s["tokenizer"].startswith("demo")
    assert "warning: no --tokenizer" in r.stderr and "toy demo tokenizer" in r.stderr
    r = cli("data", "stats", DEMO, "--format", "r1-think")
    assert r.returncode == 0 and "warning" not in r.stderr  # the demo data is what the toy tokenizer is for
    assert re.search(r"^format +r1-think$", r.stdout, re.M) and re.search(r"^tokenizer +demo", r.stdout, re.M)
    r = cli("data", "inspect", str(real), "--tokenizer", str(tiny_model_dir), "--n", "1")
    assert r.returncode == 0 and "warning" not in r.stderr
    assert r.stdout.splitlines()[0].startswith(f"{real}: format r1-think (detected), tokenizer {tiny_model_dir} (")


# --------------------------------------------------------------------------- commands that must stay light

def test_jobs_list_imports_neither_alembic_nor_torch(tmp_path):
    env = {**os.environ, "MEDSCALE_HOME": str(tmp_path / "home")}
    subprocess.run([sys.executable, "-c", "from medscale.registry import Registry; Registry().close()"], env=env,
                   check=True)  # a registry at head: the state of every machine after its first run
    probe = ("import sys, atexit; atexit.register(lambda: print('LOADED', [m for m in ('alembic', 'torch', "
             "'transformers') if m in sys.modules])); sys.argv = ['medscale', 'jobs', 'list']; "
             "from medscale.cli import main; main()")
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "LOADED []" in p.stdout, p.stdout


# --------------------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_saves_and_says_which_checkpoint_the_next_run_resumes_from(tiny_model_dir, tmp_path):
    from test_lifecycle import _args, _start, _training, _wait_for

    out = tmp_path / "run"
    proc = _start("train", *_args(tiny_model_dir, out, "train.max_steps=200", "train.save_steps=1000"),
                  env={"MEDSCALE_HEARTBEAT_S": "0.2"})
    _wait_for(_training(2), proc, what="training to reach step 2")
    proc.send_signal(signal.SIGINT)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode == EXIT_CANCELLED, log[-3000:]
    ckpt = latest_verified(out)
    assert ckpt is not None
    assert "interrupted: saving a checkpoint at the next step" in log
    (line,) = [ln for ln in log.splitlines() if ln.startswith("medscale: cancelled")]
    assert f"saved {ckpt};" in line and "resumes from it" in line and "medscale jobs resume" in line
