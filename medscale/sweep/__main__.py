"""One process of a sweep trial: `python -m medscale.sweep RECIPE [key=value ...]` (or under `accelerate launch
-m medscale.sweep`): the `trial` entry, train then eval. The stop flag is installed first, as for training."""
from medscale.jobs.stop import stop_flag

stop_flag().install()

from medscale.train.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main(kind="trial")
