"""Start-up cost: `detharness --help` and `detharness list` against `python -c "import torch"`.

Neither command may import a framework, so both should cost a fraction of torch's import. Goal: a
ratio of at most 0.5. Each command runs in a fresh interpreter, best of N, in this same process.

    python benchmarks/startup.py [--repeat N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def best_of(command: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    torch_time = best_of([py, "-c", "import torch"], args.repeat)
    print(f"python -c 'import torch'   {torch_time:7.3f} s")
    for label, command in (("detharness --help", [py, "-m", "detharness", "--help"]),
                           ("detharness list", [py, "-m", "detharness", "list"])):
        seconds = best_of(command, args.repeat)
        ratio = seconds / torch_time
        verdict = "ok" if ratio <= 0.5 else "MISSED (goal 0.5)"
        print(f"{label:26s} {seconds:7.3f} s   ratio {ratio:.2f}  {verdict}")


if __name__ == "__main__":
    main()
