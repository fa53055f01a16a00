"""Every job kind travels one road (issue 21, deliverable 1): one JobKind enum, one `python -m medscale.jobs KIND`
entry (the old entries are its aliases), and `medscale eval` as a job: launcher -> attempt -> job record -> registry,
killed with SIGKILL and continued from the questions it had scored, rendered for SLURM by the launcher's own script.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys

import pytest

from conftest import REPO, cli, run_cli
from medscale.errors import UserError


def test_job_kinds_are_one_enum_and_the_entries_are_derived_from_it():
    from medscale.jobs.kinds import JobKind
    from medscale.jobs.launch import ENTRIES, entry_for

    assert [k.value for k in JobKind] == ["train", "eval", "trial", "judge", "serve"]
    assert list(ENTRIES) == ["train", "eval", "trial", "judge"]  # the kinds that have a road today
    assert {e.kind for e in ENTRIES.values()} == {JobKind.TRAIN, JobKind.EVAL, JobKind.TRIAL, JobKind.JUDGE}
    assert [entry_for(k).module for k in ("train", "eval", "trial", "judge")] == ["medscale.train", "medscale.eval",
                                                                                   "medscale.sweep", "medscale.judge"]
    with pytest.raises(UserError, match="serve"):
        entry_for("serve")


def test_the_one_entry_dispatches_on_the_kind_without_importing_torch_first():
    probe = ("import sys; import medscale.jobs.__main__ as m; from medscale.jobs.launch import entry_for; "
             "entry_for('eval'); print('torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "False", p.stderr
    p = subprocess.run([sys.executable, "-m", "medscale.jobs", "serve", "x"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert p.returncode == 2 and "serve" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    for alias in ("medscale.train", "medscale.eval", "medscale.sweep", "medscale.judge", "medscale.jobs"):
        p = subprocess.run([sys.executable, "-m", alias, "--help"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
        assert p.returncode == 0 and "python -m medscale.jobs" in p.stdout, (alias, p.stdout, p.stderr)


def _eval_args(model, bench, out, *extra):
    return ["eval", str(model), "--bench", str(bench), "--limit", "16", "--batch-size", "4", "--out", str(out),
            "--json", *extra]


def _outcomes(report: dict) -> list:
    (res,) = report["results"]
    return [(o["id"], o["chosen"], o["ok"]) for o in res["outcomes"]], (res["acc"], res["n"], res["correct"])


def _lines(path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_an_evaluation_killed_with_sigkill_continues_from_the_questions_it_scored(tiny_model_dir, eval_data,
                                                                                   tmp_path):
    out = tmp_path / "killed"
    killed = run_cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out),
                     env={"MEDSCALE_FAILPOINT": "eval_scored@8"})  # SIGKILL once 8 questions are kept
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    first = _lines(out / "scores.jsonl")
    assert first == 8 and not (out / "eval.json").exists()

    again = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out))
    assert again.returncode == 0, again.stdout + again.stderr
    resumed = json.loads(again.stdout)
    assert _lines(out / "scores.jsonl") == 16  # the rerun scored only the 8 questions the kill left
    assert any("8 of 16 questions scored by an earlier attempt" in n for n in resumed["results"][0]["notes"])

    whole = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], tmp_path / "whole"))
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert _outcomes(resumed) == _outcomes(json.loads(whole.stdout))
    assert _lines(tmp_path / "whole" / "scores.jsonl") == 16

    shown = cli("jobs", "show", str(out), "--json")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    job = json.loads(shown.stdout)
    assert job["kind"] == "eval" and job["status"] == "succeeded" and job["output_dir"] == str(out)
    assert [a["status"] for a in job["attempt_list"]] == ["lost", "completed"]


def test_an_evaluation_rerun_after_it_finished_scores_nothing_again(tiny_model_dir, eval_data, tmp_path):
    out = tmp_path / "twice"
    for _ in range(2):
        r = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert _lines(out / "scores.jsonl") == 16
    job = json.loads(cli("jobs", "show", str(out), "--json").stdout)
    assert [a["status"] for a in job["attempt_list"]] == ["completed", "completed"]


def test_eval_for_slurm_dry_run_renders_the_batch_script_whose_nodes_run_the_eval_entry(tiny_model_dir, eval_data,
                                                                                          tmp_path):
    out = tmp_path / "onslurm"
    r = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], out, "--launcher", "slurm", "--launch-opt",
                        "gpus_per_node=0", "--launch-opt", "partition=cpu", "--dry-run"))
    assert r.returncode == 0, r.stdout + r.stderr
    script = r.stdout
    assert script.startswith("#!/bin/bash") and "#SBATCH --partition=cpu" in script
    assert "export MEDSCALE_ENTRY=eval" in script
    # its header speaks of an evaluation: a stopped one continues with the questions it had not scored
    assert f'for eval job "{out / "eval_job.yaml"}"' in script and "the questions not yet scored" in script
    job_file = out / "eval_job.yaml"
    run_line = next(line for line in script.splitlines() if line.startswith("medscale_run "))
    assert shlex.split(run_line)[1:] == [str(job_file)]
    assert not (out / "medscale_job.json").exists()  # nothing ran, nothing was queued
    # what srun starts on each node (slurm/common.sh -> launcher.slurm node-run) runs the eval entry on that file
    p = subprocess.run([sys.executable, "-m", "launcher.slurm", "node-command", "--nodes", "1", "--machine-rank", "0",
                        "--main-ip", "n1", "--port", "1", "--entry", "eval", str(job_file)], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert shlex.split(p.stdout) == [sys.executable, "-m", "medscale.eval", str(job_file)]


def test_a_launch_option_the_launcher_does_not_take_is_one_line(tiny_model_dir, eval_data, tmp_path):
    r = cli(*_eval_args(tiny_model_dir, eval_data["mcq"], tmp_path / "x", "--launcher", "slurm", "--launch-opt",
                        "partishun=cpu", "--dry-run"))
    assert r.returncode == 2 and "partishun" in r.stderr and "partition" in r.stderr
    assert not (tmp_path / "x").exists()


def test_field_options_still_map_an_odd_layout_through_the_job(tiny_model_dir, tmp_path):
    bench = tmp_path / "odd.jsonl"
    bench.write_text("".join(json.dumps({"q": f"问题{i}", "opts": {"A": "甲", "B": "乙"}, "ans": "AB"[i % 2]},
                                        ensure_ascii=False) + "\n" for i in range(4)), encoding="utf-8")
    r = cli("eval", str(tiny_model_dir), "--bench", str(bench), "--question-field", "q", "--options-field", "opts",
            "--answer-field", "ans", "--out", str(tmp_path / "odd"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["results"][0]["n"] == 4


def test_an_evaluation_of_a_model_without_weights_is_one_line_and_writes_nothing(tiny_model_dir, eval_data,
                                                                                   tmp_path):
    import shutil

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_model_dir / "config.json", broken)
    r = cli(*_eval_args(broken, eval_data["mcq"], tmp_path / "out"))
    assert r.returncode == 2 and "has no weights" in r.stderr and str(broken) in r.stderr
    assert not (tmp_path / "out").exists()
