"""The pieces every command module shares: the Typer class whose commands all pass through one error boundary,
the common arguments, and logging set-up."""
from __future__ import annotations

import functools
import json
from typing import Callable

import typer

from medscale import setup_logging  # noqa: F401  (re-exported: the CLI modules set logging up through here)
from medscale.errors import user_errors


class App(typer.Typer):
    """A Typer whose every command runs inside `user_errors()`: a person's mistake is one line and exit 2 (a stopped
    run exits 75 or 4), whether the command is run from a shell or in-process by a test's CliRunner."""

    def command(self, *args, **kwargs) -> Callable:
        register = super().command(*args, **kwargs)

        def wrap(fn: Callable) -> Callable:
            @functools.wraps(fn)
            def guarded(*a, **kw):
                with user_errors():
                    return fn(*a, **kw)

            register(guarded)
            return fn

        return wrap


OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. train.learning_rate=5e-6 adapter.r=8")
AS_JSON = typer.Option(False, "--json", help="one JSON document instead of a table")


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, default=str))
