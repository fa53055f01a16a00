"""One process of a sweep trial: `python -m medscale.sweep RECIPE [key=value ...]` (or under `accelerate launch
-m medscale.sweep`), the alias of `python -m medscale.jobs trial RECIPE ...`: train, then eval."""
import sys

from medscale.jobs.__main__ import main

if __name__ == "__main__":
    main(["trial", *sys.argv[1:]])
