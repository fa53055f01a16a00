"""The `medscale` command: thin wrappers over library functions, one module per command group.

Every command passes through one error boundary (`medscale.errors.user_errors`): a person's mistake is one line
and exit 2, `--debug` (or MEDSCALE_DEBUG=1) shows the traceback too. `--debug`, `-q` and `-v` go before or after
the command's name (medscale.cli.app.GLOBAL_OPTIONS).
"""
from __future__ import annotations

import typer

from medscale.cli.app import GLOBAL_OPTIONS, App, apply_global_options
from medscale.cli.compare import app as compare_commands
from medscale.cli.data import data_app
from medscale.cli.eval import app as eval_commands
from medscale.cli.export import app as export_commands
from medscale.cli.jobs import jobs_app
from medscale.cli.judge import app as judge_commands
from medscale.cli.report import app as report_commands
from medscale.cli.serve import app as serve_commands
from medscale.cli.submit import submit_app
from medscale.cli.sweep import sweep_app
from medscale.cli.train import app as train_commands
from medscale.cli.train import recipe_app

app = App(name="medscale", no_args_is_help=True,
          help="Fine-tune medical LLMs from one recipe, on a laptop, SLURM or Ray.")


def versions() -> list[tuple[str, str]]:
    """(package, version) of medscale and what a bug report needs: torch, transformers, peft always; bitsandbytes,
    deepspeed and ray where installed. Read from the installed metadata: nothing is imported."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from medscale import __version__

    out = [("medscale", __version__), ("python", platform.python_version())]
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "deepspeed", "ray"):
        try:
            out.append((name, version(name)))
        except PackageNotFoundError:
            if name in ("torch", "transformers", "peft"):
                out.append((name, "not installed"))
    return out


def _print_versions(value: bool) -> None:
    if value:
        typer.echo("\n".join(f"{name} {v}" for name, v in versions()))
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_versions,
                                       help="print the versions of medscale, torch, transformers, peft, accelerate "
                                            "(and bitsandbytes, deepspeed, ray where installed), then exit"),
          debug: bool = GLOBAL_OPTIONS["debug"], quiet: bool = GLOBAL_OPTIONS["quiet"],
          verbose: bool = GLOBAL_OPTIONS["verbose"]) -> None:
    from medscale.errors import user_errors

    with user_errors():
        apply_global_options(debug, quiet, verbose)


for _group in (train_commands, eval_commands, compare_commands, judge_commands, serve_commands, report_commands,
               export_commands):
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
        app(prog_name="medscale")
