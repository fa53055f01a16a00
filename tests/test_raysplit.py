"""The launcher package holds one program per module (issue 21, item 5) and one LaunchError (item 4). Needs no Ray:
the Ray modules import it only inside their functions."""
from __future__ import annotations

import pytest

from conftest import REPO


def test_one_except_launch_error_catches_every_backends_refusal(tmp_path):
    """Defect: launcher/ray.py and launcher/slurm.py each defined a LaunchError, so catching one missed the other."""
    import launcher
    from launcher import ray, slurm
    from medscale.recipe import load_recipe

    recipe = load_recipe("tiny-demo", [f"train.output_dir={tmp_path}/out"])
    refusals = (lambda: slurm.check_options(slurm.SlurmOptions(partition="gpu;id")),
                lambda: ray.prepare_submission(recipe, "tiny-demo", [], env=["no-equals"], environ={}))
    for refuse in refusals:
        with pytest.raises(launcher.LaunchError):
            refuse()
    assert ray.LaunchError is slurm.LaunchError is launcher.LaunchError, "the names callers and tests use"


def test_no_launcher_module_is_over_500_lines():
    """Defect: launcher/ray.py (572 lines) held the submit side, the job's driver and the Ray Train worker."""
    long = {str(p.relative_to(REPO)): n for p in (REPO / "launcher").rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500}
    assert not long, f"split these by program: {long}"
