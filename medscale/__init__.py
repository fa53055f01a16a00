"""medscale: one recipe, three launchers, one training entry point, one registry."""
import os
from pathlib import Path

__version__ = "0.1.0"


def medscale_home() -> Path:
    """Where models, caches, runs and the default SQLite registry live (`$MEDSCALE_HOME`, default ~/.medscale)."""
    return Path(os.environ.get("MEDSCALE_HOME", "~/.medscale")).expanduser()


# Libraries whose INFO lines (and, for bitsandbytes on CPU, a warning about GPU kernels it cannot use) say nothing a
# person running medscale can act on: shown from ERROR (bitsandbytes) or WARNING up.
QUIET_LOGGERS = {"alembic": "WARNING", "httpx": "WARNING", "urllib3": "WARNING", "filelock": "WARNING",
                 "bitsandbytes": "ERROR"}


def setup_logging() -> None:
    """INFO for medscale's own lines; libraries' chatter only when something is wrong (every entry point: the CLI
    and each training process)."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
