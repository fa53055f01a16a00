"""Source files -> records -> chat messages `[{role, content, reasoning_content?}]`.

Every medical SFT layout our users train on is converted here, so nobody writes a
conversion script. Errors name `file:line` and what was wrong.
"""
from __future__ import annotations

from medscale.errors import UserError

import csv
import glob
import json
import logging
import re
from pathlib import Path
from typing import Iterator

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
KNOWN_FORMATS = ("sharegpt", "huatuo", "medical-o1", "r1-think", "alpaca", "messages")
log = logging.getLogger("medscale.data")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*(.*)$", re.S)


class DataError(UserError):
    """Bad data, with the file and line it came from."""


def expand_sources(path: str) -> list[Path]:
    """A file, a folder (its data files, sorted) or a glob."""
    p = Path(path)
    if is_saved_dataset(p):
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES)
    elif any(c in path for c in "*?["):
        files = sorted(Path(f) for f in glob.glob(path, recursive=True) if Path(f).suffix in SUFFIXES)
    else:
        files = [p] if p.exists() else []
    if not files:
        raise DataError(f"{path}: no data files found (expected a file, folder or glob of {', '.join(SUFFIXES)})")
    return files


def is_saved_dataset(p: Path) -> bool:
    """A `datasets` save_to_disk folder (a Dataset, or a DatasetDict whose train split is used)."""
    return p.is_dir() and ((p / "state.json").is_file() or (p / "dataset_dict.json").is_file())


def read_records(path: Path, bad: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line or row number, record). Tolerates a UTF-8 BOM, CRLF and blank lines. A malformed JSON
    line raises DataError, or is appended to `bad` and skipped when a list is given."""
    if is_saved_dataset(path):
        from datasets import DatasetDict, load_from_disk

        ds = load_from_disk(str(path))
        if isinstance(ds, DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
        yield from enumerate(ds, start=1)
        return
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
        return
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason})") from None
    if path.suffix == ".csv":
        yield from enumerate(csv.DictReader(text.splitlines()), start=2)
        return
    stripped = text.lstrip()
    if path.suffix == ".json" and stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        yield from enumerate(items, start=1)
        return
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            problem = None if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"
        except json.JSONDecodeError as e:
            problem = f"malformed JSON line: {e.msg} (column {e.colno})"
        if problem is None:
            yield n, rec
        elif bad is None:
            raise DataError(f"{path}:{n}: {problem}")
        else:
            bad.append(f"{path}:{n}: {problem}")


def detect(rec: dict) -> str | None:
    keys = set(rec)
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if keys >= {"Question", "Response"}:
        return "medical-o1"
    if keys >= {"think", "answer"}:
        return "r1-think"
    if keys >= {"instruction", "output"}:
        return "alpaca"
    if isinstance(rec.get("data"), list):
        return "huatuo"
    return None


def _split_think(text: str) -> tuple[str, str | None]:
    m = _THINK.match(text)
    return (m.group(2), m.group(1).strip("\n")) if m else (text, None)


def _assistant(content: str, reasoning: str | None = None) -> dict:
    if reasoning is None:
        content, reasoning = _split_think(content)
    msg = {"role": "assistant", "content": content.strip()}
    if reasoning and reasoning.strip():
        msg["reasoning_content"] = reasoning.strip()
    return msg


_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
          "model": "assistant", "bot": "assistant"}
_HUATUO_PREFIX = re.compile(r"^\s*(问|答)[:：]\s*")


def _require(rec: dict, *fields: str) -> None:
    missing = [f for f in fields if not isinstance(rec.get(f), str) or not rec[f].strip()]
    if missing:
        raise ValueError(f"missing or empty field(s) {missing}")


def _turns(items, role_key: str, content_key: str) -> list[dict]:
    """sharegpt (from/value) and messages (role/content) lists; assistant reasoning from a <think> block
    or a `reasoning_content` key."""
    out = []
    for turn in items or []:
        role = _ROLES.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise ValueError(f"unknown {role_key} {turn.get(role_key)!r} (known: {sorted(_ROLES)})")
        content = str(turn.get(content_key) or "")
        out.append(_assistant(content, turn.get("reasoning_content")) if role == "assistant"
                   else {"role": role, "content": content.strip()})
    return out


def to_messages(rec: dict, fmt: str, prompt_field: str = "question") -> list[dict]:
    """Convert one record; raises ValueError (caller adds file:line)."""
    if fmt == "r1-think":
        field = prompt_field if isinstance(rec.get(prompt_field), str) and rec[prompt_field].strip() else \
            ("instruction" if prompt_field == "question" else "question")
        _require(rec, field, "answer")
        return [{"role": "user", "content": rec[field].strip()}, _assistant(rec["answer"], rec.get("think") or "")]
    if fmt == "medical-o1":
        _require(rec, "Question", "Response")
        return [{"role": "user", "content": rec["Question"].strip()},
                _assistant(rec["Response"], rec.get("Complex_CoT") or "")]
    if fmt == "alpaca":
        _require(rec, "instruction", "output")
        prompt = rec["instruction"].strip() + (f"\n{rec['input'].strip()}" if str(rec.get("input") or "").strip() else "")
        return [{"role": "user", "content": prompt}, _assistant(rec["output"])]
    if fmt == "huatuo":
        turns = rec.get("data")
        if not isinstance(turns, list) or len(turns) < 2:
            raise ValueError("'data' must be a list of alternating 问/答 turns")
        return [({"role": "user", "content": _HUATUO_PREFIX.sub("", t).strip()} if i % 2 == 0
                 else _assistant(_HUATUO_PREFIX.sub("", t))) for i, t in enumerate(map(str, turns))]
    if fmt == "sharegpt":
        return _turns(rec.get("conversations"), "from", "value")
    if fmt == "messages":
        return _turns(rec.get("messages"), "role", "content")
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(KNOWN_FORMATS)}")


def check_conversation(msgs: list[dict]) -> None:
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body or body[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in body):
        raise ValueError("a conversation needs a user turn and must end with an assistant turn")
    for a, b in zip(body, body[1:]):
        if a["role"] == b["role"]:
            raise ValueError(f"two {a['role']} turns in a row")
    if any(not m["content"] for m in body if m["role"] == "user") or not body[-1]["content"]:
        raise ValueError("empty user or final assistant turn")


def load_conversations(path: str, fmt: str = "auto", prompt_field: str = "question",
                       system_prompt: str | None = None, limit: int | None = None, on_bad_record: str = "error",
                       max_bad_fraction: float = 0.01, counts: dict | None = None) -> list[list[dict]]:
    """All conversations of one source, in file order. With on_bad_record="skip", malformed records are
    counted (into `counts`, if given) and skipped, but more than `max_bad_fraction` of them still fails."""
    convs: list[list[dict]] = []
    bad: list[str] = []
    for file in expand_sources(path):
        file_fmt = fmt
        for n, rec in read_records(file, bad if on_bad_record == "skip" else None):
            if limit is not None and len(convs) >= limit:
                break
            if file_fmt == "auto":
                file_fmt = detect(rec) or ""
                if not file_fmt:
                    raise DataError(f"{file}:{n}: unknown record layout with keys {sorted(rec)}; "
                                    f"known formats: {', '.join(KNOWN_FORMATS)} (or set data.sources[].format)")
            try:
                msgs = to_messages(rec, file_fmt, prompt_field)
                if system_prompt and msgs[0]["role"] != "system":
                    msgs.insert(0, {"role": "system", "content": system_prompt})
                check_conversation(msgs)
            except (ValueError, TypeError, AttributeError) as e:  # wrong shapes too, e.g. a turn that is not a dict
                msg = f"{file}:{n}: bad {file_fmt} record: {e}"
                if on_bad_record != "skip":
                    raise DataError(msg) from None
                bad.append(msg)
                continue
            convs.append(msgs)
    total = len(convs) + len(bad)
    if bad:
        log.warning("%s: skipped %d of %d bad records; first: %s", path, len(bad), total, bad[0])
        if len(bad) > max_bad_fraction * total:
            raise DataError(f"{path}: {len(bad)} of {total} records are bad (> data.max_bad_fraction="
                            f"{max_bad_fraction}); first: {bad[0]}")
    if counts is not None:
        counts["bad_records"] = counts.get("bad_records", 0) + len(bad)
    if not convs:
        raise DataError(f"{path}: no records")
    return convs
