"""The resolved recipe as the registry, the job record and every checkpoint keep it: a content hash and YAML."""
from __future__ import annotations

import hashlib
import json

import yaml
from pydantic import BaseModel


def recipe_fingerprint(recipe: BaseModel) -> str:
    """Content hash of the resolved recipe; independent of key order and formatting."""
    canon = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def recipe_yaml(recipe: BaseModel) -> str:
    """The resolved recipe as YAML, in declaration order: it reloads to the same recipe and fingerprint."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
