"""What a newcomer meets first, and what reaches a shell (issue 20, items 14, 15 and 20): README's commands from a
clone that has no ../shared, its set-up lines, and every user-given string in a rendered SLURM script."""
from __future__ import annotations

import json
import subprocess

import pytest

from conftest import REPO, cli
from launcher import slurm as sl
from test_slurm import _batch_env, _plan, _srun_args

# Each one, unquoted in a script, would run `touch pwned` (in the script's working folder) or break the line.
PAYLOADS = ["a\ntouch pwned\n#", "a'$(touch pwned)'", 'a"$(touch pwned)"', "a`touch pwned`", "a;touch pwned"]


def _render(tmp_path, payload: str) -> tuple[str, str, str]:
    """`medscale submit slurm --dry-run` of a recipe file whose path carries `payload`, with an override value that
    carries it too: (script, recipe path, override)."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    recipe = folder / f"r{payload}.yaml"
    recipe.write_text("base: tiny-demo\nname: injected\n", encoding="utf-8")
    override = f"train.output_dir={tmp_path}/out{payload}"
    r = cli("submit", "slurm", str(recipe), override, "--gpus-per-node", "0", "--dry-run")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout, str(recipe.resolve()), override


@pytest.mark.parametrize("payload", PAYLOADS, ids=["newline", "single-quote", "double-quote", "backtick", "semicolon"])
def test_a_recipe_path_or_override_value_never_runs_as_a_command_in_the_slurm_script(payload, tmp_path):
    """Defect: a newline in the recipe file's path ended the header comment (the rest ran as a command) and put it
    before the #SBATCH lines, which sbatch then ignored."""
    script, recipe, override = _render(tmp_path, payload)
    lines = script.splitlines()
    directives = [i for i, ln in enumerate(lines) if ln.startswith("#SBATCH")]
    assert directives == list(range(1, len(directives) + 1)), "every #SBATCH line directly after the shebang"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    # run it as the batch shell would, with a stub srun: nothing but srun runs, and srun gets the strings intact
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "job.sh").write_text(script, encoding="utf-8")
    r = subprocess.run(["bash", str(tmp_path / "job.sh")], cwd=cwd, env=_batch_env(tmp_path, SLURM_NNODES="1"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(cwd.iterdir()) == [] and not (REPO / "pwned").exists(), "an injected command ran"
    assert _srun_args(tmp_path)[-2:] == [recipe, override]


@pytest.mark.parametrize("option", ["partition", "account", "time", "output", "sbatch_args"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=["newline", "single-quote", "double-quote", "backtick", "semicolon"])
def test_an_sbatch_option_carrying_a_newline_quote_or_command_is_refused(option, payload, tmp_path):
    """An #SBATCH line cannot be quoted: sbatch reads its words itself. Refused, naming the option."""
    value = [f"--qos={payload}"] if option == "sbatch_args" else payload
    with pytest.raises(sl.LaunchError) as e:
        _plan("tiny-demo", [f"train.output_dir={tmp_path}/out"], {option: value, "gpus_per_node": "0"})
    assert ("--sbatch-arg" if option == "sbatch_args" else f"--{option}") in str(e.value)


@pytest.mark.parametrize("payload", PAYLOADS, ids=["newline", "single-quote", "double-quote", "backtick", "semicolon"])
def test_a_recipe_name_carrying_a_newline_quote_or_command_is_refused(payload, tmp_path):
    """The recipe's name becomes --job-name; refused when it is loaded, before any script exists."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"base: tiny-demo\nname: {json.dumps(payload)}\n", encoding="utf-8")
    r = cli("submit", "slurm", str(bad), "--gpus-per-node", "0", "--dry-run")
    assert r.returncode == 2 and "name" in r.stderr and "#SBATCH" not in r.stdout
