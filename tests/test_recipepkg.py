"""The recipe package (issue 21, deliverable 5): a recipe is read without the data package, and the record layouts
a recipe may name are the ones the data package converts."""
from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO


def _python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter, so the modules it imports are the ones the code needs and no test's leftovers."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_loading_a_recipe_imports_nothing_of_the_data_package():
    """Defect: the recipe imported medscale.data.formats for the format names, so reading a recipe loaded the data
    package that itself reads recipes (issue 21: recipe -> data was a broken import rule)."""
    r = _python("""
        import sys
        from medscale.recipe import load_recipe
        load_recipe("tiny-demo", ["data.sources=[{path: x.jsonl, format: alpaca}]"])
        print(sorted(m for m in sys.modules if m.startswith("medscale.data")))
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "[]"


def test_a_format_the_recipe_does_not_list_stops_the_data_package_loading():
    """The names live in the recipe and the conversions in data: the two lists cannot drift apart unnoticed."""
    r = _python("""
        import medscale.recipe
        medscale.recipe.FORMAT_NAMES = tuple(n for n in medscale.recipe.FORMAT_NAMES if n != "wenda")
        import medscale.data.formats
    """)
    assert r.returncode != 0
    assert "ImportError" in r.stderr and "FORMAT_NAMES" in r.stderr and "wenda" in r.stderr, r.stderr[-3000:]
