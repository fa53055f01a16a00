"""Training: `run(recipe)`, its callbacks, tracking and end-of-run report."""
from medscale.train.run import run

__all__ = ["run"]
