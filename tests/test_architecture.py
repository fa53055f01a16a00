"""ARCHITECTURE.md's import rules, checked: which package may import which (static imports, read with ast), and
that the job record stays free of torch so `medscale jobs ...` starts in about a second."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# package -> what it may import of ours (besides itself); ARCHITECTURE.md shows the same table
MAY_IMPORT = {
    "medscale.errors": set(),
    "medscale.paths": set(),
    "medscale.markdown": set(),
    "medscale.settings": {"medscale.errors"},
    "medscale.recipe": {"medscale.errors", "medscale.paths", "medscale.data.formats"},
    "medscale.data": {"medscale.recipe", "medscale.errors"},
    "medscale.model": {"medscale.recipe", "medscale.errors", "medscale.data"},
    "medscale.registry": {"medscale.errors", "medscale.jobs.status"},
    "medscale.jobs": {"medscale.registry", "medscale.recipe", "medscale.errors"},
    "medscale.plan": {"medscale.recipe", "medscale.model", "medscale.errors"},
    "medscale.preflight": {"medscale.recipe", "medscale.data", "medscale.model", "medscale.jobs",
                           "medscale.registry", "medscale.plan", "medscale.eval", "medscale.errors"},
    "medscale.train": {"medscale.recipe", "medscale.data", "medscale.model", "medscale.jobs", "medscale.registry",
                       "medscale.preflight", "medscale.plan", "medscale.eval", "medscale.errors"},
    "medscale.generate": {"medscale.data", "medscale.errors"},
    "medscale.eval": {"medscale.recipe", "medscale.data", "medscale.model", "medscale.jobs", "medscale.registry",
                      "medscale.generate", "medscale.errors"},
    "medscale.report": {"medscale.jobs", "medscale.registry", "medscale.eval", "medscale.errors"},
    "medscale.sweep": {"medscale.recipe", "medscale.jobs", "medscale.registry", "medscale.train", "medscale.eval",
                       "medscale.model", "medscale.report", "medscale.errors"},
    "medscale.export": {"medscale.jobs", "medscale.model", "medscale.data", "medscale.eval", "medscale.errors"},
    "launcher": {"medscale.recipe", "medscale.jobs", "medscale.registry", "medscale.preflight", "medscale.paths",
                 "medscale.errors"},
}
ALWAYS = {"medscale", "medscale.paths", "medscale.markdown", "medscale.settings"}  # the root and the leaves all use
TORCH_FREE = ("medscale.jobs", "medscale.registry", "medscale.recipe", "medscale.preflight", "medscale.plan")
HEAVY = ("torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "ray")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return out


def _owner(module: str) -> str | None:
    return max((k for k in MAY_IMPORT if module == k or module.startswith(k + ".")), key=len, default=None)


def _files():
    return [p for p in list((REPO / "medscale").rglob("*.py")) + list((REPO / "launcher").glob("*.py"))
            if "migrations" not in p.parts]


def test_every_package_imports_only_what_architecture_md_allows():
    bad = []
    for path in _files():
        me = _owner(_module_name(path))
        if me is None:  # the CLI (may import everything)
            continue
        for imp in _imports(path):
            them = _owner(imp)
            if them is None or them == me or them in ALWAYS or imp in MAY_IMPORT[me]:
                continue
            if not any(imp == a or imp.startswith(a + ".") or them == a for a in MAY_IMPORT[me]):
                bad.append(f"{path.relative_to(REPO)}: {me} imports {imp}")
    assert not bad, "\n".join(bad)


def test_the_job_record_and_the_registry_import_no_torch():
    bad = [f"{p.relative_to(REPO)}: {imp}" for p in _files() if _module_name(p).startswith(TORCH_FREE)
           for imp in _imports(p, top_level_only=True) if imp.split(".")[0] in HEAVY]
    assert not bad, "\n".join(bad)


def test_the_architecture_map_names_every_package():
    text = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    packages = {_module_name(p) for p in REPO.glob("medscale/*/__init__.py")} | {"launcher"}
    missing = [p for p in sorted(packages) if f"`{p.replace('.', '/')}/`" not in text]
    assert not missing, f"ARCHITECTURE.md does not describe {missing}"
