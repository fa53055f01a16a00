"""`train.trainer_args`: any TrainingArguments field, checked against the installed transformers (an unknown key
names the closest field, a field medscale sets names the recipe key), recorded in the fingerprint; ddp_timeout
defaults to room for tokenizing large data behind the first barrier."""
from __future__ import annotations

from conftest import cli
from medscale.recipe import load_recipe


def _recipe(model, out, *extra):
    return load_recipe("tiny-demo", [f"model.path={model}", f"train.output_dir={out}", "track.swanlab=null", *extra])


def test_fields_pass_through_to_training_arguments(tiny_model_dir, tmp_path):
    from medscale.train.args import DDP_TIMEOUT_S, training_arguments

    args = training_arguments(_recipe(tiny_model_dir, tmp_path / "out", "train.trainer_args={neftune_noise_alpha: 5, "
                                      "lr_scheduler_kwargs: {num_cycles: 2}, ddp_timeout: 600}"), recompute=False)
    assert args.neftune_noise_alpha == 5 and args.lr_scheduler_kwargs == {"num_cycles": 2} and args.ddp_timeout == 600
    default = training_arguments(_recipe(tiny_model_dir, tmp_path / "out"), recompute=False)
    assert default.ddp_timeout == DDP_TIMEOUT_S > 1800 and default.neftune_noise_alpha is None


def test_an_unknown_field_fails_check_with_the_closest_name(tiny_model_dir, tmp_path):
    r = cli("check", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}",
            "train.trainer_args={neftune_noise_alpa: 5}")
    assert r.returncode == 2
    assert ("train.trainer_args.neftune_noise_alpa: not a TrainingArguments field of the installed transformers; "
            "did you mean 'neftune_noise_alpha'?") in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_field_medscale_sets_names_the_recipe_key_instead(tiny_model_dir, tmp_path):
    from medscale.recipe import RecipeError
    from medscale.train.args import training_arguments

    r = cli("check", "tiny-demo", f"model.path={tiny_model_dir}", f"train.output_dir={tmp_path / 'out'}",
            "train.trainer_args={report_to: [wandb], output_dir: /tmp/x, save_strategy: epoch}")
    assert r.returncode == 2
    assert "train.trainer_args.report_to: set track.report_to instead" in r.stderr
    assert "train.trainer_args.output_dir: set train.output_dir instead" in r.stderr
    assert "train.trainer_args.save_strategy: medscale sets this TrainingArguments field itself" in r.stderr
    try:  # a run started without pre-flight refuses them too
        training_arguments(_recipe(tiny_model_dir, tmp_path / "out", "train.trainer_args={learning_rate: 1}"), False)
        raise AssertionError("learning_rate was passed through")
    except RecipeError as e:
        assert "set train.learning_rate instead" in str(e)


def test_trainer_args_are_part_of_the_fingerprint(tiny_model_dir, tmp_path):
    plain = _recipe(tiny_model_dir, tmp_path)
    tuned = _recipe(tiny_model_dir, tmp_path, "train.trainer_args={neftune_noise_alpha: 5}")
    assert plain.fingerprint() != tuned.fingerprint()
    assert "neftune_noise_alpha: 5" in tuned.to_yaml()
