"""Issue 20, items 1, 5 and 13: the tiny model never takes a folder medscale did not build; a wrong
adapter.target_modules is a pre-flight error with the closest name; library noise stays out of a run's output."""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from pathlib import Path

import pytest

from conftest import cli


def _users_folder(root: Path) -> Path:
    folder = root / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("a week of work\n")
    (folder / "sub" / "data.jsonl").write_text("{}\n")
    return folder


def _untouched(folder: Path) -> bool:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))
    return files == ["notes.txt", "sub", "sub/data.jsonl"] and (folder / "notes.txt").read_text() == "a week of work\n"


# ---------------------------------------------------------------------------------------------- item 1


def test_tiny_model_refuses_a_folder_it_did_not_build_and_builds_into_an_empty_one(tmp_path):
    mine = _users_folder(tmp_path)
    r = cli("tiny-model", str(mine), "--layers", "1", "--hidden", "16")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "notes.txt" in r.stderr and "sub/" in r.stderr and "choose a new or empty folder" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and _untouched(mine)

    empty = tmp_path / "empty"
    empty.mkdir()
    r = cli("tiny-model", str(empty), "--layers", "1", "--hidden", "16")
    assert r.returncode == 0, r.stderr
    from medscale.model.tiny import MARKER, build_problem

    assert (empty / "config.json").is_file() and (empty / MARKER).is_file()
    assert build_problem(empty) is None  # medscale's own folder: it may rebuild it
    (tmp_path / "file").write_text("x")
    assert "is a file" in build_problem(tmp_path / "file")


def test_the_tiny_recipe_never_builds_over_a_users_folder_and_check_says_so(tmp_path, medscale_home):
    mine = _users_folder(medscale_home / "models")  # even inside medscale's own models folder
    out = tmp_path / "out"
    for command in ("check", "train"):
        r = cli(command, "tiny-demo", f"model.path={mine}", f"train.output_dir={out}")
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert "notes.txt" in r.stderr and "would delete them" in r.stderr, (command, r.stderr)
        assert "built on first use" not in r.stdout
    assert _untouched(mine) and not out.exists()


def test_a_missing_model_path_outside_medscale_home_is_refused_not_filled_with_a_random_model(tmp_path):
    typo = tmp_path / "Qwen3-1.7b"
    out = tmp_path / "out"
    for command in ("check", "train"):
        r = cli(command, "tiny-demo", f"model.path={typo}", f"train.output_dir={out}")
        assert r.returncode == 2, (command, r.stdout, r.stderr)
        assert f"model.path: {typo} does not exist" in r.stderr
        assert f"medscale tiny-model {typo} --layers 2 --hidden 128" in r.stderr  # the deliberate way, spelled out
    assert not typo.exists() and not out.exists()


def test_the_default_tiny_location_is_still_built_on_first_use(medscale_home):
    r = cli("check", "tiny-demo")
    assert r.returncode == 0, r.stderr
    assert f"{medscale_home}/models/tiny-qwen3: a tiny random Qwen3 (2 layers, hidden 128), built there on first use" \
        in r.stdout


# ---------------------------------------------------------------------------------------------- item 5


def test_an_unknown_target_module_is_a_preflight_error_with_the_closest_name_and_nothing_written(
        tiny_model_dir, tmp_path, medscale_home):
    out = tmp_path / "out"
    args = ("tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}",
            "adapter.target_modules=[q_proj,v_prj,self_attn]", "adapter.modules_to_save=[embed_tokens,lm_hed]")
    r = cli("train", *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "NoMatchingPeftModuleError" not in r.stderr
    # v_prj alone would have been skipped by peft without a word, q_proj matching: each entry is checked
    assert "adapter.target_modules: 'v_prj' names no module of" in r.stderr and "did you mean 'v_proj'?" in r.stderr
    assert "'self_attn' is a Qwen3Attention, not a layer LoRA can wrap" in r.stderr
    assert "adapter.modules_to_save: 'lm_hed'" in r.stderr and "did you mean 'lm_head'?" in r.stderr
    assert not out.exists() and not (medscale_home / "registry.db").exists()  # no output dir, no job row

    r = cli("check", *args)
    assert r.returncode == 2 and "did you mean 'v_proj'?" in r.stderr


def test_the_target_check_knows_an_unbuilt_tiny_model_and_all_linear(medscale_home):
    from medscale.model.modules import adapter_problems
    from medscale.recipe import load_recipe

    assert adapter_problems(load_recipe("tiny-demo")) == []  # built from its shape, nothing written
    assert adapter_problems(load_recipe("tiny-demo", ["adapter.target_modules=all-linear"])) == []
    assert not (medscale_home / "models").exists()
    wrong = adapter_problems(load_recipe("tiny-demo", ["adapter.target_modules=[gate]"]))
    assert len(wrong) == 1 and "did you mean 'gate_proj'" in wrong[0]


# ---------------------------------------------------------------------------------------------- item 13


def test_training_output_has_no_raw_dicts_and_the_loss_is_on_the_bar(tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    r = cli("train", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={out}", "track.swanlab=null",
            "train.max_steps=2", "train.logging_steps=1", "eval.eval_steps=1", "data.eval_size=4",
            "data.max_length=128", "data.truncation=truncate_response",
            "data.sources=[{path: '${MEDSCALE_DEMO_DATA}/medical_r1_demo.jsonl', format: r1-think, limit: 24}]")
    assert r.returncode == 0, r.stderr
    both = r.stdout + r.stderr
    assert not re.search(r"\{'(loss|eval_loss|train_runtime)'", both), both  # HF Trainer's printed log dicts
    assert "trust_remote_code" not in both
    assert re.search(r"loss \d+\.\d{3}, eval loss \d+\.\d{3}", r.stderr), r.stderr  # on the progress bar instead
    assert "medscale: tiny-demo finished" in r.stdout

    # an adapter load (what eval, chat and export do) inside the CLI boundary: no peft/transformers FutureWarning
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from medscale.errors import user_errors

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # every warning recorded, unless the boundary hides it
        with user_errors():
            PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32), out)
    assert not [w for w in seen if "is_gradient_checkpointing" in str(w.message)]


def test_library_warnings_and_logging_errors_are_hidden_at_the_boundary_and_shown_with_debug(capsys, caplog,
                                                                                             monkeypatch):
    """bitsandbytes' import-time "Set trust_remote_code=True" warning (CPUs with AVX512-BF16: its logger is used as it
    would be), and a log handler that cannot write (SwanLab's debug.log on a full disk: /dev/full is one)."""
    from medscale.errors import user_errors

    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    full = logging.getLogger("test.swanlab-like")
    full.propagate = False
    handler = logging.StreamHandler(open("/dev/full", "w"))  # noqa: SIM115 (closed below)
    full.addHandler(handler)
    bnb, bnb_top = logging.getLogger("bitsandbytes.backends.cpu.ops"), logging.getLogger("bitsandbytes")
    before = bnb_top.level
    bnb_top.setLevel(logging.NOTSET)  # as in a command that never set logging up (eval, chat, compare)

    def noisy():
        with user_errors():
            bnb.warning("Failed to load CPU gemm_4bit_forward from kernels-community: Set trust_remote_code=True")
            full.error("a line SwanLab logs")

    try:
        caplog.set_level(logging.WARNING)
        noisy()
        assert "trust_remote_code" not in caplog.text and "Logging error" not in capsys.readouterr().err
        assert bnb_top.level == logging.NOTSET and logging.raiseExceptions  # as it was, after the boundary
        monkeypatch.setenv("MEDSCALE_DEBUG", "1")
        noisy()
        assert "trust_remote_code" in caplog.text and "Logging error" in capsys.readouterr().err
    finally:
        full.removeHandler(handler)
        with contextlib.suppress(OSError):  # what it still buffers cannot be written either
            handler.stream.close()
        bnb_top.setLevel(before)
