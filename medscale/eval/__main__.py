"""One process of an evaluation job: `accelerate launch -m medscale.eval REF [key=value ...]` (what the launchers
start for the eval kind), the alias of `python -m medscale.jobs eval REF ...`. REF is an evaluation's job file, or a
recipe whose trained model is evaluated. A stop signal ends it at once (exit 75, SLURM requeues it; Ctrl-C exit 4);
the questions it had scored stay in its results cache, and the next attempt skips them."""
import sys

from medscale.jobs.__main__ import main

if __name__ == "__main__":
    main(["eval", *sys.argv[1:]])
