"""What every part of the recipe shares: its error, and the section base that refuses unknown keys."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationInfo

from medscale.errors import UserError


class RecipeError(UserError):
    """A recipe that cannot run, with a message that names the file, key and fix."""


# The validation context of a recipe a job saved (load.load_saved): the job ran where the files it names were, so a
# validator that looks for one (dist.deepspeed) takes the path as written.
SAVED = {"saved": True}


def is_saved(info: ValidationInfo) -> bool:
    return bool((info.context or {}).get("saved"))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
