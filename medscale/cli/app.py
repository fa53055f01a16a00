"""The pieces every command module shares: the Typer class whose commands all pass through one error boundary and
take the global options, the common arguments, and logging set-up."""
from __future__ import annotations

import functools
import inspect
import json
import os
from typing import Callable

import typer

from medscale import settings, setup_logging
from medscale.errors import UserError, user_errors

# Options every command takes, before or after its name (`medscale --debug train R` = `medscale train R --debug`).
# They act through the environment, so the processes a command starts (launchers, workers) behave the same.
GLOBAL_OPTIONS = {
    "debug": typer.Option(False, "--debug", help="show the traceback of an error too (the exit code stays the same)"),
    "quiet": typer.Option(False, "--quiet", "-q", help="log warnings and errors only"),
    "verbose": typer.Option(False, "--verbose", "-v", help="log medscale's debug lines too"),
}


def apply_global_options(debug: bool = False, quiet: bool = False, verbose: bool = False) -> None:
    if quiet and verbose:
        raise UserError("-q/--quiet and -v/--verbose: give one of them")
    if debug:
        os.environ[settings.DEBUG.name] = "1"
    if quiet or verbose:
        os.environ[settings.LOG_LEVEL.name] = "WARNING" if quiet else "DEBUG"
        setup_logging()


def _with_global_options(fn: Callable, guarded: Callable) -> None:
    """Give `guarded` (fn's wrapper) fn's parameters plus the global options fn does not take itself (a command's
    own `--verbose` is the global one, and also does what the command says)."""
    sig = inspect.signature(fn, eval_str=True)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=bool)
             for name, option in GLOBAL_OPTIONS.items() if name not in sig.parameters]
    params = list(sig.parameters.values())
    var_kw = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    params = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD] + extra + var_kw
    guarded.__signature__ = sig.replace(parameters=params)
    guarded.__annotations__ = {**getattr(fn, "__annotations__", {}), **{p.name: bool for p in extra}}


class App(typer.Typer):
    """A Typer whose every command runs inside `user_errors()`: a person's mistake is one line and exit 2 (a stopped
    run exits 75 or 4), whether the command is run from a shell or in-process by a test's CliRunner. Help is plain
    text (Click's): Typer's rich panels show a flag as taking a `<bool>` value."""

    def __init__(self, **kwargs):
        super().__init__(**{"rich_markup_mode": None, **kwargs})

    def command(self, *args, **kwargs) -> Callable:
        register = super().command(*args, **kwargs)

        def wrap(fn: Callable) -> Callable:
            own = inspect.signature(fn).parameters

            @functools.wraps(fn)
            def guarded(*a, **kw):
                with user_errors():
                    apply_global_options(**{k: kw[k] if k in own else kw.pop(k) for k in GLOBAL_OPTIONS})
                    return fn(*a, **kw)

            _with_global_options(fn, guarded)
            register(guarded)
            return fn

        return wrap


OVERRIDES = typer.Argument(None, help="key=value overrides, e.g. train.learning_rate=5e-6 adapter.r=8")
AS_JSON = typer.Option(False, "--json", help="one JSON document instead of a table")


def echo_json(obj) -> None:
    typer.echo(json.dumps(obj, ensure_ascii=False, default=str))
