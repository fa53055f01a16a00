"""The HTML pages medscale writes (report.html, compare.html, the judge's page) rendered from Jinja2 templates in
`medscale/templates/` with autoescape on: every value a page shows (job names, recipe text, data records, benchmark
questions, model answers) comes from users or their data, and escaping by hand in each module missed one sooner or
later. A leaf module: every package may use it."""
from __future__ import annotations

import functools

import jinja2


@functools.cache
def _environment() -> jinja2.Environment:
    # PackageLoader reads the templates from the checkout or the installed wheel alike (package data);
    # StrictUndefined: a misspelt name is an error at render time, not an empty cell.
    return jinja2.Environment(loader=jinja2.PackageLoader("medscale", "templates"), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def render(template: str, **context) -> str:
    """`render("report.html", report=...)`: the page, every value escaped unless a template marks it safe."""
    return _environment().get_template(template).render(**context)
