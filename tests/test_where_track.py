"""Trackers (`track.report_to`): a tiny run reports to TensorBoard and MLflow in local files under its output dir,
read back with each tracker's own reader; parameters and tags name the recipe, fingerprint and job; no secret
reaches any file; a tracker that is not installed fails pre-flight with the command that installs it."""
from __future__ import annotations

import importlib.util

import pytest

from conftest import REPO, cli, own_home, tiny_run_recipe
from medscale.recipe.sections.track import TRACKER_INSTALL

DEMO = REPO / "medscale" / "data" / "demo" / "medical_r1_demo.jsonl"

SECRETS = ("s3cretpw", "hf_abcdefghijklmnopqrstu", "sk-proj-ABCDEFGH12345678")


def _recipe(model, out, *extra):
    return tiny_run_recipe(model, out, DEMO, "r1-think", "train.max_steps=4", "train.logging_steps=1",
                           "train.per_device_train_batch_size=2", "data.max_length=256",
                           "data.truncation=truncate_response", *extra, limit=16)


@pytest.fixture(scope="module")
def tracked_run(tiny_model_dir, tmp_path_factory):
    from medscale.train.run import run

    root = tmp_path_factory.mktemp("tracked")
    recipe = _recipe(tiny_model_dir, root / "out", "track.report_to=[tensorboard, mlflow]",
                     f"description='mirror https://alice:{SECRETS[0]}@hub.lab/x with {SECRETS[1]}'",
                     f"track.run_name=tiny-{SECRETS[2]}")
    with own_home(root):
        summary = run(recipe)
    return recipe, summary, root / "out"


def test_tensorboard_event_file_holds_the_losses_and_the_tags(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe, summary, out = tracked_run
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]
    assert losses[0] == pytest.approx(summary.loss_first, rel=1e-5) and losses[-1] == pytest.approx(summary.loss_last, rel=1e-5)

    def text(tag):
        return acc.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()

    assert text("medscale.fingerprint") == recipe.fingerprint() == summary.fingerprint
    assert text("medscale.recipe") == recipe.name and text("medscale.attempt") == "1"
    assert text("medscale.job_id").isdigit()
    assert "data.max_length: 256" in text("medscale.recipe_params")


def test_mlflow_run_in_a_local_store_has_params_tags_and_metrics(tracked_run):
    from mlflow import MlflowClient

    recipe, summary, out = tracked_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(recipe.name)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-***"
    assert run.data.tags["medscale.fingerprint"] == recipe.fingerprint()
    assert run.data.tags["medscale.job"] == recipe.name and run.data.tags["medscale.attempt"] == "1"
    assert run.data.params["train.learning_rate"] == "0.003" and run.data.params["track.report_to"] == \
        "['tensorboard', 'mlflow']"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [1, 2, 3, 4] and history[-1].value == pytest.approx(summary.loss_last, rel=1e-5)


def test_no_secret_reaches_any_tracker_file(tracked_run):
    """The description held a URL password and a HF token, the run name an API key: masked in every byte written
    by the trackers (the SQLite store, the event files), while the recipe's own record keeps them."""
    _, _, out = tracked_run
    files = [p for d in ("tensorboard", "mlflow") for p in (out / d).rglob("*") if p.is_file()]
    assert files
    for p in files:
        data = p.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, f"{secret} in {p}"
    assert b"alice:***@hub.lab" in (out / "mlflow" / "mlflow.db").read_bytes()


def test_scrub_masks_urls_tokens_and_secret_keys():
    from medscale.train.tracking import scrub

    got = scrub({"url": "postgresql://bob:pw0rd@db:5432/reg", "note": "key ghp_0123456789abcdef and hf_ABCDEFGHIJKLM",
                 "hub_token": "anything", "nested": [{"api_key": "k"}], "steps": 5, "plain": "Qwen/Qwen3-8B"})
    assert got == {"url": "postgresql://bob:***@db:5432/reg", "note": "key *** and ***", "hub_token": "***",
                   "nested": [{"api_key": "***"}], "steps": 5, "plain": "Qwen/Qwen3-8B"}


def test_other_ranks_start_no_tracker(tiny_model_dir, tmp_path):
    from medscale.train.tracking import start_trackers

    r = _recipe(tiny_model_dir, tmp_path / "out", "track.report_to=[tensorboard, mlflow]")
    assert start_trackers(r, rank=1).callbacks == [] and not (tmp_path / "out").exists()


def test_a_tracker_not_installed_fails_preflight_with_its_pip_install(tiny_model_dir, tmp_path):
    missing = [n for n, (mods, _) in TRACKER_INSTALL.items() if not any(importlib.util.find_spec(m) for m in mods)]
    if not missing:
        pytest.skip("every tracker is installed here")
    name = missing[0]
    r = cli("check", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}",
            f"track.report_to=[{name}]")
    assert r.returncode == 2
    assert f"track.report_to names {name}, which is not installed: {TRACKER_INSTALL[name][1]}" in r.stderr
    assert not (tmp_path / "out").exists()


def test_report_to_swanlab_without_its_settings_names_the_fix(tiny_model_dir):
    r = cli("recipe", "show", "tiny-demo", "track.swanlab=null", "track.report_to=[swanlab, tensorboard]")
    assert r.returncode == 2 and "track.swanlab={project: NAME}" in r.stderr


@pytest.mark.parametrize("name", ["wandb", "trackio"])
def test_wandb_and_trackio_log_locally_where_installed(name, tiny_model_dir, tmp_path, monkeypatch):
    """Not in the dev extra (wandb ships a Go binary, trackio pulls gradio): run where they are installed."""
    pytest.importorskip(name)
    from medscale.train.tracking import start_trackers

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tracking = start_trackers(_recipe(tiny_model_dir, tmp_path / "out", f"track.report_to=[{name}]"), rank=0)
    assert list(tracking.sinks.sinks) == [name]
    tracking.sinks.sinks[name].log({"train/loss": 1.5}, 1)
    tracking.close()
    assert list(tracking.sinks.sinks) == [name]  # neither failed (a failure drops the tracker with a warning)
    if name == "wandb":
        assert list((tmp_path / "out" / "wandb").rglob("*.wandb"))


def test_a_resolved_recipe_with_swanlab_off_reloads_the_same(tmp_path):
    """The default report_to [swanlab] with null SwanLab settings is off; written out and read back (as every job's
    recipe.resolved.yaml is, on resume, sync and eval) it loads, to the same trackers and fingerprint."""
    from medscale.recipe import load_recipe

    recipe = load_recipe("tiny-demo", ["track.swanlab=null"])
    path = tmp_path / "recipe.resolved.yaml"
    path.write_text(recipe.to_yaml(), encoding="utf-8")
    again = load_recipe(str(path))
    assert again.track.trackers() == recipe.track.trackers() == []
    assert again.fingerprint() == recipe.fingerprint()
