"""medscale: one recipe, three launchers, one training entry point, one registry."""
import os
from pathlib import Path

__version__ = "0.1.0"


def medscale_home() -> Path:
    """Where models, caches, runs and the default SQLite registry live (`$MEDSCALE_HOME`, default ~/.medscale)."""
    return Path(os.environ.get("MEDSCALE_HOME", "~/.medscale")).expanduser()
