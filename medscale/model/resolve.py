"""A model reference -> the folder to load, offline, and the shapes of the built-in recipes' models.

A reference is a folder, or a hub id (`Qwen/Qwen3-8B`, with a revision `Qwen/Qwen3-8B@<branch, tag or commit>`)
looked up, in this order, in the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`:
`models--org--name/snapshots/<commit>/`, the revision through `refs/`), the ModelScope cache (`$MODELSCOPE_CACHE`,
`models/org/name` or `org/name`, a dot in the name written `___`) and `$MEDSCALE_MODELS` (`org/name` or `name`).
Only the Hugging Face cache records revisions: a reference with one is looked up there alone. Nothing is
downloaded: where nothing is found, the error gives the command that fetches it into a place looked at.

`shipped_config` holds the config.json facts of every model a built-in recipe names (shapes.json), so a memory plan
or an adapter check can be made before the weights are downloaded. Torch-free: every command that takes a model
(and `medscale jobs`) resolves here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from medscale import settings
from medscale.errors import UserError

log = logging.getLogger("medscale.model")
HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
SHAPES = Path(__file__).with_name("shapes.json")


class ModelNotFound(UserError):
    """A hub id in no local cache; the message gives the command that downloads it."""


@dataclass(frozen=True)
class Found:
    path: Path
    source: str  # "folder", "Hugging Face cache", "ModelScope cache", "MEDSCALE_MODELS"

    def __str__(self) -> str:
        return str(self.path) if self.source == "folder" else f"{self.path} (from the {self.source})"


def hub_id(ref: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) when `ref` is written as a hub id, else None."""
    m = HUB_ID.match(ref.strip())
    return (m["repo"], m["rev"]) if m else None


def hf_cache() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it, read now (a test or a launcher may have set it)."""
    env = os.environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def modelscope_cache() -> Path:
    return Path(os.environ.get("MODELSCOPE_CACHE") or "~/.cache/modelscope/hub").expanduser()


def _candidates(repo: str, revision: str | None):
    """(source, folder) in the order they are looked at."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "config.json", cache_dir=str(hf_cache()), revision=revision)
    if isinstance(found, str):
        yield "Hugging Face cache", Path(found).parent
    if revision:
        return
    org, name = repo.split("/")
    ms = modelscope_cache()
    for base in (ms / "models", ms):
        for n in dict.fromkeys((name, name.replace(".", "___"))):
            yield "ModelScope cache", base / org / n
    root = settings.MODELS.get()
    yield "MEDSCALE_MODELS", root / org / name
    yield "MEDSCALE_MODELS", root / name


def find_model(ref: str) -> Found:
    """The folder `ref` names: itself when it is a folder, else a hub id's local copy; ModelNotFound otherwise."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return Found(path, "folder")
    parsed = hub_id(ref)
    if parsed is None:
        raise ModelNotFound(f"{ref}: no such model folder (give a folder with config.json, or a hub id such as "
                            f"Qwen/Qwen3-8B)")
    repo, revision = parsed
    for source, folder in _candidates(repo, revision):
        if (folder / "config.json").is_file():
            return Found(folder, source)
    looked = ", ".join(map(str, [hf_cache()] + ([] if revision else [modelscope_cache(), settings.MODELS.get()])))
    raise ModelNotFound(f"{ref} is missing: download it with `{download_command(repo, revision)}` (into {hf_cache()})"
                        + ("" if revision else f" or `modelscope download --model {repo}` (into {modelscope_cache()})")
                        + f"; no local copy in {looked}")


def download_command(repo: str, revision: str | None = None, into: Path | None = None) -> str:
    """The `hf download` that puts `repo` where medscale looks: the HF cache, or the folder `into`."""
    words = ["hf", "download", repo] + (["--revision", revision] if revision else []) + \
        (["--local-dir", str(into)] if into else [])
    return shlex.join(words)


def model_source(model) -> Found | None:
    """Where the recipe's model (a ModelSection) is: `model.path` as a folder or a hub id, else `model.hub_id` in
    the caches when `model.path` is missing; None when it is in none of them (model_problem says why)."""
    try:
        return find_model(model.path)
    except ModelNotFound:
        pass
    if model.hub_id and not Path(model.path).expanduser().exists():
        try:
            return find_model(model.hub_id)
        except ModelNotFound:
            pass
    return None


def model_folder(model) -> Path:
    """The folder to load the recipe's model from; `model.path` itself when it is nowhere (loading then says why,
    and a tiny model is built there)."""
    found = model_source(model) if model.tiny is None else None
    if found is not None and found.source != "folder":
        log.info("model %s: %s", model.path, found)
    return found.path if found is not None else Path(model.path).expanduser()


def model_missing(model) -> str:
    """Why the recipe's model is nowhere, with the command that downloads it to where it is looked for."""
    path = Path(model.path).expanduser()
    parsed = hub_id(model.path) if not path.exists() else None
    if parsed is not None:  # model.path is a hub id
        try:
            find_model(model.path)
        except ModelNotFound as e:
            return f"model.path: {e}"
    if model.hub_id:
        repo, revision = hub_id(model.hub_id) or (model.hub_id, None)
        return (f"model.path: {path} is missing: download it with `{download_command(repo, revision, path)}` "
                f"({model.hub_id} is in no local cache), or set model.path to its folder or hub id")
    return f"model.path: {path} is missing: put a Hugging Face model folder there, or set model.path=/your/folder " \
           f"or a hub id (Qwen/Qwen3-8B)"


@cache
def _shapes() -> dict:
    return json.loads(SHAPES.read_text(encoding="utf-8"))["models"]


def shipped_config(model) -> tuple[str, dict] | None:
    """(hub id, config.json facts) of the recipe's model from the shapes medscale ships, or None."""
    for ref in (model.path, model.hub_id):
        parsed = hub_id(ref) if ref else None
        if parsed and parsed[0] in _shapes():
            return parsed[0], dict(_shapes()[parsed[0]])
    return None
