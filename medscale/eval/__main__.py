"""One process of an evaluation job: `accelerate launch -m medscale.eval RECIPE [key=value ...]` (what the launchers
start for `--entry eval`). The stop flag is installed first: SIGTERM (preemption) ends it at once with exit 75, so
SLURM requeues it, Ctrl-C with exit 4."""
import sys

from medscale.errors import user_errors
from medscale.jobs.stop import stop_flag


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        stop_flag().install(at_once=True)  # first thing: nothing slow is imported yet
        import logging

        from medscale.recipe import load_recipe

        argv = sys.argv[1:] if argv is None else argv
        if not argv or argv[0] in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0 if argv else 2)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
        from medscale.eval.job import run_job

        run_job(load_recipe(argv[0], argv[1:]))


if __name__ == "__main__":
    main()
