"""Every mistake a newcomer makes ends in one line naming the thing and the fix, exit 2, nothing written (issue 14).

The CLI runs in-process (typer's CliRunner); a real process only where a signal or a spawned process is the point.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import cli
from medscale.jobs.checkpoint import MANIFEST, checkpoint_dirs, problem
from medscale.jobs.record import read_journal
from medscale.recipe import demo_data_dir

DEMO = str(demo_data_dir() / "medical_r1_demo.jsonl")


def _one_error(r, *needles: str) -> str:
    """Exit 2 and exactly one `medscale: error:` line (no traceback), containing every needle."""
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [ln for ln in re.split(r"[\r\n]", r.stderr) if ln.startswith("medscale:")]
    assert len(lines) == 1 and lines[0].startswith("medscale: error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _train(model, out, *extra):
    return cli("train", "tiny-demo", f"model.path={model}", f"train.output_dir={out}", "eval.eval_strategy=no",
               "track.swanlab=null", *extra)


def _nothing_written(home: Path, *paths: Path) -> None:
    assert not (home / "registry.db").exists() and not (home / "runs").exists()
    for p in paths:
        assert not p.exists(), p


# --------------------------------------------------------------------------- the output dir

def test_an_output_dir_that_is_a_file(tmp_path, tiny_model_dir, medscale_home):
    f = tmp_path / "afile"
    f.write_text("mine")
    _one_error(_train(tiny_model_dir, f), f"train.output_dir: {f} is a file")
    _one_error(_train(tiny_model_dir, f / "run"), f"{f} is a file, not a folder")
    assert f.read_text() == "mine"
    _nothing_written(medscale_home)


@contextlib.contextmanager
def _read_only_dir(tmp_path: Path):
    """A folder this user cannot write: chmod for a normal user; root writes through permissions, so for root a
    read-only file system (tmpfs mounted ro), skipped where mounting is not allowed."""
    d = tmp_path / "ro"
    d.mkdir()
    if os.geteuid() != 0:
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("running as root and cannot mount a read-only file system here")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


def test_a_read_only_output_dir(tmp_path, tiny_model_dir, medscale_home):
    with _read_only_dir(tmp_path) as ro:
        _one_error(_train(tiny_model_dir, ro / "run"), f"train.output_dir: {ro / 'run'} cannot be written",
                   "read-only")
        assert not list(ro.iterdir())
    _nothing_written(medscale_home)


# --------------------------------------------------------------------------- a full disk during a save

@pytest.mark.parametrize("where", ["checkpoint-2", ".final-save"])
def test_disk_full_during_a_save_fails_the_attempt_with_the_reason_and_leaves_nothing_torn(
        tmp_path, tiny_model_dir, monkeypatch, where):
    """A save runs out of space half-way through the adapter file (safetensors reports it as a SafetensorError, as
    it does on a real full disk), in a checkpoint or in the final save: one line, exit 2, the attempt `failed` with
    the reason, no half-written checkpoint or final adapter, the verified checkpoints untouched, no temp files."""
    import peft.peft_model
    from safetensors import SafetensorError

    real_save = peft.peft_model.safe_save_file

    def save(tensors, filename, *a, **kw):
        if where in str(filename):
            Path(filename).write_bytes(b"\0" * 1000)  # what a write that ran out of space leaves
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, filename, *a, **kw)

    monkeypatch.setattr(peft.peft_model, "safe_save_file", save)
    out = tmp_path / "run"
    r = _train(tiny_model_dir, out, "train.max_steps=2", "train.save_steps=1", "train.save_total_limit=null")
    _one_error(r, "no space left on device", str(out))
    (attempt,) = read_journal(out).attempts
    assert attempt.status == "failed" and "no space left on device" in attempt.exit_reason
    verified = [1] if where.startswith("checkpoint") else [1, 2]
    assert [step for step, _ in checkpoint_dirs(out)] == verified
    assert all((out / f"checkpoint-{s}" / MANIFEST).is_file() and problem(out / f"checkpoint-{s}") is None
               for s in verified)
    assert not [p for p in out.rglob(".*")], "temp files left behind"
    assert not (out / "adapter_model.safetensors").exists()


def test_a_full_disk_is_recognised_from_what_libraries_raise(tmp_path, monkeypatch):
    from medscale.errors import DISK_NEARLY_FULL, as_disk_full

    assert as_disk_full(RuntimeError("shape mismatch"), tmp_path) is None  # an unrelated error, a disk with room
    wrapped = RuntimeError("unexpected pos 704 vs 598")
    wrapped.__context__ = RuntimeError("basic_ios::clear: iostream error")  # torch.save on a full disk
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda _p: shutil._ntuple_diskusage(10**9, 10**9, DISK_NEARLY_FULL - 1))
    got = as_disk_full(wrapped, tmp_path)
    assert got.errno == errno.ENOSPC and got.filename == str(tmp_path)
    assert as_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded", "f"), tmp_path).errno == errno.EDQUOT


# --------------------------------------------------------------------------- data commands

@pytest.mark.parametrize("command", ["stats", "inspect"])
def test_a_tokenizer_path_that_does_not_exist(tmp_path, command):
    _one_error(cli("data", command, DEMO, "--tokenizer", str(tmp_path / "nope")),
               f"--tokenizer {tmp_path / 'nope'}: no such folder")
    _one_error(cli("data", command, DEMO, "--tokenizer", str(tmp_path)), "has no tokenizer files")


@pytest.mark.parametrize("option, example", [("--max-len", "2048"), ("--batch-size", "4")])
def test_stats_refuses_zero_lengths_and_batches(option, example):
    _one_error(cli("data", "stats", DEMO, option, "0"), f"{option} must be at least 1, got 0", example)


def _mixed(tmp_path) -> Path:
    p = tmp_path / "mixed.jsonl"
    p.write_text(json.dumps({"conversations": [{"from": "human", "value": "头痛怎么办"},
                                               {"from": "gpt", "value": "休息"}]}, ensure_ascii=False) + "\n"
                 + json.dumps({"instruction": "咳嗽怎么办", "output": "多喝水"}, ensure_ascii=False) + "\n",
                 encoding="utf-8")
    return p


def test_a_mixed_format_file_names_file_and_line_at_training_time(tmp_path, tiny_model_dir, medscale_home):
    """The recipe adds a system prompt (tiny-demo does), which once turned this into an IndexError."""
    p, out = _mixed(tmp_path), tmp_path / "run"
    line = _one_error(_train(tiny_model_dir, out, f"data.sources=[{{path: {p}}}]", "data.eval_size=0"),
                      f"{p}:2: bad sharegpt record", "looks like alpaca", "detected as sharegpt from line 1")
    assert line == _one_error(cli("data", "stats", str(p), "--tokenizer", str(tiny_model_dir)))  # as `data stats`
    _nothing_written(medscale_home, out)


# --------------------------------------------------------------------------- pre-flight before any process

def test_a_multi_process_recipe_without_its_model_fails_once_before_spawning(tmp_path, monkeypatch, medscale_home):
    """qwen3-8b-lora-huatuo (4 processes) on a machine without the model: every problem once, in pre-flight, and
    not one process started (it used to start 4 that each printed the same error)."""
    spawned = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **kw: spawned.append(a) or pytest.fail("spawned a process"))
    r = cli("train", "qwen3-8b-lora-huatuo", env={"MEDSCALE_MODELS": str(tmp_path / "models"),
                                                  "MEDSCALE_DATA": str(tmp_path / "data")})
    assert r.returncode == 2 and not spawned
    assert r.stderr.count("model.path:") == 1 and r.stderr.count("download Qwen/Qwen3-8B") == 1
    assert r.stderr.count("HuatuoGPT-sft-data-v1.jsonl: no data files found") == 1
    assert "Traceback" not in r.stderr
    _nothing_written(medscale_home)
