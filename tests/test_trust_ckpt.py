"""Nothing a user owns is deleted, nothing restarts or loops silently (issue 20, items 16, 21, 24): checkpoints whose
manifest was lost are set aside, never deleted; a job with nothing left to resume needs --restart; a checkpoint with
NaN weights behind a good manifest names the one to go back to (--checkpoint N); temporary folders a killed final
save or export left are removed by the next run and by `jobs gc`, never while their process lives.

Each test damages a copy of the shared trained job `two_runs["lora"]` (6 steps, checkpoints at 3 and 6)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import cli
from medscale.jobs.checkpoint import (MANIFEST, damaged_dirs, load_manifest, remove_torn_saves, retention_plan,
                                      write_manifest)
from medscale.jobs.leftovers import FINAL_SAVE, LOCK, owned_temp_beside


@pytest.fixture
def job(two_runs, tmp_path) -> Path:
    """A copy of the trained job (relocatable: the output dir is a resume-safe key) and its recipe beside it."""
    out = Path(shutil.copytree(two_runs["lora"], tmp_path / "job"))
    shutil.copy(out / "recipe.resolved.yaml", tmp_path / "recipe.yaml")
    return out


def train(job: Path, *extra: str):
    return cli("train", str(job.parent / "recipe.yaml"), f"train.output_dir={job}", *extra)


def last_line(r) -> str:
    return r.stderr.strip().splitlines()[-1]


def test_checkpoints_whose_manifest_is_gone_are_set_aside_and_a_restart_must_be_asked_for(job):
    """Defect: with every manifest removed, the rerun deleted every checkpoint the record lists as verified, then said
    "nothing was deleted". They are set aside with their files, the refusal names them, and --restart starts over."""
    files = {p.relative_to(job) for p in job.glob("checkpoint-*/**/*") if p.is_file() and p.name != MANIFEST}
    for manifest in job.glob(f"checkpoint-*/{MANIFEST}"):
        manifest.unlink()
    r = train(job, "train.max_steps=8")
    assert r.returncode == 2, r.stderr
    err = last_line(r)
    assert "steps 3, 6" in err and "nothing was deleted" in err and "--restart" in err, err
    aside = damaged_dirs(job)
    assert [p.name for p in aside] == ["checkpoint-3.damaged", "checkpoint-6.damaged"]
    assert all(str(p) in err for p in aside), err
    kept = {Path(str(p.relative_to(job)).replace(".damaged", "")) for p in job.glob("checkpoint-*/**/*")
            if p.is_file()}
    assert kept == files, "every file of every checkpoint is still there"

    r = train(job, "train.max_steps=8", "--restart")
    assert r.returncode == 0, r.stderr
    assert json.loads((job / "run_summary.json").read_text())["resumed_from"] is None
    assert [p.name for p in damaged_dirs(job)] == ["checkpoint-3.damaged", "checkpoint-6.damaged"]


def test_a_deleted_job_record_and_damaged_checkpoints_never_restart_from_zero_silently(job):
    """Defect: with medscale_job.json deleted and every checkpoint damaged, the run silently started from step 0."""
    (job / "medscale_job.json").unlink()
    (job / "checkpoint-3" / MANIFEST).unlink()
    adapter = job / "checkpoint-6" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-1] + b"!")
    r = train(job, "train.max_steps=8")
    assert r.returncode == 2, r.stderr
    err = last_line(r)
    assert "no job record" in err and "--restart" in err and "nothing was deleted" in err, err
    assert [p.name for p in damaged_dirs(job)] == ["checkpoint-3.damaged", "checkpoint-6.damaged"]
    assert not (job / "checkpoint-8").exists()


def test_retention_and_failure_clean_up_never_delete_a_checkpoint_the_record_calls_verified(job):
    """Defect: a checkpoint older than the newest verified one, without a manifest, was deleted by retention as a
    torn save even though the job record lists its step as verified; likewise the clean-up after a failed attempt."""
    (job / "checkpoint-3" / MANIFEST).unlink()
    assert retention_plan(job, keep_last=1, keep_best=False) == []
    (job / "checkpoint-6" / MANIFEST).write_text("{torn")
    assert remove_torn_saves(job) == []
    assert [p.name for p in damaged_dirs(job)] == ["checkpoint-3.damaged", "checkpoint-6.damaged"]


def test_nan_weights_behind_a_good_manifest_name_the_checkpoint_to_go_back_to(job):
    """Defect: NaN weights in the newest checkpoint (its manifest rewritten over them) ended "run again: it resumes
    from the newest verified checkpoint", the same one: a loop. The error names it and `--checkpoint 3`, which
    resumes from checkpoint-3 and sets the NaN one aside."""
    import torch
    from safetensors.torch import load_file, save_file

    ckpt = job / "checkpoint-6"
    weights = load_file(str(ckpt / "adapter_model.safetensors"))
    weights = {k: torch.full_like(v, float("nan")) if "lora_A" in k else v for k, v in weights.items()}
    save_file(weights, str(ckpt / "adapter_model.safetensors"), metadata={"format": "pt"})
    meta = {k: v for k, v in load_manifest(ckpt).items() if k not in ("files", "size_bytes", "format", "step")}
    (ckpt / MANIFEST).unlink()
    write_manifest(ckpt, 6, meta)

    r = train(job, "train.max_steps=8")
    assert r.returncode == 1, r.stderr
    assert "NaN/inf at step 7" in r.stderr and str(ckpt) in r.stderr and "--checkpoint 3" in r.stderr, r.stderr

    for bad in ("5", "99"):
        r = train(job, "train.max_steps=8", "--checkpoint", bad)
        assert r.returncode == 2 and "verified steps" in last_line(r) and "3, 6" in last_line(r), r.stderr
    assert not damaged_dirs(job), "a refused --checkpoint sets nothing aside"

    r = train(job, "train.max_steps=8", "--checkpoint", "3")
    assert r.returncode == 0, r.stderr
    summary = json.loads((job / "run_summary.json").read_text())
    assert summary["global_step"] == 8 and summary["resumed_from"] == str(job / "checkpoint-3")
    [aside] = damaged_dirs(job)
    assert aside.name == "checkpoint-6.damaged" and load_file(str(aside / "adapter_model.safetensors")) is not None
    assert torch.isfinite(load_file(str(job / "checkpoint-6" / "adapter_model.safetensors"))[next(
        k for k in weights if "lora_A" in k)]).all()


def _killed(folder: Path) -> Path:
    """What a process killed while writing `folder` leaves: the folder with a partial file, and its free lock."""
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"partial")
    folder.with_name(folder.name + LOCK).touch()
    return folder


def test_a_final_save_a_kill_left_behind_is_removed_by_the_next_run(job, caplog):
    """Defect: `.final-save/` after a kill during the final save stayed for good."""
    staging = _killed(job / FINAL_SAVE)
    r = train(job, "train.max_steps=6")  # the job finished: this run only looks, then says so
    assert r.returncode == 0, r.stderr
    assert not staging.exists() and not staging.with_name(staging.name + LOCK).exists()
    assert f"removed {staging}, left by a process that was killed" in caplog.text


def test_jobs_gc_lists_and_removes_what_killed_runs_left_but_never_a_live_ones(job):
    """Defect: `.<dest>.tmp-*` after every killed export (gigabytes for a merge) and `.final-save/` were never
    cleaned. `jobs gc` lists them (--dry-run), removes them, and leaves a temporary folder whose process lives."""
    staging = _killed(job / FINAL_SAVE)
    killed = _killed(job / "exports" / ".checkpoint-6-merged.tmp-k1ll3d")
    lockless = job / "exports" / ".final-merged.tmp-0ld"  # left by a medscale that predates the lock
    lockless.mkdir()
    assert cli("jobs", "sync", str(job)).returncode == 0
    with owned_temp_beside(job / "exports" / "final-merged") as live:
        (live / "model.safetensors").write_bytes(b"being written")
        dry = cli("jobs", "gc", "run-lora", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        [r] = json.loads(dry.stdout)
        assert sorted(r["leftovers"]) == sorted(map(str, [staging, killed, lockless]))
        assert staging.exists() and killed.exists()
        r = cli("jobs", "gc", "run-lora")
        assert r.returncode == 0, r.stderr
        assert f"removed {killed}" in r.stdout and f"removed {staging}" in r.stdout
        assert not staging.exists() and not killed.exists() and not lockless.exists()
        assert (live / "model.safetensors").read_bytes() == b"being written", "a live export keeps its folder"
    assert not live.exists() and not live.with_name(live.name + LOCK).exists()
    assert sorted(p.name for p in job.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]


def test_an_export_removes_what_a_killed_export_to_the_same_place_left(job, tmp_path):
    dest = tmp_path / "exports" / "adapter"
    killed = _killed(dest.with_name(f".{dest.name}.tmp-k1ll3d"))
    other = _killed(dest.with_name(".other.tmp-k1ll3d"))  # another destination's: not this export's to judge
    r = cli("export", str(job), "--adapter-only", "--out", str(dest), "--prompts", "1", "--new-tokens", "2")
    assert r.returncode == 0, r.stderr
    assert not killed.exists() and other.exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == sorted([".other.tmp-k1ll3d", ".other.tmp-k1ll3d" + LOCK,
                                                                    "adapter"])

