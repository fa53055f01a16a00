"""The verified-checkpoint protocol (DESIGN.md "Checkpoint protocol"): pure filesystem, small fake checkpoints."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import medscale.jobs.checkpoint as ck
from medscale.jobs.checkpoint import (MANIFEST, checkpoint_dirs, clear_newer_than, damaged_dirs, delete_checkpoint,
                                      failpoint, latest_verified, read_manifest, retention_plan, write_manifest)
from medscale.jobs.errors import CheckpointError
from medscale.jobs.record import write_json_atomic
from medscale.jobs.resume import resolve_resume


def discard_newer_unverified(out, start):
    """What a start clears above its resume point: removed (torn) + set aside (damaged), as their old names."""
    removed, aside = clear_newer_than(out, start)
    return removed + [p.with_name(p.name.split(ck.DAMAGED)[0]) for p in aside]

REPO = Path(__file__).resolve().parent.parent


def make_ckpt(out: Path, step: int, *, verified: bool = True, eval_loss: float | None = None,
              big: bytes = b"W" * 256) -> Path:
    """A fake `checkpoint-N/`: a few small files, one in a subfolder (like DeepSpeed's global_stepN/)."""
    ckpt = out / f"checkpoint-{step}"
    (ckpt / f"global_step{step}").mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (ckpt / "adapter_model.safetensors").write_bytes(big)
    (ckpt / f"global_step{step}" / "rng_state_0.pth").write_bytes(bytes(range(64)))
    if verified:
        metrics = {"loss": 1.0 / (step + 1)}
        if eval_loss is not None:
            metrics["eval_loss"] = eval_loss
        write_manifest(ckpt, step, {"job": "demo", "attempt": 1, "metrics": metrics})
    return ckpt


def names(paths) -> list[str]:
    return sorted(Path(p).name for p in paths)


# ---------------------------------------------------------------------------------------- manifest


def test_write_then_read_manifest_records_sizes_and_hashes(tmp_path):
    ckpt = make_ckpt(tmp_path, 10, verified=False)
    manifest = write_manifest(ckpt, 10, {"job": "demo", "metrics": {"loss": 0.5}})
    assert manifest["step"] == 10 and manifest["format"] == ck.MANIFEST_FORMAT
    assert manifest["job"] == "demo" and manifest["metrics"] == {"loss": 0.5}
    files = manifest["files"]
    assert set(files) == {"trainer_state.json", "adapter_model.safetensors", "global_step10/rng_state_0.pth"}
    assert files["adapter_model.safetensors"]["size"] == 256
    assert files["global_step10/rng_state_0.pth"]["size"] == 64
    for rel, f in files.items():
        assert f["size"] == (ckpt / rel).stat().st_size
        assert isinstance(f["sha256"], str) and len(f["sha256"]) == 64
    assert manifest["size_bytes"] == sum(f["size"] for f in files.values())

    on_disk = json.loads((ckpt / MANIFEST).read_text())
    assert on_disk == manifest
    assert read_manifest(ckpt) == manifest
    # no temp files left behind, neither in the checkpoint nor beside it
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(["trainer_state.json", "adapter_model.safetensors",
                                                             "global_step10", MANIFEST])
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-10"]


def test_rewriting_a_manifest_does_not_list_the_manifest_itself(tmp_path):
    ckpt = make_ckpt(tmp_path, 3)
    again = write_manifest(ckpt, 3, {})
    assert MANIFEST not in again["files"] and not any(k.startswith(".") for k in again["files"])
    assert read_manifest(ckpt) == again


def test_every_file_is_checksummed_even_a_large_one(tmp_path):
    """Defect: files over 64 MB (an 8B adapter's optimizer state) were checked by size only, so a same-size
    corruption of optimizer.pt was resumed and trained to NaN. Every file is hashed now."""
    ckpt = make_ckpt(tmp_path, 5, big=b"A" * (65 * 2**20))
    manifest = read_manifest(ckpt)
    assert all(f["sha256"] for f in manifest["files"].values())
    with open(ckpt / "adapter_model.safetensors", "r+b") as f:  # same size, one byte changed deep inside
        f.seek(40 * 2**20)
        f.write(b"B")
    assert read_manifest(ckpt) is None


def test_a_manifest_step_that_disagrees_with_the_folder_or_trainer_state_is_not_verified(tmp_path):
    """Defect: a manifest's step was trusted without a cross-check."""
    c10 = make_ckpt(tmp_path, 10)
    wrong = make_ckpt(tmp_path, 20, verified=False)
    write_manifest(wrong, 30, {})  # the manifest claims step 30 in checkpoint-20
    assert "name says 20" in ck.problem(wrong)
    lying = make_ckpt(tmp_path, 40, verified=False)
    (lying / "trainer_state.json").write_text(json.dumps({"global_step": 39}))
    write_manifest(lying, 40, {})
    assert "trainer_state.json says 39" in ck.problem(lying)
    assert latest_verified(tmp_path) == c10


def test_an_old_manifest_without_checksums_for_big_files_still_verifies_by_size(tmp_path, caplog):
    """medscale 0.1 wrote sha256 null for files over 64 MB; such a checkpoint stays resumable (warned)."""
    ckpt = make_ckpt(tmp_path, 5)
    m = json.loads((ckpt / MANIFEST).read_text())
    m["format"], m["files"]["adapter_model.safetensors"]["sha256"] = 1, None
    (ckpt / MANIFEST).write_text(json.dumps(m))
    assert read_manifest(ckpt) is not None and "by size only" in caplog.text


def test_truncated_file_after_manifest_is_not_verified(tmp_path):
    ckpt = make_ckpt(tmp_path, 10)
    with open(ckpt / "adapter_model.safetensors", "r+b") as f:
        f.truncate(100)
    assert read_manifest(ckpt) is None
    assert read_manifest(ckpt, check_hashes=False) is None  # the size check does not depend on hashes


def test_missing_file_after_manifest_is_not_verified(tmp_path):
    ckpt = make_ckpt(tmp_path, 10)
    (ckpt / "global_step10" / "rng_state_0.pth").unlink()
    assert read_manifest(ckpt) is None


def test_altered_hashed_file_same_size_fails_hash_check_only(tmp_path):
    ckpt = make_ckpt(tmp_path, 10)
    data = (ckpt / "adapter_model.safetensors").read_bytes()
    (ckpt / "adapter_model.safetensors").write_bytes(b"X" + data[1:])
    assert len(data) == (ckpt / "adapter_model.safetensors").stat().st_size
    assert read_manifest(ckpt) is None
    assert read_manifest(ckpt, check_hashes=False) is not None


@pytest.mark.parametrize("content", ["{not json", "", '{"format": 99, "files": {"a": {"size": 1}}}',
                                     '{"format": 1, "files": {}}', "\x00\x01garbage"])
def test_garbage_or_foreign_manifest_is_not_verified(tmp_path, content):
    ckpt = make_ckpt(tmp_path, 10)
    (ckpt / MANIFEST).write_text(content)
    assert read_manifest(ckpt) is None


def test_no_manifest_is_not_verified(tmp_path):
    assert read_manifest(make_ckpt(tmp_path, 10, verified=False)) is None
    assert read_manifest(tmp_path / "checkpoint-99") is None  # not even a folder


def test_write_json_atomic_replaces_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "state.json"
    write_json_atomic(target, {"a": 1, "text": "α"})
    write_json_atomic(target, {"b": 2})
    assert json.loads(target.read_text(encoding="utf-8")) == {"b": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# ---------------------------------------------------------------------------------------- discovery / resume


def test_checkpoint_dirs_sorted_numerically_and_filtered(tmp_path):
    for step in (100, 20, 3):
        make_ckpt(tmp_path, step, verified=False)
    (tmp_path / "checkpoint-abc").mkdir()
    (tmp_path / "checkpoint-7.tmp").mkdir()
    (tmp_path / "checkpoint-8").write_text("a file, not a folder")
    (tmp_path / "runs").mkdir()
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [3, 20, 100]  # numeric, not lexical
    assert checkpoint_dirs(tmp_path / "missing") == []


def test_latest_verified_skips_torn_and_damaged(tmp_path):
    assert latest_verified(tmp_path) is None
    assert latest_verified(tmp_path / "missing") is None
    make_ckpt(tmp_path, 10)
    c20 = make_ckpt(tmp_path, 20)
    assert latest_verified(tmp_path) == c20
    make_ckpt(tmp_path, 30, verified=False)  # crash mid-save: no manifest
    assert latest_verified(tmp_path) == c20
    c40 = make_ckpt(tmp_path, 40)
    assert latest_verified(tmp_path) == c40
    (c40 / "trainer_state.json").write_text("{}")  # damaged after the fact
    assert latest_verified(tmp_path) == c20


def test_resolve_resume_modes(tmp_path):
    out = tmp_path / "out"
    assert resolve_resume("auto", out) is None  # nothing yet
    assert resolve_resume("never", out) is None
    c10 = make_ckpt(out, 10)
    c20 = make_ckpt(out, 20)
    torn = make_ckpt(out, 30, verified=False)
    assert resolve_resume("auto", out) == c20
    assert resolve_resume("never", out) is None
    assert resolve_resume(str(c20), out) == c20  # an explicit verified checkpoint
    with pytest.raises(CheckpointError, match=r"train\.resume=.*newer verified checkpoints \(checkpoint-20\).*overwrite"):
        resolve_resume(str(c10), out)  # an older one: its future saves would overwrite checkpoint-20
    for bad in (torn, out / "checkpoint-999"):
        with pytest.raises(CheckpointError, match=r"train\.resume") as e:
            resolve_resume(str(bad), out)
        assert str(bad) in str(e.value)


def test_resolve_resume_path_with_damaged_file_is_refused(tmp_path):
    c10 = make_ckpt(tmp_path, 10)
    (c10 / "adapter_model.safetensors").write_bytes(b"short")
    with pytest.raises(CheckpointError, match=r"train\.resume"):
        resolve_resume(str(c10), tmp_path)


def test_discard_newer_unverified_only_removes_torn_newer_than_start(tmp_path):
    make_ckpt(tmp_path, 5, verified=False)  # torn but older than the start: left alone
    c10 = make_ckpt(tmp_path, 10)
    make_ckpt(tmp_path, 15, verified=False)
    c20 = make_ckpt(tmp_path, 20)  # verified and newer (resume=PATH to an older one): kept
    make_ckpt(tmp_path, 25, verified=False)
    removed = discard_newer_unverified(tmp_path, c10)
    assert names(removed) == ["checkpoint-15", "checkpoint-25"]
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [5, 10, 20]
    assert read_manifest(c10) and read_manifest(c20)


def test_discard_newer_unverified_without_start_removes_every_torn(tmp_path):
    make_ckpt(tmp_path, 5, verified=False)
    make_ckpt(tmp_path, 10, verified=False)
    removed = discard_newer_unverified(tmp_path, None)
    assert names(removed) == ["checkpoint-10", "checkpoint-5"]
    assert checkpoint_dirs(tmp_path) == []
    assert discard_newer_unverified(tmp_path / "missing", None) == []


# ---------------------------------------------------------------------------------------- retention


def test_retention_keeps_last_k_and_best_eval_loss(tmp_path):
    losses = {10: 0.9, 20: 0.3, 30: 0.8, 40: 0.7, 50: 0.6}
    for step, loss in losses.items():
        make_ckpt(tmp_path, step, eval_loss=loss)
    plan = retention_plan(tmp_path, keep_last=2, keep_best=True)
    assert names(plan) == ["checkpoint-10", "checkpoint-30"]  # keep 40, 50 (last 2) and 20 (best)
    plan = retention_plan(tmp_path, keep_last=2, keep_best=False)
    assert names(plan) == ["checkpoint-10", "checkpoint-20", "checkpoint-30"]
    assert retention_plan(tmp_path, keep_last=10, keep_best=True) == []
    assert retention_plan(tmp_path, keep_last=None, keep_best=True) == []  # retention off: nothing


def test_retention_never_deletes_newest_verified(tmp_path):
    make_ckpt(tmp_path, 10, eval_loss=0.1)  # the best
    make_ckpt(tmp_path, 20, eval_loss=0.5)
    make_ckpt(tmp_path, 30, eval_loss=0.9)  # the newest verified, and the worst
    plan = retention_plan(tmp_path, keep_last=0, keep_best=True)
    assert names(plan) == ["checkpoint-20"]
    plan = retention_plan(tmp_path, keep_last=0, keep_best=False)
    assert names(plan) == ["checkpoint-10", "checkpoint-20"]


def test_retention_best_ignores_checkpoints_without_eval_loss(tmp_path):
    make_ckpt(tmp_path, 10)  # no eval_loss at all
    make_ckpt(tmp_path, 20, eval_loss=0.4)
    make_ckpt(tmp_path, 30)
    make_ckpt(tmp_path, 40)
    assert names(retention_plan(tmp_path, keep_last=1, keep_best=True)) == ["checkpoint-10", "checkpoint-30"]


def test_retention_torn_older_go_newer_unverified_stay(tmp_path):
    make_ckpt(tmp_path, 5, verified=False)  # torn, older than the newest verified: deleted
    make_ckpt(tmp_path, 10, eval_loss=0.5)
    make_ckpt(tmp_path, 15, verified=False)  # torn, older than the newest verified: deleted
    c20 = make_ckpt(tmp_path, 20, eval_loss=0.6)
    make_ckpt(tmp_path, 25, verified=False)  # newer than the newest verified (a save in progress?): left
    _journal(tmp_path, [10, 20])  # the record: 5 and 15 never verified (torn saves, not lost manifests)
    plan = retention_plan(tmp_path, keep_last=1, keep_best=False)
    assert names(plan) == ["checkpoint-10", "checkpoint-15", "checkpoint-5"]
    assert c20 not in plan
    assert retention_plan(tmp_path, keep_last=None, keep_best=False) == []


def test_retention_without_any_verified_deletes_nothing(tmp_path):
    make_ckpt(tmp_path, 5, verified=False)
    make_ckpt(tmp_path, 10, verified=False)
    assert retention_plan(tmp_path, keep_last=1, keep_best=True) == []


def test_retention_plan_then_delete(tmp_path):
    for step in (10, 20, 30):
        make_ckpt(tmp_path, step, eval_loss=1.0)
    for path in retention_plan(tmp_path, keep_last=1, keep_best=False):
        delete_checkpoint(path)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [30]
    assert latest_verified(tmp_path).name == "checkpoint-30"


def test_delete_checkpoint_unverifies_first(tmp_path, monkeypatch):
    c10 = make_ckpt(tmp_path, 10)
    c20 = make_ckpt(tmp_path, 20)
    # a crash right after the manifest went but before the folder did: never a 'verified' husk
    seen = {}

    def crashing_rmtree(path, ignore_errors=False):
        seen["manifest_present"] = (Path(path) / MANIFEST).exists()
        raise KeyboardInterrupt("simulated crash mid-delete")

    monkeypatch.setattr(ck.shutil, "rmtree", crashing_rmtree)
    with pytest.raises(KeyboardInterrupt):
        delete_checkpoint(c20)
    monkeypatch.undo()
    assert seen == {"manifest_present": False}
    assert c20.is_dir() and read_manifest(c20) is None
    assert latest_verified(tmp_path) == c10  # falls back, never resumes from the husk
    delete_checkpoint(c20)
    assert not c20.exists()
    delete_checkpoint(c20)  # already gone: not an error
    assert c10.is_dir()


# ---------------------------------------------------------------------------------------- failpoint

# medscale.jobs imports no torch: a child process starts in a fraction of a second.
_LOAD = "import sys\nimport medscale.jobs.checkpoint as ck\n"


def _child(code: str, env_value: str | None, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MEDSCALE_FAILPOINT"}
    if env_value is not None:
        env["MEDSCALE_FAILPOINT"] = env_value
    return subprocess.run([sys.executable, "-c", _LOAD + code, *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_failpoint_kills_with_sigkill_when_armed():
    r = _child("ck.failpoint('x', 3)\nprint('survived', flush=True)\n", "x@3")
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stdout, r.stderr)
    assert "survived" not in r.stdout


def test_failpoint_returns_when_armed_for_another_point():
    r = _child("ck.failpoint('x', 3)\nck.failpoint('y', 4)\nprint('survived', flush=True)\n", "x@4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "survived"


@pytest.mark.parametrize("value", [None, "", "x@4", "y@3", "x@3 ", "x", "x@03"])
def test_failpoint_is_a_noop_unless_exactly_this_point(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("MEDSCALE_FAILPOINT", raising=False)
    else:
        monkeypatch.setenv("MEDSCALE_FAILPOINT", value)
    failpoint("x", 3)  # returns (were it armed, this pytest process would be gone)


def test_before_manifest_failpoint_leaves_a_torn_checkpoint(tmp_path):
    """The crash write_manifest is built for: killed before the manifest -> the checkpoint is not resumable."""
    c10 = make_ckpt(tmp_path, 10)
    ckpt = make_ckpt(tmp_path, 20, verified=False)
    r = _child("from pathlib import Path\nck.write_manifest(Path(sys.argv[1]), 20, {})\n", "before_manifest@20",
               str(ckpt))
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not (ckpt / MANIFEST).exists()
    assert not [p for p in ckpt.iterdir() if p.name.startswith(".")]
    assert latest_verified(tmp_path) == c10
    assert names(discard_newer_unverified(tmp_path, latest_verified(tmp_path))) == ["checkpoint-20"]


# ---------------------------------------------------------------------------------------- damaged inputs

# Fixed bug (read_manifest): a manifest that is valid JSON but not an object of the
# expected shape raises (AttributeError / TypeError / KeyError) instead of returning None. read_manifest
# promises "the manifest if the checkpoint is complete and intact, else None", and latest_verified /
# retention_plan call it on every checkpoint-N, so one damaged manifest.json crashes resume=auto (and every
# save's retention pass) instead of falling back to the previous verified checkpoint.
@pytest.mark.parametrize("content", ["[]",  # AttributeError: 'list' object has no attribute 'get'
                                     '{"format": 1, "files": {"trainer_state.json": 5}}',  # TypeError
                                     '{"format": 1, "files": {"trainer_state.json": {}}}'])  # KeyError: 'size'
def test_manifest_of_wrong_json_shape_is_not_verified(tmp_path, content):
    c10 = make_ckpt(tmp_path, 10)
    c20 = make_ckpt(tmp_path, 20)
    (c20 / MANIFEST).write_text(content)
    assert read_manifest(c20) is None
    assert latest_verified(tmp_path) == c10


# Fixed bug (discard_newer_unverified): the start step is parsed from the folder name
# (`int(start.name.split("-")[1])`), but resolve_resume(PATH) accepts any folder with a valid manifest. run()'s
# _plan_start does exactly `start = resolve_resume(PATH, out); discard_newer_unverified(out, start)`, so
# train.resume=/backups/final (a verified copy) crashes with IndexError; the manifest carries the step.
def test_discard_after_resume_from_a_verified_folder_not_named_checkpoint_n(tmp_path):
    out = tmp_path / "out"
    make_ckpt(out, 10)
    make_ckpt(out, 30, verified=False)
    src = make_ckpt(tmp_path / "backups", 20)
    final = src.rename(tmp_path / "backups" / "final")
    start = resolve_resume(str(final), out)
    assert start == final
    removed = discard_newer_unverified(out, start)
    assert names(removed) == ["checkpoint-30"]


# Fixed (discard_newer_unverified): "unverified" is decided by the
# manifest FILE existing, not by read_manifest. A checkpoint newer than the start whose manifest is unreadable
# (or whose files no longer match it) is skipped by latest_verified but not discarded; the Trainer then saves
# into that same folder with the stale manifest still in it, and a crash mid-save leaves old manifest + mixed
# files, which passes read_manifest whenever the rewritten files are size-only (> HASH_LIMIT) or not yet
# rewritten.
def test_discard_removes_newer_checkpoint_with_invalid_manifest(tmp_path):
    c10 = make_ckpt(tmp_path, 10)
    c20 = make_ckpt(tmp_path, 20)
    (c20 / MANIFEST).write_text("{not json")
    start = resolve_resume("auto", tmp_path)
    assert start == c10
    removed = discard_newer_unverified(tmp_path, start)
    assert names(removed) == ["checkpoint-20"]


# ---------------------------------------------------------------------------------------- damaged: set aside


def test_a_damaged_checkpoint_is_set_aside_never_deleted(tmp_path):
    """Defect: a damaged checkpoint was deleted on the next start; a transient read error could destroy a good
    one. It is renamed `checkpoint-N.damaged` now, listed apart, and only `jobs gc` deletes it."""
    c10 = make_ckpt(tmp_path, 10)
    c20 = make_ckpt(tmp_path, 20)
    data = (c20 / "adapter_model.safetensors").read_bytes()
    (c20 / "adapter_model.safetensors").write_bytes(b"X" + data[1:])
    torn = make_ckpt(tmp_path, 30, verified=False)
    _journal(tmp_path, [10, 20])  # step 30 never verified: a torn save
    removed, aside = clear_newer_than(tmp_path, resolve_resume("auto", tmp_path))
    assert removed == [torn] and not torn.exists()
    assert names(aside) == ["checkpoint-20.damaged"] and names(damaged_dirs(tmp_path)) == ["checkpoint-20.damaged"]
    assert (aside[0] / "adapter_model.safetensors").read_bytes()[1:] == data[1:], "its files are all still there"
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [10] and latest_verified(tmp_path) == c10
    # the same step damaged again (after the run saved it anew) does not overwrite the first one set aside
    c20 = make_ckpt(tmp_path, 20)
    (c20 / "trainer_state.json").write_text("{}")
    clear_newer_than(tmp_path, c10)
    assert names(damaged_dirs(tmp_path)) == ["checkpoint-20.damaged", "checkpoint-20.damaged-2"]


def _journal(out: Path, verified_steps: list[int]) -> None:
    from medscale.jobs.record import Journal

    Journal("demo", str(out), verified_steps=verified_steps).save()


def test_a_job_whose_every_checkpoint_is_damaged_refuses_to_restart_from_zero(tmp_path):
    """Defect: with every checkpoint damaged, all were deleted and training silently restarted from step 0."""
    from medscale.jobs.resume import plan_start
    from medscale.recipe import load_recipe

    out = tmp_path / "out"
    for step in (10, 20):
        (make_ckpt(out, step) / "trainer_state.json").write_text(json.dumps({"global_step": step, "x": 1}))
    _journal(out, [10, 20])
    recipe = load_recipe("tiny-demo", [f"train.output_dir={out}", "name=demo"])
    with pytest.raises(CheckpointError) as e:
        plan_start(recipe)
    msg = str(e.value)
    assert "steps 10, 20" in msg and "train.resume=never" in msg and "train.output_dir" in msg
    assert names(damaged_dirs(out)) == ["checkpoint-10.damaged", "checkpoint-20.damaged"]
    # starting over is allowed when asked for, and the damaged folders stay for `jobs gc`
    plan = plan_start(load_recipe("tiny-demo", [f"train.output_dir={out}", "name=demo", "train.resume=never"]))
    assert plan.resume is None and len(damaged_dirs(out)) == 2
