"""What a newcomer meets first, and what reaches a shell (issue 20, items 14, 15 and 20): README's commands from a
clone that has no ../shared, its set-up lines, and every user-given string in a rendered SLURM script."""
from __future__ import annotations

import itertools
import json
import re
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


# --------------------------------------------------------------------------- README for someone with only a clone

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_readme_says_where_to_get_each_built_in_benchmark_and_where_it_goes():
    """Defect: `eval JOB --against base` needs ~/data/eval, and README never said how to get the files."""
    from medscale.eval.bench import BUILTINS

    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([\w-]+)` \|.*$", README, re.M)}
    for name, b in BUILTINS.items():
        assert name in rows, f"README does not say where benchmark {name} comes from"
        assert f"`{b.path}`" in rows[name] and b.origin in rows[name], rows[name]


def _compare_models(text: str) -> list[list[str]]:
    """The model arguments of every `medscale compare ...` README shows (code blocks, transcripts, prose)."""
    out = []
    for m in re.finditer(r"medscale compare ([^`\n#]*)", text):
        words = m.group(1).split()
        out.append(list(itertools.takewhile(lambda w: not w.startswith("-"), words)))
    return out


def test_every_compare_readme_shows_names_models_that_resolve():
    """Defect: `medscale compare base tuned ...` failed as written ("'base' is no folder and no job"): the test's
    labels were shown as models. A model is LABEL=MODEL or a placeholder in capitals."""
    shown = [w for words in _compare_models(README) for w in words]
    assert shown, "README shows no `medscale compare` with models"
    bad = [w for w in shown if not (re.fullmatch(r"[\w.-]+=\S+", w) or re.fullmatch(r"[A-Z_]+", w))]
    assert not bad, f"README's compare names {bad}: neither LABEL=MODEL nor a PLACEHOLDER"


def test_readme_says_what_the_cpu_install_does_on_a_plain_machine():
    """Defect: "CPU torch first, so pip never pulls CUDA wheels" held only where a CPU wheel was already at hand."""
    setup = README.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in setup
    assert "pip never pulls CUDA" not in setup
