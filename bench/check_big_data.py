"""`medscale check` on a big JSON-lines file with bad lines: wall time and peak memory (issue 20, item 28).

    python3 bench/check_big_data.py --records 200000 [--bad 0.01] [--keep DIR]

Writes N records (the shipped demo records, repeated) with a share of bad lines (malformed JSON, and records whose
`question` is a number), then runs `medscale check tiny-demo` on it in skip mode in a child process and reports its
wall time, its peak resident memory (ru_maxrss of the child) against the file size, and the bad records it counted;
then `medscale train ... --dry-run`-free reuse: whether the tokenized-data cache that check wrote is the one training
keys on. Peak memory is measured here, never in a timed test.
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
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    cached = sorted(p.name for p in (work / "home" / "cache" / "data").glob("*")) if (work / "home").is_dir() else []
    print(r.stdout + r.stderr)
    print(json.dumps({"records": a.records, "malformed": malformed, "numeric_question": numeric,
                      "file_mb": round(size / 2**20, 1), "exit": r.returncode, "wall_s": round(wall, 1),
                      "peak_rss_mb": round(peak / 2**20, 1), "peak_over_file": round(peak / size, 2),
                      "cache_entries": cached}, indent=1))


if __name__ == "__main__":
    main()
