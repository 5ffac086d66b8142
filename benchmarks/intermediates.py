"""Recording every layer (``run --intermediates``) of the built-in model library: time and disk.

Goals (the bisect issue): the bundle with every model's layers stays under 200 MB, and recording
them costs at most 2x the run's time without them. Both runs happen here, one after the other, on
the same selection (CPU model variants), in fresh processes as a user runs them.

    python benchmarks/intermediates.py [-k EXPR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _run(out: Path, keyword: str, intermediates: bool) -> float:
    command = [sys.executable, "-m", "detharness", "run", "--out", str(out), "--device", "cpu", "-k", keyword,
               "--format", "json"]
    if intermediates:
        command.append("--intermediates")
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    if done.returncode not in (0, 1):
        sys.exit(f"detharness run exited {done.returncode}: {done.stderr.strip()}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="keyword", default="models/ and not roundtrip",
                        help="The selection (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plain, layered = Path(tmp) / "plain", Path(tmp) / "layers"
        seconds = _run(plain, args.keyword, intermediates=False)
        with_layers = _run(layered, args.keyword, intermediates=True)
        size, size_plain = _size(layered), _size(plain)
    ratio = with_layers / seconds
    print(f"without layers: {seconds:.1f} s, {size_plain / 2**20:.1f} MiB")
    print(f"with layers:    {with_layers:.1f} s, {size / 2**20:.1f} MiB")
    print(f"time ratio {ratio:.2f} (goal <= 2); bundle {size / 1e6:.1f} MB (goal < 200 MB)")
    sys.exit(0 if ratio <= 2 and size < 200e6 else 1)


if __name__ == "__main__":
    main()
