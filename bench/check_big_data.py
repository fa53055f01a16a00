"""`medscale check` on a big JSON-lines file with bad lines: wall time and peak memory (issue 20, item 28).

    python3 bench/check_big_data.py --records 200000 [--bad 0.01] [--keep DIR]

Writes N records (the shipped demo records, repeated) with a share of bad lines (malformed JSON, and records whose
`question` is a number), then runs `medscale check tiny-demo` on it in skip mode in a child process and reports its
wall time, its peak resident memory (ru_maxrss of the child) against the file size, and the bad records it counted;
then `medscale train ... --dry-run`-free reuse: whether the tokenized-data cache that check wrote is the one training
keys on. Peak memory is measured here, never in a timed test.

ru_maxrss counts the pages of memory-mapped files the process has read (datasets maps its arrow files): the kernel
drops those under pressure, and they grow with what was read, not with what is held. So the process tree's own
memory is reported beside it: Pss_Anon of check and its workers (datasets' map pool, forked: their shared pages
counted once), summed, sampled every 0.2 s: that is what runs a machine out of memory.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_big(path: Path, records: int, bad: float) -> tuple[int, int]:
    """N lines; every 1/bad-th line malformed, every 1/(bad/5)-th other one with an integer question."""
    demo = [json.loads(ln) for ln in (REPO / "medscale/data/demo/medical_r1_demo.jsonl").read_text("utf-8").splitlines()
            if ln.strip()]
    every = max(int(1 / bad), 2) if bad else 0
    malformed = numeric = 0
    with path.open("w", encoding="utf-8") as f:
        for i in range(records):
            if every and i % every == every - 1:
                f.write('{"question": "truncated\n')
                malformed += 1
            elif every and i % (every * 5) == 1:
                f.write(json.dumps({**demo[i % len(demo)], "question": i}, ensure_ascii=False) + "\n")
                numeric += 1
            else:
                f.write(json.dumps(demo[i % len(demo)], ensure_ascii=False) + "\n")
    return malformed, numeric


def _tree(pid: int) -> list[int]:
    """`pid` and its descendants (datasets' map workers), from /proc."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def _pss_anon_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss_Anon:"):
                return int(line.split()[1])
    except OSError:  # ended between listing and reading
        pass
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--bad", type=float, default=0.01, help="share of malformed lines")
    ap.add_argument("--keep", type=Path, help="work here (kept) instead of a temp folder")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="medscale-bigdata-"))
    work.mkdir(parents=True, exist_ok=True)
    big = work / "big.jsonl"
    malformed, numeric = write_big(big, a.records, a.bad)
    size = big.stat().st_size
    env = {**os.environ, "MEDSCALE_HOME": str(work / "home")}
    cmd = [sys.executable, "-m", "medscale.cli", "check", "tiny-demo", "data.on_bad_record=skip",
           f"data.max_bad_fraction={min(1.0, 2 * a.bad + 0.01)}", f"data.sources=[{{path: '{big}', format: r1-think}}]"]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        anon = 0
        while proc.poll() is None:
            anon = max(anon, sum(_pss_anon_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.2)
        wall = time.perf_counter() - t
        out.seek(0)
        log = out.read()
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    cached = sorted(p.name for p in (work / "home" / "cache" / "data").glob("*")) if (work / "home").is_dir() else []
    print(log)
    print(json.dumps({"records": a.records, "malformed": malformed, "numeric_question": numeric,
                      "file_mb": round(size / 2**20, 1), "exit": proc.returncode, "wall_s": round(wall, 1),
                      "peak_rss_mb": round(peak / 2**20, 1), "peak_over_file": round(peak / size, 2),
                      "peak_pss_anon_mb": round(anon / 2**10, 1), "cache_entries": cached}, indent=1))


if __name__ == "__main__":
    main()
