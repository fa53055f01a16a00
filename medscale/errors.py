"""Exit codes and the one place user errors become a clear message instead of a traceback."""
from __future__ import annotations

import contextlib
import sys

EXIT_BAD_INPUT = 2  # a recipe, data file or argument that cannot work; nothing was written


@contextlib.contextmanager
def user_errors():
    """Bad recipes and bad data exit 2 with one message; real bugs keep their traceback."""
    from medscale.data.chat import TemplateError
    from medscale.data.formats import DataError
    from medscale.recipe import RecipeError

    try:
        yield
    except (RecipeError, DataError, TemplateError) as e:
        print(f"medscale: error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
