"""`medscale report JOB... | SWEEP`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from medscale.cli.app import AS_JSON, App, echo_json

app = App()


@app.command("report")
def report(refs: list[str] = typer.Argument(..., help="jobs (id, name or output dir) and/or sweeps: their runs side "
                                                      "by side"),
           out: Optional[Path] = typer.Option(None, "--out", help="folder for report.md / report.html / report.json "
                                                                  "and the PNG curves (default: "
                                                                  "$MEDSCALE_HOME/reports/<first ref>)"),
           steps: Optional[str] = typer.Option(None, "--steps", help="steps for the tables, e.g. 100,200,300,400 "
                                                                   "(default: quarters of the longest run)"),
           as_json: bool = AS_JSON) -> None:
    """Runs side by side, from the registry. First the versions table, printed too: bases and fine-tunes ranked by
    accuracy (with its interval), the judge's win rate against its own base and per criterion (when a judgement of
    the pair is stored), the degenerate answers (DEGENERATE: significantly more than its base), the forgetting
    guard's change and one verdict line. Then loss and eval loss at chosen steps with each run's change in %, stages,
    grad-norm range and variation, the lr schedule, benchmark deltas against the base, the forgetting verdict, and
    the curves (report.md, report.html, report.json)."""
    import json
    import re

    from medscale import medscale_home
    from medscale.paths import folder_problem
    from medscale.registry import Registry
    from medscale.report.build import ReportError, write_report

    chosen = None
    if steps:
        if not re.fullmatch(r"\d+(,\d+)*", steps.replace(" ", "")):
            raise ReportError(f"--steps {steps!r}: expected step numbers separated by commas, e.g. 100,200,300,400")
        chosen = [int(s) for s in steps.replace(" ", "").split(",")]
    folder = out or medscale_home() / "reports" / re.sub(r"[^\w.+-]+", "_", refs[0])
    if why := folder_problem(folder):
        raise ReportError(f"{'--out ' if out else 'report folder '}{folder}: {why}")
    with Registry() as reg:
        paths, notes = write_report(reg, refs, folder, chosen)
    if as_json:
        echo_json({"folder": str(folder), "notes": notes, "files": {name: str(p) for name, p in paths.items()}})
        return
    from medscale.report.versions import table_markdown

    typer.echo(table_markdown(json.loads(paths["report.json"].read_text(encoding="utf-8"))["versions"]))
    for note in notes:
        typer.echo(f"medscale: {note}")
    typer.echo(f"medscale: report written to {folder}")
    for name in ("report.html", "report.md", "report.json"):
        typer.echo(f"  {name:12s} {paths[name]}")
