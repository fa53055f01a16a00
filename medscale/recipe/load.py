"""A recipe's YAML (a built-in name or a path, with `base:` inheritance) plus `a.b.c=value` overrides and ${VAR}
paths, validated into the Recipe; a problem is a RecipeError pointing at the file:line or the override."""
from __future__ import annotations

import difflib
import json
import logging
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medscale import medscale_home, settings
from medscale.recipe.base import SAVED, RecipeError
from medscale.recipe.explain import explain
from medscale.recipe.schema import Recipe

log = logging.getLogger(__name__)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read `eval_strategy: no` as False."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def _yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def _expand_vars(text: str) -> str:
    """Expand ${VAR} / ${VAR:-default} so model and data paths follow the environment. ${MEDSCALE_HOME} is always
    medscale_home(), so a file named by MEDSCALE_HOME is reported as such, not as a bad train.output_dir."""
    builtin = {settings.HOME.name: lambda: str(medscale_home()),
               settings.DEMO_DATA.name: lambda: settings.DEMO_DATA.get() or str(demo_data_dir())}

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(3)
        val = builtin[name]() if name in builtin else _variable(name) or default
        if val is None:
            raise RecipeError(f"environment variable ${{{name}}} is not set and has no default (write ${{{name}:-/path}})")
        return val

    return os.path.expanduser(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, text))


def _variable(name: str) -> str | None:
    """`${NAME}` as set (None: unset or empty). A `MEDSCALE_*` one is read through its declaration in
    medscale.settings, the one reader of them; one that is not declared there is a typo, not a setting."""
    if not name.startswith(settings.PREFIX):
        return os.environ.get(name) or None
    if name not in settings.ALL:
        close = difflib.get_close_matches(name, settings.ALL, n=1)
        raise RecipeError(f"${{{name}}} is not a medscale setting" + (f": did you mean ${{{close[0]}}}?" if close
                                                                      else "") + " (README's Settings lists them)")
    return settings.ALL[name].raw()


def demo_data_dir() -> Path:
    return Path(str(resources.files("medscale") / "data" / "demo"))


def builtin_dir() -> Path:
    return Path(str(resources.files("medscale") / "recipes"))


def builtin_names() -> list[str]:
    """Public built-in recipes (files starting with `_` are shared bases)."""
    return sorted(p.stem for p in builtin_dir().glob("*.yaml") if not p.name.startswith("_"))


def _recipe_file(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml"):
        if not p.exists():
            raise RecipeError(f"recipe file {p} does not exist")
        return p
    p = builtin_dir() / f"{name_or_path}.yaml"
    if not p.exists():
        close = difflib.get_close_matches(name_or_path, builtin_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"unknown recipe '{name_or_path}'{hint} (see `medscale recipes`, or pass a .yaml path)")
    return p


def _read_yaml(path: Path) -> dict:
    return _parse_yaml(path.read_text(encoding="utf-8"), str(path))


def _parse_yaml(text: str, source: str) -> dict:
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise RecipeError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping of sections (model, data, train, ...)")
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """YAML with `base: NAME` inheritance, so recipe variants state only what differs."""
    if path in seen:
        raise RecipeError(f"{path}: `base` chain loops: {' -> '.join(map(str, seen + (path,)))}")
    data = _read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    return _deep_merge(_load_raw(_recipe_file(str(base)), seen + (path,)), data)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise RecipeError(f"override '{item}' is not of the form section.key=value (e.g. train.learning_rate=5e-6)")
    key, _, raw = item.partition("=")
    keys = key.strip().split(".")
    if not all(keys):
        raise RecipeError(f"override '{item}': empty key")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        keys, value = parse_override(item)
        node = data
        for i, k in enumerate(keys[:-1]):
            nxt = node.get(k) if isinstance(node, dict) else None
            if nxt is None:
                nxt = node[k] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': {'.'.join(keys[:i + 1])} is a value, not a section")
            node = nxt
        node[keys[-1]] = value
    return data


def _expand_paths(data: dict) -> dict:
    """Apply ${VAR} expansion to the path-valued keys only (never to prompts or names)."""
    def fix(d: dict | None, key: str) -> None:
        if isinstance(d, dict) and isinstance(d.get(key), str):
            d[key] = _expand_vars(d[key])

    fix(data.get("model"), "path")
    fix((data.get("model") or {}).get("tiny"), "tokenizer")
    fix(data.get("train"), "output_dir")
    data_sec = data.get("data") or {}
    for group in ("sources", "eval_sources"):
        for src in data_sec.get(group) or []:
            fix(src, "path")
    fix(data_sec.get("term_masking"), "lexicon")
    eval_sec = data.get("eval") or {}
    fix(eval_sec, "control")
    fix(eval_sec, "data_dir")
    for i, bench in enumerate(eval_sec.get("benchmarks") or []):
        if isinstance(bench, str) and bench.startswith(("~", "$")):
            eval_sec["benchmarks"][i] = _expand_vars(bench)
        fix(bench, "path")
    return data


def validate(data: dict, source: Path | None = None, overrides: list[str] = ()) -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(explain(e, source, overrides)) from None


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Built-in name or YAML path + overrides -> validated Recipe (or RecipeError)."""
    path = _recipe_file(name_or_path)
    data = _load_raw(path)
    data.setdefault("name", path.stem)
    data = _expand_paths(apply_overrides(data, overrides or []))
    written = _absolute_output_dir(data)
    recipe = validate(data, path, overrides or [])
    recipe._output_dir_as_written = written
    return recipe


def load_saved(path: Path) -> Recipe:
    """The recipe a job saved (recipe.resolved.yaml), read to evaluate, export or serve its model. A job trained by
    another medscale version or on another machine still loads: keys this version does not know are left out (and
    logged), and files the recipe names (dist.deepspeed) are not looked for again; anything else wrong is a
    RecipeError at the file:line."""
    return _validated_saved(_read_yaml(path), str(path), path)


def saved_recipe(text: str, source: str) -> Recipe:
    """A job's saved recipe whose YAML is kept elsewhere (a registry row's copy), read as `load_saved` reads the
    file; a problem names `source`."""
    return _validated_saved(_parse_yaml(text, source), source, None)


def _validated_saved(data: dict, source: str, path: Path | None) -> Recipe:
    dropped = []
    while True:
        try:
            recipe = Recipe.model_validate(data, context=SAVED)
            break
        except ValidationError as e:
            unknown = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
            if not unknown or not all(_drop(data, loc) for loc in unknown):
                raise RecipeError(explain(e, path) if path else f"{source}: {explain(e, None)}") from None
            dropped += [".".join(map(str, loc)) for loc in unknown]
    if dropped:
        log.warning("%s: left out keys this medscale does not know: %s", source, ", ".join(dropped))
    return recipe


def _drop(data: dict, loc: tuple) -> bool:
    """Remove the key at a validation error's `loc` (parts that name a validator rather than a key are passed by)."""
    node = data
    for part in loc[:-1]:
        if isinstance(node, dict) and part in node or isinstance(node, list) and isinstance(part, int):
            node = node[part]
    if not isinstance(node, dict) or loc[-1] not in node:
        return False
    del node[loc[-1]]
    return True


def _absolute_output_dir(data: dict) -> str | None:
    """train.output_dir made absolute against the working dir, once, where the recipe is resolved: checkpoint paths,
    the registry, results and run summaries then name the folder wherever they are read. It is the abspath the job's
    registry key always used, and resume compares recipes without it, so a job whose recipe had a relative dir
    still resumes from the same cwd. Returns the value as written."""
    train = data.get("train")
    written = train.get("output_dir") if isinstance(train, dict) else None
    if isinstance(written, str) and written:
        train["output_dir"] = os.path.abspath(written)
    return written if isinstance(written, str) else None
