"""medscale: one recipe, three launchers, one training entry point, one registry."""
from pathlib import Path

from medscale import settings

__version__ = "0.1.0"


def medscale_home() -> Path:
    """Where models, caches, runs and the default SQLite registry live (`$MEDSCALE_HOME`, default ~/.medscale).
    Every command that uses it asks here, so a file in its place is one line naming MEDSCALE_HOME, not a failure
    further down that blames the registry or train.output_dir."""
    home = settings.HOME.get()
    blocker = next((p for p in [home, *home.parents] if p.exists()), home)
    if not blocker.is_dir():
        from medscale.errors import UserError

        name = f"MEDSCALE_HOME={home}" if settings.HOME.is_set() else f"{home} (MEDSCALE_HOME is not set)"
        why = "is a file, not a folder" if blocker == home else f"cannot be a folder: {blocker} is a file"
        raise UserError(f"{name} {why}: set MEDSCALE_HOME to a folder (made if missing; medscale keeps its models, "
                        f"runs, caches and registry there)")
    return home


# Libraries whose INFO lines (and, for bitsandbytes on CPU, a warning about GPU kernels it cannot use) say nothing a
# person running medscale can act on: shown from ERROR (bitsandbytes) or WARNING up.
QUIET_LOGGERS = {"alembic": "WARNING", "httpx": "WARNING", "urllib3": "WARNING", "filelock": "WARNING",
                 "bitsandbytes": "ERROR"}


def setup_logging() -> None:
    """medscale's own lines at MEDSCALE_LOG_LEVEL (INFO; `-q` / `-v` set it, and the processes a launcher starts
    inherit it); libraries' chatter only when something is wrong (every entry point: the CLI and each training
    process). `-v` opens medscale's debug lines, not every library's."""
    import logging

    level = settings.LOG_LEVEL.get()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger().setLevel(max(logging.INFO, logging.getLevelName(level)))
    logging.getLogger("medscale").setLevel(level)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
