"""One process of a judge job: `python -m medscale.judge JOB_FILE [key=value ...]`, the alias of `python -m
medscale.jobs judge JOB_FILE ...`. A stop signal ends it at once; the answers and judge replies it had generated stay
in the engine's caches in the job's folder, and the next attempt asks only for the rest."""
import sys

from medscale.jobs.__main__ import main

if __name__ == "__main__":
    main(["judge", *sys.argv[1:]])
