"""ARCHITECTURE.md's import rules, checked against the code. The Packages table is the one copy of the rules: its
"may import (of ours)" column is read here, nothing is restated. Every import is checked, module-level and
function-level alike: a deferred import still runs, so it is still a dependency (deferring is for start-up time, not
a way around a rule). The modules the document names torch-free import no heavy library at module level, so
`medscale jobs ...` starts in about a second."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO

ROOTS = ("medscale", "launcher")  # our code; any other import is a library
HEAVY = ("torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "ray")


def _module_name(path: Path, repo: Path) -> str:
    parts = list(path.relative_to(repo).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass(frozen=True)
class Row:
    label: str  # the package cell as written, for messages
    owns: tuple[tuple[str, bool], ...]  # (module, is a package: owns its sub-modules too)
    may: frozenset[str] | None  # None: everything
    cell: str  # the "may import" cell as written


class Map:
    """The Packages table of `doc`, read against the modules under `repo`.

    A row's first cell names what it holds (`medscale/x.py`: that module; `medscale/x/`: that package; other names,
    such as `recipes/`, are data). Its last cell: "everything"; "nothing" or "–"; else the backticked names, each
    `medscale.NAME` or a top-level package of ours. Parentheses hold reasons and what follows " — " is commentary
    ("never `train`"): neither allows anything. "every package may import `x`" anywhere in the table allows `x`
    everywhere."""

    def __init__(self, doc: str, repo: Path):
        self.repo = repo
        self.files = sorted(p for root in ROOTS for p in (repo / root).rglob("*.py"))
        self.modules = {_module_name(p, repo) for p in self.files}
        table = [line for line in doc.split("## Packages", 1)[1].split("\n## ", 1)[0].splitlines()
                 if line.startswith("|")][2:]  # past the header and its rule
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table]
        self.rows = [Row(c[0], self._owns(c[0]), self._allowed(c[0], c[-1]), c[-1]) for c in cells]
        self.everywhere = frozenset(self._name(n, "the table") for text in re.findall(
            r"every package may import ([^)]*)", "\n".join(table)) for n in re.findall(r"`([^`]+)`", text))
        torch_free = re.search(r"checks that (.*?)\simport no torch at module level", doc, re.S)
        assert torch_free, "ARCHITECTURE.md no longer says which modules import no torch at module level"
        self.torch_free = [self._name(n.rstrip("/").replace("/", "."), "the torch-free sentence")
                           for n in re.findall(r"`([^`]+)`", torch_free.group(1))]

    def _name(self, name: str, where: str) -> str:
        for module in (f"medscale.{name}", name):
            if module in self.modules:
                return module
        pytest.fail(f"ARCHITECTURE.md: `{name}` in {where} is no module of ours")

    def _owns(self, label: str) -> tuple[tuple[str, bool], ...]:
        out = []
        for token in re.findall(r"`([^`]+)`", label):
            if not token.startswith(tuple(f"{r}/" for r in ROOTS)):
                continue  # data shipped beside the code: recipes/, ds_configs/, ...
            if not (self.repo / token).exists():
                pytest.fail(f"ARCHITECTURE.md's Packages table names {token}, which does not exist")
            out.append((_module_name(self.repo / token.rstrip("/"), self.repo), token.endswith("/")))
        return tuple(out)

    def _allowed(self, label: str, cell: str) -> frozenset[str] | None:
        text = re.sub(r"\([^()]*\)", "", cell).split(" — ")[0].strip()
        if text.startswith("everything"):
            return None
        names = re.findall(r"`([^`]+)`", text)
        assert names or text in ("nothing", "–"), f"ARCHITECTURE.md, row {label}: cannot read {cell!r}"
        return frozenset(self._name(n, f"the row {label}") for n in names)

    def row(self, module: str) -> Row | None:
        """The row that holds `module`: the most specific one naming it or a package above it."""
        best = None
        for row in self.rows:
            for owned, package in row.owns:
                if (module == owned or package and module.startswith(owned + ".")) and (
                        best is None or len(owned) > len(best[0])):
                    best = (owned, row)
        return best[1] if best else None

    def ours(self, name: str) -> str | None:
        """The module of ours an imported name lives in (its longest prefix that is a module), or None: a library."""
        parts = name.split(".")
        if parts[0] not in ROOTS:
            return None
        return next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in self.modules),
                    None)

    def imports(self, path: Path, module_level: bool = False):
        """(line, imported name) for every import in `path`; `module_level`: not those inside a function."""
        tree = ast.parse(path.read_text(encoding="utf-8"))
        package = _module_name(path, self.repo).split(".")
        if path.name != "__init__.py":
            package.pop()
        todo = list(ast.iter_child_nodes(tree))
        while todo:
            node = todo.pop()
            if module_level and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            todo += ast.iter_child_nodes(node)
            if isinstance(node, ast.Import):
                yield from ((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module  # `from .x import y` is read as the absolute name it stands for
                if node.level:
                    base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
                # `from medscale import settings` imports a module; `from medscale.registry import Registry` a name
                yield from ((node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in self.modules else base)
                            for a in node.names)

    def allows(self, allowed: str, module: str) -> bool:
        """Naming a module allows it and its sub-modules in the same row (`jobs`: all of jobs/; `medscale`, the root,
        only its own module, since every other package has a row of its own)."""
        return module == allowed or module.startswith(allowed + ".") and self.row(module) is self.row(allowed)

    def violations(self) -> list[str]:
        bad = []
        for path in self.files:
            me = self.row(_module_name(path, self.repo))
            if me is None or me.may is None:
                continue  # a module in no row is the other test's finding
            ours = {(line, them) for line, name in self.imports(path) if (them := self.ours(name)) is not None}
            for line, them in sorted(ours):
                if self.row(them) is me or any(self.allows(a, them) for a in me.may | self.everywhere):
                    continue
                bad.append(f"{path.relative_to(self.repo)}:{line}: imports {them}, which ARCHITECTURE.md's row "
                           f"{me.label} does not allow (may import: {me.cell})")
        return bad


@pytest.fixture(scope="module")
def arch() -> Map:
    return Map((REPO / "ARCHITECTURE.md").read_text(encoding="utf-8"), REPO)


def test_every_module_imports_only_what_its_row_of_architecture_md_allows(arch):
    bad = arch.violations()
    assert not bad, "\n".join(bad)


def test_every_module_is_in_a_row_of_architecture_md(arch):
    missing = [str(p.relative_to(REPO)) for p in arch.files if arch.row(_module_name(p, REPO)) is None]
    assert not missing, f"in no row of ARCHITECTURE.md's Packages table: {missing}"


def test_the_modules_architecture_md_calls_torch_free_import_no_torch_at_module_level(arch):
    assert arch.torch_free
    bad = [f"{p.relative_to(REPO)}:{line}: {name}" for p in arch.files
           if any(_module_name(p, REPO) == m or _module_name(p, REPO).startswith(m + ".") for m in arch.torch_free)
           for line, name in arch.imports(p, module_level=True) if name.split(".")[0] in HEAVY]
    assert not bad, "\n".join(bad)


DOC = """# a map

## Packages

| package | holds | may import (of ours) |
|---|---|---|
| `medscale/__init__.py` | the root (every package may import `medscale`) | nothing |
| `medscale/low.py` | a leaf | nothing |
| `medscale/mid/` | a package | `low` (a reason: `high` is never allowed by a reason) — never `high` |
| `medscale/high.py` | the top | everything |

The test also checks that `low` import no torch at module level.
"""


def _tree(tmp_path: Path, files: dict[str, str]) -> Map:
    for name, text in {"medscale/__init__.py": "", "medscale/mid/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return Map(DOC, tmp_path)


def test_a_forbidden_import_names_the_file_line_import_and_row_even_inside_a_function(tmp_path):
    arch = _tree(tmp_path, {"medscale/low.py": "", "medscale/high.py": "import medscale.mid\n",
                            "medscale/mid/a.py": "from medscale import low, medscale_home\nfrom .b import x\n",
                            "medscale/mid/b.py": "def f():\n    import json\n    from medscale.high import g\n"})
    assert arch.violations() == [
        "medscale/mid/b.py:3: imports medscale.high, which ARCHITECTURE.md's row `medscale/mid/` does not allow "
        "(may import: `low` (a reason: `high` is never allowed by a reason) — never `high`)"]


def test_a_module_in_no_row_and_a_name_of_no_module_are_found(tmp_path):
    arch = _tree(tmp_path, {"medscale/low.py": "", "medscale/high.py": "", "medscale/stray.py": ""})
    assert [p.name for p in arch.files if arch.row(_module_name(p, tmp_path)) is None] == ["stray.py"]
    with pytest.raises(pytest.fail.Exception, match="`gone` in the row `medscale/mid/` is no module of ours"):
        Map(DOC.replace("`low` (a", "`gone` (a"), tmp_path)


MAX_LINES = 500


def test_no_module_is_over_500_lines():
    """A module holds one program (issue 21): one over 500 lines holds several and is split into modules named for
    what they hold, as recipe.py became recipe/ and launcher/ray.py launcher/ray/."""
    long = [f"{p.relative_to(REPO)} ({n} lines)" for root in ("medscale", "launcher")
            for p in sorted((REPO / root).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES]
    assert not long, f"over {MAX_LINES} lines: {', '.join(long)}"
