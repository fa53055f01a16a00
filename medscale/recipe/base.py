"""What every part of the recipe shares: its error, and the section base that refuses unknown keys."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from medscale.errors import UserError


class RecipeError(UserError):
    """A recipe that cannot run, with a message that names the file, key and fix."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
