"""The `medscale` command follows the conventions of the tools our users know: every option has help in users'
words (never our seed-numbering shorthand), flags render as flags, `--version`, shell completion, `--json` wherever
a table is printed, `-q`/`-v`, `--debug` before or after the command (same exit code), `python -m medscale`,
internal commands hidden, and `submit --entry` naming every entry. The help walk covers every command, including
ones added later."""
from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import typer

from conftest import cli

REPO = Path(__file__).resolve().parents[1]
# Our shorthand for the project's history ("Seed 003's table", "Seed-002-style", "seed's"); a name that holds
# "seed" (the `--seed` option, the r1-distill-seed004 sweep, the seed004 question set) is not shorthand.
SEED_SHORTHAND = re.compile(r"(?<![\w-])seed(?:[ -]\d|'s| \d+'s)", re.IGNORECASE)
# Every command's globals travel with it: restored after each in-process call (CliRunner restores what env names).
ENV = {"MEDSCALE_DEBUG": None, "MEDSCALE_LOG_LEVEL": None}


def _commands():
    """(words, click command) of every command and group, hidden ones included."""
    from medscale.cli import app

    def walk(cmd, words):
        yield words, cmd
        for name, sub in (getattr(cmd, "commands", None) or {}).items():
            yield from walk(sub, [*words, name])

    return list(walk(typer.main.get_command(app), []))


COMMANDS = _commands()


@pytest.mark.parametrize("words,command", COMMANDS, ids=[" ".join(w) or "medscale" for w, _ in COMMANDS])
def test_help_gives_every_option_help_in_users_words(words, command):
    undocumented = [p.opts for p in command.params if not getattr(p, "help", None)]
    assert not undocumented, f"`medscale {' '.join(words)}`: options and arguments without help: {undocumented}"
    r = cli(*words, "--help")
    assert r.returncode == 0, r.stderr
    shorthand = [m.group(0) for m in SEED_SHORTHAND.finditer(r.stdout)]
    assert not shorthand, f"`medscale {' '.join(words)} --help` speaks our shorthand: {shorthand}"
    assert "<bool>" not in r.stdout, "a flag shown as taking a value"
    if not hasattr(command, "commands") or not words:  # a command, or the root: the global options
        assert all(flag in r.stdout for flag in ("--debug", "--quiet", "--verbose", "-q", "-v"))


def test_the_seed_check_catches_the_shorthand_and_spares_names():
    caught = ["Seed 003's table", "Seed-002-style tables", "seed 003's questions", "the seed's data"]
    spared = ["--seed INTEGER  sampling seed", "r1-distill-seed004", "(seed004, cmb-clin)", "seeded random N"]
    assert all(SEED_SHORTHAND.search(t) for t in caught) and not any(SEED_SHORTHAND.search(t) for t in spared)


def test_internal_commands_are_hidden_but_still_run():
    assert "slurm-task" not in cli("sweep", "--help").stdout
    assert cli("sweep", "slurm-task", "--help").returncode == 0


def test_version_names_medscale_and_the_libraries_a_bug_report_needs():
    import medscale

    r = cli("--version")
    assert r.returncode == 0
    shown = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert shown["medscale"] == medscale.__version__
    for name in ("torch", "transformers", "peft", "bitsandbytes", "deepspeed", "ray"):
        try:
            assert shown[name] == version(name)
        except PackageNotFoundError:
            assert name not in shown or shown[name] == "not installed"


def test_python_dash_m_medscale_is_the_command():
    r = subprocess.run([sys.executable, "-m", "medscale", "--version"], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("medscale "), r.stderr
    r = subprocess.run([sys.executable, "-m", "medscale", "check", "no-such-recipe"], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 2 and "Usage: medscale" not in r.stderr and "unknown recipe" in r.stderr


def test_shell_completion_is_offered_and_documented():
    assert "--install-completion" in cli("--help").stdout
    r = cli("--show-completion", "bash")
    assert r.returncode == 0 and "complete -o default -F _medscale_completion medscale" in r.stdout
    # what that script asks the command when TAB is pressed after `medscale rec`
    complete_var = "_{}_COMPLETE".format("medscale".upper())  # Click's name for it: _{PROG}_COMPLETE, not ours
    r = cli(env={complete_var: "complete_bash", "COMP_WORDS": "medscale rec", "COMP_CWORD": "1"})
    assert r.stdout.split() == ["recipes", "recipe"]
    assert "--install-completion" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_before_or_after_the_command_shows_the_traceback_and_keeps_the_exit_code(where):
    words = ["check", "no-such-recipe"]
    plain = cli(*words, env=ENV)
    debug = cli(*(["--debug", *words] if where == "before" else [*words, "--debug"]), env=ENV)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
    assert plain.stderr.strip().splitlines()[-1] == debug.stderr.strip().splitlines()[-1]  # the same one line


@pytest.mark.parametrize("flags,level", [(["-q"], logging.WARNING), (["--quiet"], logging.WARNING),
                                         (["-v"], logging.DEBUG), (["--verbose"], logging.DEBUG)])
@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_verbose_set_the_log_level(flags, level, where):
    from medscale import setup_logging

    try:
        r = cli(*(flags + ["recipes"] if where == "before" else ["recipes", *flags]), env=ENV)
        assert r.returncode == 0, r.stderr
        assert logging.getLogger("medscale").getEffectiveLevel() == level
    finally:
        setup_logging()  # ENV is restored by now: back to INFO for the tests that follow
    assert logging.getLogger("medscale").getEffectiveLevel() == logging.INFO
    both = cli("recipes", "-q", "-v", env=ENV)
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_the_processes_a_command_starts_log_at_its_level(monkeypatch):
    """-q / -v travel as MEDSCALE_LOG_LEVEL, which every entry point's setup_logging reads."""
    from medscale import setup_logging
    from medscale.errors import UserError

    try:
        for value, level in (("warning", logging.WARNING), ("debug", logging.DEBUG)):
            monkeypatch.setenv("MEDSCALE_LOG_LEVEL", value)
            setup_logging()
            assert logging.getLogger("medscale").getEffectiveLevel() == level
        monkeypatch.setenv("MEDSCALE_LOG_LEVEL", "loud")
        with pytest.raises(UserError, match="MEDSCALE_LOG_LEVEL='loud'"):
            setup_logging()
    finally:
        monkeypatch.delenv("MEDSCALE_LOG_LEVEL")
        setup_logging()


def test_json_wherever_a_table_is_printed():
    from medscale.recipe import builtin_names

    listed = json.loads(cli("recipes", "--json").stdout)
    assert [r["name"] for r in listed] == builtin_names() and all(r["description"] for r in listed)
    text = cli("recipe", "show", "tiny-demo", "train.max_steps=7").stdout
    shown = json.loads(cli("recipe", "show", "tiny-demo", "train.max_steps=7", "--json").stdout)
    assert f"# fingerprint: {shown['fingerprint']}" in text and shown["recipe"]["train"]["max_steps"] == 7
    words = ["check", "tiny-demo", "model.path=/nonexistent/model"]
    plain, as_json = cli(*words), cli(*words, "--json")
    report = json.loads(as_json.stdout)
    assert plain.returncode == as_json.returncode == 2 and report["ok"] is False
    assert any(f["level"] == "error" and f["topic"] == "model" for f in report["findings"])
    assert all(f["message"] in plain.stdout + plain.stderr for f in report["findings"])


def test_submit_entry_lists_every_entry():
    from medscale.jobs.launch import ENTRIES

    for launcher in ("slurm", "ray"):
        shown = " ".join(cli("submit", launcher, "--help").stdout.split())
        assert all(f"{name} (" in shown for name in ENTRIES), shown
