"""One process of a run: `accelerate launch -m medscale.train RECIPE [key=value ...]`.

Every process re-loads and re-validates the recipe from the same name and overrides. The stop flag is installed
before anything slow is imported, so a SIGTERM during start-up still ends in exit 75 (requeue), never 143.
"""
import sys

from medscale.jobs.stop import stop_flag

stop_flag().install()

import os  # noqa: E402
import threading  # noqa: E402


def _die_with_launcher() -> None:
    """A worker started by torchrun stops when torchrun is gone (killed with -9, by the OOM killer, with its
    parent `medscale train`): orphaned, it would train on unseen and hold the GPUs. The attempt shows `lost`."""
    parent = os.getppid()

    def watch():
        import time

        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(137)

    threading.Thread(target=watch, name="medscale-orphan-watch", daemon=True).start()


def main(argv: list[str] | None = None, kind: str = "train") -> None:
    """Load and validate the recipe, then run the entry of `kind` (medscale.jobs.launch.ENTRIES) on it."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _die_with_launcher()
    from medscale import setup_logging
    from medscale.errors import user_errors

    setup_logging()
    from medscale.recipe import load_recipe

    with user_errors():
        recipe = load_recipe(argv[0], argv[1:])
        from medscale.jobs.launch import entry_for

        entry_for(kind).load()(recipe)


if __name__ == "__main__":
    main()
