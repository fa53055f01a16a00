"""Text from data (questions, answers, labels, file names, notes) placed in the Markdown files medscale writes
(report.md, compare.md, eval.md, the sweep leaderboard). Markdown viewers render raw HTML, so a `<script>` or an
`<img onerror>` in a benchmark file would run in the reader's browser; the HTML pages are autoescaped templates
(medscale.html), the Markdown files use these two. A leaf module: every package may use it."""
from __future__ import annotations


def md_text(value) -> str:
    """Any value as Markdown text: `&` and `<` as entities, which a viewer shows as they were typed. No tag can
    open without `<`, so `>` stays as it is (`a -> b` reads as written in the file too)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;")


def md_cell(value) -> str:
    """One table cell: as md_text, with `|` escaped and line breaks as spaces (either would end the cell or row)."""
    return " ".join(md_text(value).replace("|", "\\|").splitlines())
