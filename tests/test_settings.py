"""`medscale/settings.py` is the one place `MEDSCALE_*` variables are declared and read: no other module of medscale/
or launcher/ reads one from the environment (checked with ast), every name the project uses is declared, and
README's table is the declarations'."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO
from medscale import settings
from medscale.errors import UserError

SETTINGS_PY = REPO / "medscale" / "settings.py"
# Shell variables of slurm/common.sh that share the prefix but are never in the environment (not exported)
NOT_ENVIRONMENT = {"MEDSCALE_EXIT_PREEMPTED", "MEDSCALE_EXIT_CANCELLED"}


def _sources() -> list[Path]:
    return sorted(p for p in [*(REPO / "medscale").rglob("*.py"), *(REPO / "launcher").rglob("*.py")]
                  if p != SETTINGS_PY)


def _is_key(node: ast.AST, keys: set[str]) -> bool:
    """A MEDSCALE_* name: the literal, a constant bound to one (`ENV_ENTRY`), or a declaration's `.name`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.startswith(settings.PREFIX)
    if isinstance(node, ast.Name):
        return node.id in keys
    return isinstance(node, ast.Attribute) and node.attr == "name" and ast.unparse(node.value).startswith("settings.")


def _key_constants(trees: list[ast.Module]) -> set[str]:
    """Module-level names bound to a MEDSCALE_* name anywhere in the project (so an import of one is seen too)."""
    return {t.id for tree in trees for node in tree.body if isinstance(node, ast.Assign)
            and _is_key(node.value, set()) for t in node.targets if isinstance(t, ast.Name)}


def _environment_names(tree: ast.Module) -> set[str]:
    """Names that stand for the process environment: `from os import environ`, and parameters defaulting to
    os.environ (`def from_env(cls, env=os.environ)`)."""
    names = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "os"
             for a in n.names if a.name == "environ"}
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = fn.args.posonlyargs + fn.args.args
            pairs = list(zip(args[len(args) - len(fn.args.defaults):], fn.args.defaults))
            pairs += [(a, d) for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None]
            names |= {a.arg for a, d in pairs if ast.unparse(d) == "os.environ"}
    return names


def environment_reads(source: str, keys: set[str] = frozenset()) -> list[int]:
    """Lines that read a MEDSCALE_* variable from the environment: `os.environ.get(K)`, `os.environ[K]`, `K in
    os.environ`, `os.getenv(K)`, `os.environ.pop(K)`, and the same through an environment name. Writes (a child's
    environment, `setdefault`) are not reads."""
    tree = ast.parse(source)
    env_names = _environment_names(tree)

    def is_env(node: ast.AST) -> bool:
        return ast.unparse(node) == "os.environ" or (isinstance(node, ast.Name) and node.id in env_names)

    lines = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and n.args and _is_key(n.args[0], keys) and isinstance(n.func, ast.Attribute) and (
                (n.func.attr in ("get", "pop") and is_env(n.func.value)) or ast.unparse(n.func) == "os.getenv"):
            lines.append(n.lineno)
        elif isinstance(n, ast.Subscript) and isinstance(n.ctx, ast.Load) and is_env(n.value) \
                and _is_key(n.slice, keys):
            lines.append(n.lineno)
        elif isinstance(n, ast.Compare) and _is_key(n.left, keys) and any(
                isinstance(op, (ast.In, ast.NotIn)) and is_env(c) for op, c in zip(n.ops, n.comparators)):
            lines.append(n.lineno)
    return lines


@pytest.mark.parametrize("snippet", [
    'import os\nos.environ.get("MEDSCALE_HOME", "~")',
    'import os\nos.environ["MEDSCALE_HOME"]',
    'import os\n"MEDSCALE_HOME" in os.environ',
    'import os\nos.getenv("MEDSCALE_HOME")',
    'from os import environ\nenviron.get("MEDSCALE_HOME")',
    'import os\nENV_ENTRY = "MEDSCALE_ENTRY"\ndef f(env=os.environ):\n    return env.get(ENV_ENTRY)',
    'import os\nfrom medscale import settings\nos.environ.get(settings.HOME.name)',
])
def test_the_check_sees_every_way_of_reading_the_environment(snippet):
    tree = ast.parse(snippet)
    assert environment_reads(snippet, _key_constants([tree])), snippet


@pytest.mark.parametrize("snippet", [
    'import os\nos.environ["MEDSCALE_DEBUG"] = "1"',  # a write
    'import os\nos.environ.setdefault("MEDSCALE_LAUNCHER", "ray")',  # a default for this process's own readers
    'import os\nenv = {**os.environ, "MEDSCALE_ENTRY": "trial"}',  # a child's environment
    'import os\nos.environ.get("RANK", "0")',  # not ours
])
def test_the_check_lets_writes_and_other_variables_pass(snippet):
    assert not environment_reads(snippet, _key_constants([ast.parse(snippet)])), snippet


def test_no_module_but_settings_reads_a_medscale_variable():
    texts = {p: p.read_text(encoding="utf-8") for p in _sources()}
    keys = _key_constants([ast.parse(t) for t in texts.values()])
    bad = [f"{p.relative_to(REPO)}:{line}" for p, text in texts.items() for line in environment_reads(text, keys)]
    assert not bad, "read MEDSCALE_* through medscale.settings (declare it there if new):\n" + "\n".join(bad)


def test_every_medscale_variable_the_project_names_is_declared():
    files = [p for d in ("medscale", "launcher", "slurm", "cluster", "tests", "bench") if (REPO / d).is_dir()
             for p in (REPO / d).rglob("*") if p.suffix in (".py", ".sh", ".yaml", ".yml", ".md") and p.is_file()]
    files += [REPO / "README.md", REPO / "ARCHITECTURE.md"]
    named = {(m, p.relative_to(REPO)) for p in files for m in re.findall(r"MEDSCALE_[A-Z0-9_]*[A-Z0-9]",
                                                                         p.read_text(encoding="utf-8"))}
    missing = sorted(f"{m} ({p})" for m, p in named if m not in settings.ALL and m not in NOT_ENVIRONMENT)
    assert not missing, "declare these in medscale/settings.py:\n" + "\n".join(missing)


def test_readme_lists_every_setting_as_declared():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Settings\b.*?(?=^## |\Z)", text, re.S | re.M)
    assert section, "README.md has no `## Settings` section"
    table = "\n".join(line for line in section.group(0).splitlines() if line.startswith("|"))
    assert table == settings.markdown_table(), \
        "README's settings table differs from medscale/settings.py; it should read:\n" + settings.markdown_table()


def test_a_setting_is_read_when_asked_not_at_import(monkeypatch):
    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "7.5")
    assert settings.HEARTBEAT_S.get() == 7.5
    monkeypatch.setenv("MEDSCALE_HEARTBEAT_S", "")  # empty counts as unset, as ${VAR:-default} does
    assert settings.HEARTBEAT_S.get() == 30.0
    assert settings.RAY_USE_GPU.get({"MEDSCALE_RAY_USE_GPU": "auto"}) is None
    assert settings.RAY_USE_GPU.get({"MEDSCALE_RAY_USE_GPU": "Yes"}) is True


def test_a_value_that_cannot_be_read_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("MEDSCALE_RAY_MAX_FAILURES", "three")
    with pytest.raises(UserError, match=r"MEDSCALE_RAY_MAX_FAILURES='three' cannot be read .* default \(3\)"):
        settings.RAY_MAX_FAILURES.get()


def test_a_recipe_reads_a_medscale_variable_through_its_declaration_and_a_misspelt_one_is_an_error(tmp_path,
                                                                                                monkeypatch):
    """`${MEDSCALE_*}` in a recipe is a setting like any other: read through medscale.settings (empty counts as
    unset), and a name settings does not declare is one line with the close one, not a silent default."""
    from medscale.recipe import RecipeError, load_recipe

    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: tiny-demo\nmodel: {path: '${MEDSCALE_MODELS:-/fallback}/m'}\n", encoding="utf-8")
    monkeypatch.setenv("MEDSCALE_MODELS", "/models")
    assert load_recipe(str(recipe)).model.path == "/models/m"
    monkeypatch.setenv("MEDSCALE_MODELS", "")
    assert load_recipe(str(recipe)).model.path == "/fallback/m"
    typo = settings.MODELS.name[:-1]  # the name less its S, built so the declared-names check does not read it
    recipe.write_text(f"base: tiny-demo\nmodel: {{path: '${{{typo}:-/fallback}}/m'}}\n", encoding="utf-8")
    monkeypatch.setenv(typo, "/typo")
    with pytest.raises(RecipeError, match=rf"\$\{{{typo}\}} is not a medscale setting: did you mean "
                                          rf"\$\{{{settings.MODELS.name}\}}\?"):
        load_recipe(str(recipe))
