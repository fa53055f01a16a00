"""One process of a run: `accelerate launch -m medscale.train RECIPE [key=value ...]`.

Every process re-loads and re-validates the recipe from the same name and overrides.
"""
import logging
import sys

from medscale.errors import user_errors
from medscale.recipe import load_recipe


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    with user_errors():
        recipe = load_recipe(argv[0], argv[1:])
        from medscale.train.run import run

        run(recipe)


if __name__ == "__main__":
    main()
