"""One process of a run: `accelerate launch -m medscale.train RECIPE [key=value ...]`, the train kind's alias of
`python -m medscale.jobs train RECIPE [key=value ...]` (which installs the stop flag before anything slow)."""
import sys

from medscale.jobs.__main__ import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
