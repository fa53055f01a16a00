"""The `medscale` command: thin wrappers over library functions, one module per command group.

Every command passes through one error boundary (`medscale.errors.user_errors`): a person's mistake is one line
and exit 2, `--debug` (or MEDSCALE_DEBUG=1) shows the traceback instead.
"""
from __future__ import annotations

import os

import typer

from medscale import settings
from medscale.cli.app import App
from medscale.cli.data import data_app
from medscale.cli.eval import app as eval_commands
from medscale.cli.export import app as export_commands
from medscale.cli.jobs import jobs_app
from medscale.cli.judge import app as judge_commands
from medscale.cli.report import app as report_commands
from medscale.cli.submit import submit_app
from medscale.cli.sweep import sweep_app
from medscale.cli.train import app as train_commands
from medscale.cli.train import recipe_app

app = App(add_completion=False, no_args_is_help=True,
          help="Fine-tune medical LLMs from one recipe, on a laptop, SLURM or Ray.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="show tracebacks instead of one-line errors")) -> None:
    if debug:
        os.environ[settings.DEBUG.name] = "1"


for _group in (train_commands, eval_commands, judge_commands, report_commands, export_commands):
    for _cmd in _group.registered_commands:
        app.registered_commands.append(_cmd)
app.add_typer(recipe_app, name="recipe")
app.add_typer(data_app, name="data")
app.add_typer(jobs_app, name="jobs")
app.add_typer(submit_app, name="submit")
app.add_typer(sweep_app, name="sweep")


def main() -> None:
    from medscale.errors import user_errors
    from medscale.jobs.stop import stop_flag

    with user_errors():  # also around Typer's parsing: a stop at any moment ends in exit 75 or 4
        # First: every command stops at once; training switches to saving at its next step when it starts
        stop_flag().install(at_once=True)
        app()
