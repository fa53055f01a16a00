"""Source files -> records -> chat messages: reading files, folders, globs and saved datasets, and checking every
record (its layout converted by `medscale.data.formats`). Errors name `file:line` and what was wrong."""
from __future__ import annotations

import csv
import glob
import json
import logging
import random
from pathlib import Path
from typing import Iterable, Iterator

from medscale.data.formats import closest, detect, format_names, to_messages
from medscale.errors import UserError

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
log = logging.getLogger("medscale.data")


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


def _json_lines(path: Path, lines: Iterable[bytes], bad: list[str] | None) -> Iterator[tuple[int, dict]]:
    """JSON Lines, decoded line by line as they are read (a big file is never held whole): one bad byte or one
    malformed line is one bad record (file:line), not a failed file."""
    for n, raw in enumerate(lines, start=1):
        if n == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problem = f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)"
        else:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                problem = None if isinstance(rec, dict) else f"expected a JSON object, got {type(rec).__name__}"
                if isinstance(rec, list) and n == 1:
                    problem += " (a JSON array on line 1: rename the file to .json if it is one array)"
            except json.JSONDecodeError as e:
                problem = f"malformed JSON line: {e.msg} (column {e.colno})"
        if problem is None:
            yield n, rec
        elif bad is None:
            raise DataError(f"{path}:{n}: {problem}")
        else:
            bad.append(f"{path}:{n}: {problem}")


def _starts_with_array(f) -> bool:
    """Whether an open binary file's first non-blank byte (after a BOM), within its read buffer, is `[`: one JSON
    array, read whole. Peeked, not read: a stream (a pipe) is then read on from its first line."""
    return f.peek(4096).removeprefix(b"\xef\xbb\xbf").lstrip()[:1] == b"["


def _objects(path: Path, items, bad: list[str] | None, what: str) -> Iterator[tuple[int, dict]]:
    for n, rec in items:
        if isinstance(rec, dict):
            yield n, rec
            continue
        msg = f"{path}:{n}: {what} is not a JSON object ({type(rec).__name__})"
        if bad is None:
            raise DataError(msg)
        bad.append(msg)


def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """Rows as they are read, numbered from 2 (the header is row 1)."""
    row = 1
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            for row, rec in enumerate(csv.DictReader(f), start=2):
                yield row, rec
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: row {row + 1}: not valid UTF-8 ({e.reason}): fix the byte, or convert the file "
                        f"to .jsonl (read line by line, bad lines skippable)") from None


def read_records(path: Path, bad: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """(line or row number, record). Tolerates a UTF-8 BOM, CRLF and blank lines. A malformed JSON line (or one
    with invalid UTF-8) raises DataError, or is appended to `bad` and skipped when a list is given."""
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
    if path.suffix == ".csv":
        yield from _csv_rows(path)
        return
    with path.open("rb") as f:
        if not _starts_with_array(f):  # JSON lines (.jsonl, or a .json file of them): streamed
            yield from _json_lines(path, f, bad)
            return
        data = f.read()
    try:
        items = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        if path.suffix == ".jsonl":  # a first line that opens with `[`: judged line by line
            yield from _json_lines(path, data.split(b"\n"), bad)
            return
        if isinstance(e, json.JSONDecodeError):
            raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg}") from None
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({e.reason}); a JSON array is "
                        f"read whole: fix the byte, or convert the file to .jsonl (read line by line, bad lines "
                        f"skippable)") from None
    if path.suffix == ".jsonl":
        log.warning("%s holds one JSON array, not JSON lines: read as an array (rename it to .json)", path)
    yield from _objects(path, enumerate(items, start=1), bad, "array item")


def check_conversation(msgs: list[dict]) -> None:
    body = msgs[1:] if msgs and msgs[0]["role"] == "system" else msgs
    if not body or body[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in body):
        raise ValueError("a conversation needs a user turn and must end with an assistant turn")
    for a, b in zip(body, body[1:]):
        if a["role"] == b["role"]:
            raise ValueError(f"two {a['role']} turns in a row")
    if any(not m["content"] for m in body if m["role"] == "user") or not body[-1]["content"]:
        raise ValueError("empty user or final assistant turn")


def _mixed_hint(rec: dict, fmt: str, detected_at: int | None) -> str:
    """When a file's layout was detected from an earlier record and this one has another: say so."""
    other = detect(rec) if isinstance(rec, dict) else None
    if detected_at is None or other in (None, fmt):
        return ""
    return (f" (this record looks like {other}, but the file was detected as {fmt} from line {detected_at}: one "
            f"layout per file; split the file, or fix this record)")


def iter_conversations(path: str, fmt: str = "auto", prompt_field: str = "question",
                       system_prompt: str | None = None, limit: int | None = None, *, on_bad_record: str = "error",
                       max_bad_fraction: float = 0.01, counts: dict | None = None,
                       skip: int = 0) -> Iterator[list[dict]]:
    """The conversations of one source, in file order, one at a time as the files are read: after the first `skip`
    records (left unread), at most `limit`. With on_bad_record="skip", malformed records are counted (into `counts`,
    if given) and skipped, but more than `max_bad_fraction` of them still fails, once the source is read."""
    bad: list[str] = []
    skipped = kept = 0
    formats: dict[str, int] = {}
    for file in expand_sources(path):
        file_fmt, detected_at = fmt, None
        for n, rec in read_records(file, bad if on_bad_record == "skip" else None):
            if skipped < skip:
                skipped += 1
                continue
            if limit is not None and kept >= limit:
                break
            if file_fmt == "auto":
                file_fmt, detected_at = detect(rec) or "", n
                if not file_fmt:
                    near = closest(rec)
                    hint = f"; closest: {'; '.join(near)}" if near else ""
                    raise DataError(f"{file}:{n}: unknown record layout with fields {sorted(rec)}{hint}; known "
                                    f"formats: {', '.join(format_names())} (set data.sources[].format, or --format, "
                                    f"to read it as one of them)")
            try:
                msgs = to_messages(rec, file_fmt, prompt_field)
                if system_prompt and (not msgs or msgs[0]["role"] != "system"):
                    msgs.insert(0, {"role": "system", "content": system_prompt})
                check_conversation(msgs)
            # wrong shapes too: a turn that is not a dict, a list where a mapping belongs
            except (ValueError, TypeError, AttributeError, KeyError, IndexError) as e:
                msg = f"{file}:{n}: bad {file_fmt} record: {e}{_mixed_hint(rec, file_fmt, detected_at)}"
                if on_bad_record != "skip":
                    raise DataError(msg) from None
                bad.append(msg)
                continue
            kept += 1
            formats[file_fmt] = formats.get(file_fmt, 0) + 1
            yield msgs
    total = kept + len(bad)
    if bad:
        log.warning("%s: skipped %d of %d bad records; first: %s", path, len(bad), total, bad[0])
        if len(bad) > max_bad_fraction * total:
            raise DataError(f"{path}: {len(bad)} of {total} records are bad (> data.max_bad_fraction="
                            f"{max_bad_fraction}); first: {bad[0]}")
    if counts is not None:
        counts["bad_records"] = counts.get("bad_records", 0) + len(bad)
        for name, k in formats.items():  # which layout was read: said by `data stats`, `medscale check`
            counts.setdefault("formats", {})[name] = counts.get("formats", {}).get(name, 0) + k
    if not kept:
        raise DataError(f"{path}: no records" + (f" after the first {skip} (data.sources[].skip)" if skip else ""))


def load_conversations(*args, **kwargs) -> list[list[dict]]:
    """iter_conversations' conversations as a list (for what needs them all at once: splits, samples, weights)."""
    return list(iter_conversations(*args, **kwargs))


def sample_indices(total: int, n: int | None, seed) -> list[int] | None:
    """The positions of a seeded random `n` of `total` records, in file order; None (all of them) when there are
    no more."""
    if n is None or n >= total:
        return None
    return sorted(random.Random(f"{seed}:sample").sample(range(total), n))
