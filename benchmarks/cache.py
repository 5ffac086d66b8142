"""The export and compile cache: the default library run twice with an empty cache folder.

Goal (the cache issue): the second run at most 0.35x the first. Both runs happen here, one after
the other, in fresh processes as a user runs them, with ``DETHARNESS_CACHE_DIR`` pointed at a new
temporary folder; the two bundles must also compare identical (caching never changes a result;
the declared process-salted hashing is ``known`` in any two runs).

    python benchmarks/cache.py [-k EXPR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(out: Path, keyword: str | None, env: dict[str, str], extra: list[str] | None = None) -> float:
    """Seconds one ``detharness run --out OUT`` takes in a fresh process (exit 2 or worse ends the benchmark)."""
    command = [sys.executable, "-m", "detharness", "run", "--out", str(out), "--format", "json", *(extra or [])]
    if keyword:
        command += ["-k", keyword]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=False)
    if done.returncode not in (0, 1):
        sys.exit(f"detharness run exited {done.returncode}: {done.stderr.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="keyword", help="Only variants matching this expression (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DETHARNESS_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("DETHARNESS_NO_CACHE", None)
        first = timed_run(Path(tmp) / "first", args.keyword, env)
        second = timed_run(Path(tmp) / "second", args.keyword, env)
        compared = subprocess.run([sys.executable, "-m", "detharness", "compare", str(Path(tmp) / "first"),
                                   str(Path(tmp) / "second"), "--format", "json"],
                                  capture_output=True, text=True, env=env, check=False)
        summary = json.loads(compared.stdout)["summary"] if compared.stdout else {}
    ratio = second / first
    print(f"first run (empty cache): {first:.1f} s")
    print(f"second run:              {second:.1f} s")
    print(f"ratio {ratio:.2f} (goal <= 0.35); the two bundles compared: {summary}")
    differing = {s: n for s, n in summary.items() if s not in ("identical", "skipped", "known")}
    sys.exit(0 if ratio <= 0.35 and not differing else 1)


if __name__ == "__main__":
    main()
