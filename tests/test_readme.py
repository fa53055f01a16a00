"""README and code cannot drift: every command in README's ```bash blocks is run here, or, where it needs a GPU, a
cluster or an install, checked as far as it can go on a CPU machine (pre-flight, `--dry-run`, the file it names),
or shown to be run by `.ci/run` or a named test. A command no rule below knows fails the suite: add a rule. Commands
that name files run in a fresh `git clone` of the checkout, with no ../shared beside it: what a newcomer has.

Every `medscale ...` command README mentions in prose or in a transcript must also exist (its `--help` works).
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, cli

README = REPO / "README.md"
CI = (REPO / ".ci" / "run").read_text(encoding="utf-8")

# A pre-flight problem that only says this machine lacks what the run needs (the model, the data, a GPU): README's
# GPU and cluster commands stop there on a CPU machine, and nowhere else.
MACHINE_ONLY = (r"model\.path: .* is missing: download", r"no data files found", r"needs a CUDA GPU",
                r"eval\.benchmarks: benchmark \S+: .*\$MEDSCALE_EVAL_DATA")


def bash_commands() -> list[str]:
    """The commands of README's ```bash blocks: continuation lines joined, comments dropped, `a && b` split."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*$", "", line).strip()
            commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def _words(command: str) -> list[str]:
    """shlex words, README's optional flags (`[--dry-run]`) taken as given."""
    return shlex.split(re.sub(r"\[(--[^\]]*)\]", r"\1", command))


def _env(tmp_path: Path) -> dict:
    """Model and data folders that do not exist: the same answer on every machine, whatever ~/models holds."""
    return {"MEDSCALE_MODELS": str(tmp_path / "models"), "MEDSCALE_DATA": str(tmp_path / "data")}


def _preflight(recipe: str, overrides: list[str], env: dict) -> None:
    """`medscale check` of what the command would run: it passes, or fails only for what this machine lacks."""
    r = cli("check", recipe, *overrides, env=env)
    assert "medscale: error" not in r.stderr, r.stderr  # a recipe or override README shows that does not load
    problems = [ln for ln in r.stderr.splitlines() if ln.startswith("✗")]
    assert r.returncode == 0 or (r.returncode == 2 and problems), r.stdout + r.stderr
    unexpected = [p for p in problems if not any(re.search(m, p) for m in MACHINE_ONLY)]
    assert not unexpected, unexpected


def _recipes_of_sbatch_script(script: Path, args: list[str]) -> list[tuple[str, list[str]]]:
    """The recipe(s) an sbatch script of slurm/ runs, with the overrides it is given."""
    text = script.read_text(encoding="utf-8")
    if m := re.search(r"MEDSCALE_SWEEP:-([\w.+-]+)\}", text):  # an array job over a sweep: one trial per task
        from medscale.sweep.spec import load_spec, plan_sweep

        return [(t.recipe_ref, [*t.overrides, *args]) for t in plan_sweep(*load_spec(m.group(1))).trials]
    if m := re.search(r"^medscale_run (\S+)", text, re.M):
        if not m.group(1).startswith('"'):
            return [(m.group(1), args)]
    default = re.search(r"MEDSCALE_RECIPE:-([\w.+-]+)\}", text).group(1)
    if args and "=" not in args[0]:  # a first argument without '=' names the recipe
        return [(args[0], args[1:])]
    return [(default, args)]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this checkout's commits: only the files a newcomer gets (no ../shared, nothing untracked)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    dest = tmp_path_factory.mktemp("clone") / "medscale"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{REPO}", str(dest)], check=True)
    return dest


def exercise(command: str, tmp_path: Path, clone: Path, monkeypatch) -> None:
    words = _words(command)
    assert not any(w.startswith(("../shared", "~/")) or "/shared/" in w for w in words), (
        f"README's `{command}` names a file a clone does not have: use the shipped demo files, or say what it needs "
        f"first and show it as a placeholder")
    env = _env(tmp_path)
    if words[:2] == ["pip", "install"]:  # .ci/run installs the same way (the dev extra is a superset of `.`)
        for arg in words[2:]:
            assert arg in CI or (arg == "." and '-e ".[dev]"' in CI), f"{command}: .ci/run does not install {arg}"
    elif words[:2] in (["pip", "wheel"], ["pip", "download"]):  # an air-gapped install's first step needs the
        # network; .ci/run builds its wheelhouse with pip wheel and runs the second step from it
        assert "python3 -m pip wheel" in CI and "--no-index --find-links" in CI, command
        assert all((REPO / w).is_file() for w in words if w.startswith("constraints/")), command
    elif words[:3] == ["python3", "-m", "pytest"]:
        assert command in CI, f".ci/run does not run `{command}`"
    elif words == ["medscale", "demo"]:  # a demo run (minutes): the slow test runs this command, shortened
        assert 'run_cli("demo"' in (REPO / "tests" / "test_launch.py").read_text(encoding="utf-8")
    elif words[:2] == ["medscale", "data"]:  # in the clone, as a newcomer types it
        monkeypatch.chdir(clone)
        r = cli(*words[1:])
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
    elif words[:2] == ["medscale", "train"]:
        _preflight(words[2], words[3:], env)
    elif words[:2] == ["medscale", "plan"]:  # no weights here: the shapes medscale ships for the built-in recipes
        r = cli(*words[1:], env=env)
        assert r.returncode == 0 and "shapes from" in r.stdout, r.stdout + r.stderr
    elif words[:2] == ["accelerate", "launch"]:
        assert (REPO / words[words.index("--config_file") + 1]).is_file()
        at = words.index("-m")
        assert words[at + 1] == "medscale.train"
        _preflight(words[at + 2], words[at + 3:], env)
    elif words[0] == "sbatch":
        at = next(i for i, w in enumerate(words) if w.endswith(".sh"))
        script = REPO / words[at]
        assert script.is_file() and subprocess.run(["bash", "-n", str(script)]).returncode == 0
        assert "#SBATCH --signal=B:USR1@300" in script.read_text(encoding="utf-8")
        for recipe, overrides in _recipes_of_sbatch_script(script, words[at + 1:]):
            _preflight(recipe, overrides, env)
    elif words[:2] == ["medscale", "submit"]:
        assert "--dry-run" in words, f"README's `{command}` should show --dry-run (what CI can run)"
        r = cli(*words[1:], env=env)
        assert r.returncode == 0 and r.stdout.strip(), r.stdout + r.stderr
        assert "pre-flight error" not in r.stderr or all(any(re.search(m, ln) for m in MACHINE_ONLY)
                                                         for ln in r.stderr.splitlines() if "pre-flight" in ln)
    elif words[:3] == ["ray", "job", "submit"]:
        assert (REPO / words[words.index("--runtime-env") + 1]).is_file()
        at = words.index("--")
        assert words[at + 1:at + 3] == ["python", "launcher/ray_job.py"] and (REPO / words[at + 2]).is_file()
        _preflight(words[at + 3], words[at + 4:], env)
    elif words[0] == "export":  # a setting medscale reads
        name = words[1].split("=", 1)[0]
        assert any(name in f.read_text(encoding="utf-8") for f in (REPO / "medscale").rglob("*.py")), name
    elif words[:3] == ["medscale", "sweep", "run"]:  # what it would run (trials, recipes, bases): --dry-run
        r = cli(*words[1:], *([] if "--dry-run" in words else ["--dry-run"]), env=env)
        assert r.returncode == 0 and "trial(s)" in r.stdout, r.stdout + r.stderr
    elif words[:3] == ["medscale", "sweep", "show"] or words[:2] in (["medscale", "report"], ["medscale", "export"]):
        # a sweep or job name stands for a trained one: test_sweep, test_report, test_export run these end to end
        shown = cli(*words[1:3 if words[1] == "sweep" else 2], "--help").stdout
        for flag in (f.split("=")[0] for w in words[2:] if w.startswith("--") for f in w.split("|")):
            assert flag in shown, f"README's `{command}`: no {flag}"
    elif words[:2] in (["medscale", "eval"], ["medscale", "compare"], ["medscale", "chat"], ["medscale", "judge"],
                       ["medscale", "serve"]):
        # placeholders (JOB, MODEL, RUN_DIR) stand for a trained model: tests/test_eval_cli.py and test_judge.py run
        # these commands end to end on tiny models, test_serve.py a server until its Ctrl-C; here every option README
        # shows must be one the command takes
        shown = cli(words[1], "--help").stdout
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert flag in shown, f"README's `{command}`: `medscale {words[1]}` has no {flag}"
    else:
        pytest.fail(f"README shows `{command}` and no rule in tests/test_readme.py exercises it")


COMMANDS = bash_commands()


def test_readme_has_the_commands_a_newcomer_runs():
    assert "medscale demo" in COMMANDS and "python3 -m pytest -q -ra --durations=20" in COMMANDS and len(COMMANDS) >= 15


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command(command, tmp_path, clone, monkeypatch):
    exercise(command, tmp_path, clone, monkeypatch)


def _mentioned() -> list[list[str]]:
    """`medscale X [Y]` in README's prose and transcripts: the command words, up to the first argument."""
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"`medscale ([^`]+)`", text) + re.findall(r"^\$ medscale (.+)$", text, re.M)
    groups = {"recipe", "data", "jobs", "submit", "sweep"}
    out = []
    for rest in found:
        words = rest.split()
        path = words[:2] if words[0] in groups and len(words) > 1 and words[1].isalpha() else words[:1]
        if path not in out:
            out.append(path)
    return out


@pytest.mark.parametrize("words", _mentioned(), ids=" ".join)
def test_every_command_readme_mentions_exists(words):
    r = cli(*words, "--help")
    assert r.returncode == 0 and "Usage" in r.stdout, f"README mentions `medscale {' '.join(words)}`: {r.stderr}"
