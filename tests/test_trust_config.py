"""Issue 20, the configuration items: a bad --shard-size, a MEDSCALE_HOME that is a file, a misspelt recipe section
and a corrupt job record are one line and exit 2 before any work; the registry and the data cache are as private as
the resolved recipes they hold; a relative train.output_dir is stored absolute, and a job recorded with one resumes."""
from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import yaml

from conftest import cli
from medscale.jobs.checkpoint import MANIFEST, write_manifest
from medscale.jobs.record import JOURNAL, RECIPE_FILE
from medscale.recipe import RecipeError, load_recipe
from test_bad_input import _one_error


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def permissive_umask():
    """The common 022: what a 0644 registry came from (the policy must not depend on a strict umask)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


# --------------------------------------------------------------------------- item 6: export --shard-size

def test_a_shard_size_without_a_unit_stops_export_before_any_work(tmp_path):
    r = cli("export", str(tmp_path / "no-such-job"), "--merge", "--shard-size", "lots")
    _one_error(r, "--shard-size lots", "5GB", "500MB")


@pytest.mark.parametrize("size", ["5GB", "500MB", "1.5gb", "10 KB"])
def test_every_shard_size_export_accepts_is_one_huggingface_hub_reads(size):
    from huggingface_hub.serialization._base import parse_size_to_int

    from medscale.cli.export import check_shard_size

    check_shard_size(size)
    assert parse_size_to_int(size) > 0


# --------------------------------------------------------------------------- item 8: MEDSCALE_HOME is a file

@pytest.mark.parametrize("command", [["jobs", "list"], ["check", "tiny-demo"], ["demo"], ["train", "tiny-demo"]])
def test_a_medscale_home_that_is_a_file_is_named_as_such(tmp_path, command):
    home = tmp_path / "home"
    home.write_text("mine")
    _one_error(cli(*command, env={"MEDSCALE_HOME": str(home)}), f"MEDSCALE_HOME={home} is a file",
               "set MEDSCALE_HOME to a folder")
    assert home.read_text() == "mine" and sorted(tmp_path.iterdir()) == [home]


def test_a_medscale_home_below_a_file_names_the_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("mine")
    _one_error(cli("jobs", "list", env={"MEDSCALE_HOME": str(f / "home")}), f"{f} is a file")


# --------------------------------------------------------------------------- item 9: a misspelt section

def _recipe_file(tmp_path: Path, rename: dict[str, str], drop: tuple[str, ...] = ()) -> Path:
    """tiny-demo written out whole, with sections renamed (misspelt) or left out."""
    data = yaml.safe_load(load_recipe("tiny-demo").to_yaml())
    data = {rename.get(k, k): v for k, v in data.items() if k not in drop}
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _line_of(path: Path, key: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(f"{key}:"))


def test_a_misspelt_section_is_named_with_its_closest_match_and_line(tmp_path):
    path = _recipe_file(tmp_path, {"train": "trian"})
    line = _one_error(cli("check", str(path)), f"{path}:{_line_of(path, 'trian')}: unknown section 'trian'",
                      "did you mean 'train'?")
    assert "missing" not in line


def test_unknown_sections_come_before_missing_ones(tmp_path):
    path = _recipe_file(tmp_path, {"data": "dta"}, drop=("train",))
    with pytest.raises(RecipeError) as e:
        load_recipe(str(path))
    assert str(e.value).splitlines() == [f"{path}:{_line_of(path, 'dta')}: unknown section 'dta'; did you mean 'data'?",
                                         f"{path}: missing required key 'train'"]


def test_an_override_that_makes_an_unknown_section_is_named():
    with pytest.raises(RecipeError, match=r"^override 'trian.max_steps=3': unknown section 'trian'; did you mean "
                                          r"'train'\?$"):
        load_recipe("tiny-demo", ["trian.max_steps=3"])


# --------------------------------------------------------------------------- item 23: a corrupt job record

@pytest.mark.parametrize("text", ['{"name": "demo", "attempts": [', "[]"])
def test_a_corrupt_job_record_is_one_line_naming_the_file(tmp_path, tiny_model_dir, medscale_home, text):
    out = tmp_path / "run"
    out.mkdir()
    (out / JOURNAL).write_text(text)
    for r in (cli("train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
                  "track.swanlab=null"),
              cli("jobs", "sync", str(out))):
        _one_error(r, f"{out / JOURNAL} is not a readable job record", "move it aside")
    assert sorted(p.name for p in out.iterdir()) == [JOURNAL] and (out / JOURNAL).read_text() == text


# --------------------------------------------------------------------------- item 26: one permission policy

def test_the_registry_and_its_wal_files_are_private(medscale_home, permissive_umask):
    from medscale.registry import Registry

    reg = Registry()
    try:
        reg.jobs()  # a connection is open: the -wal and -shm files exist beside the database
        files = sorted(medscale_home.glob("registry.db*"))
        assert [p.name for p in files] == ["registry.db", "registry.db-shm", "registry.db-wal"]
        assert {p.name: oct(_mode(p)) for p in files} == {p.name: "0o600" for p in files}
    finally:
        reg.close()


def test_an_existing_registry_keeps_the_mode_its_owner_gave_it(medscale_home):
    from medscale.registry import Registry

    medscale_home.mkdir()
    Registry().close()
    (medscale_home / "registry.db").chmod(0o640)  # shared with a group on purpose
    Registry().close()
    assert _mode(medscale_home / "registry.db") == 0o640


def test_the_tokenized_data_cache_is_private(tmp_path, tiny_tokenizer, permissive_umask):
    from medscale.data.pipeline import build_datasets

    data = load_recipe("tiny-demo").data
    data.sources[0].limit = 20
    cache = tmp_path / "cache"
    build_datasets(data, tiny_tokenizer, seed=1, cache_dir=cache)
    (entry,) = cache.iterdir()
    tree = [entry, *entry.rglob("*")]
    assert any(p.is_file() and p.suffix == ".arrow" for p in tree)
    assert {str(p): oct(_mode(p)) for p in tree} == {str(p): "0o700" if p.is_dir() else "0o600" for p in tree}


# --------------------------------------------------------------------------- item 27: a relative output_dir

def test_a_relative_output_dir_is_resolved_once_against_the_working_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("tiny-demo", ["train.output_dir=runs/x"])
    assert recipe.train.output_dir == str(tmp_path / "runs" / "x")
    assert "output_dir: " + str(tmp_path / "runs" / "x") in recipe.to_yaml()
    assert recipe.output_dir_as_written == "runs/x"  # what the Ray launcher refuses


def test_a_job_recorded_with_a_relative_output_dir_resumes_and_stores_absolute_paths(two_runs, tmp_path, monkeypatch):
    """A job trained before output dirs were resolved: its recipes say `runs/lora`. Run again from the same cwd, it
    resumes from its newest checkpoint, and every path the registry stores is absolute."""
    from medscale.registry import Registry

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "runs" / "lora"
    shutil.copytree(two_runs["lora"], out)
    for f in out.rglob(RECIPE_FILE):
        f.write_text(f.read_text().replace(f"output_dir: {two_runs['lora']}", "output_dir: runs/lora"))
    for ckpt in out.glob("checkpoint-*"):  # verified over that recipe, as it was saved then
        saved = json.loads((ckpt / MANIFEST).read_text())
        write_manifest(ckpt, saved["step"], {k: v for k, v in saved.items()
                                             if k not in ("format", "step", "files", "size_bytes")})
    recipe = out / RECIPE_FILE
    assert "output_dir: runs/lora" in recipe.read_text()
    r = cli("train", str(recipe), "train.max_steps=9")
    assert r.returncode == 0, r.stderr
    reg = Registry()
    try:
        job = reg.job(reg.find(str(out)))
    finally:
        reg.close()
    assert job.output_dir == str(out)
    assert job.attempt_list[-1].resumed_from == str(out / "checkpoint-6")
    assert [c.path for c in job.checkpoints if c.step == 9] == [str(out / "checkpoint-9")]
    assert all(os.path.isabs(c.path) for c in job.checkpoints)
