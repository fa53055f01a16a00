"""MODEL arguments -> weights. The one place eval, compare and chat turn what the user typed into a base folder and
an optional adapter; the job/reference resolver of medscale.jobs replaces it (same signature)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from medscale.model.infer import ModelFolderError, check_adapter_folder, check_base_folder, trained_recipe


def _checkpoints(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name)))


def resolve_model(ref: str, adapter: str | None = None, checkpoint: int | None = None) -> tuple[Path, Path | None, dict]:
    """(base folder, adapter folder or None, meta) for a model folder, a LoRA run's output dir or one of its
    checkpoint-N folders (the base is the one recorded in adapter_config.json), with an optional extra adapter.
    meta: label, base, adapter, checkpoint, and from the run's recipe load_in_4bit, trust_remote_code and
    system_prompt, so a tuned model is asked the way it was trained."""
    path = Path(ref).expanduser()
    if not path.exists():
        raise ModelFolderError(f"model {ref}: no such folder; pass a model folder, or the output dir / "
                               f"checkpoint-N folder of a LoRA run")
    if checkpoint is not None:
        found = _checkpoints(path)
        if checkpoint not in found:
            raise ModelFolderError(f"{path} has no checkpoint-{checkpoint} (available: "
                                   f"{', '.join(map(str, found)) or 'none'})")
        path = path / f"checkpoint-{checkpoint}"
    if (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise ModelFolderError(f"{path} is already a LoRA adapter folder: pass its base model as MODEL and it as "
                                   f"--adapter, or drop --adapter")
        adapter_path = check_adapter_folder(path)
        recorded = json.loads((path / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not recorded or not Path(recorded).expanduser().is_dir():
            raise ModelFolderError(f"{path}/adapter_config.json names base model {recorded!r}, which is not a folder "
                                   f"here: pass the base model folder as MODEL and {path} as --adapter")
        base = check_base_folder(recorded)
    else:
        if adapter is None and not (path / "config.json").is_file() and _checkpoints(path):
            raise ModelFolderError(f"{path} has no final adapter (the run did not finish): pass --checkpoint N "
                                   f"(available: {', '.join(map(str, _checkpoints(path)))})")
        base = check_base_folder(path)
        adapter_path = check_adapter_folder(adapter) if adapter is not None else None
    recipe = trained_recipe(adapter_path)
    model_sec, data_sec = recipe.get("model") or {}, recipe.get("data") or {}
    label = (f"{adapter_path.parent.name}/{adapter_path.name}" if adapter_path and adapter_path.name.startswith(
        "checkpoint-") else adapter_path.name if adapter_path else base.name)
    meta = {"label": label, "base": str(base), "adapter": str(adapter_path) if adapter_path else None,
            "checkpoint": checkpoint, "load_in_4bit": bool(model_sec.get("load_in_4bit")),
            "trust_remote_code": bool(model_sec.get("trust_remote_code")),
            "system_prompt": data_sec.get("system_prompt")}
    return base, adapter_path, meta
