"""A backend's variants split across workers: the default library run split and unsplit.

Runs ``detharness run`` over the default library (or ``-k EXPR``) in fresh processes, as a user
runs it, twice per round: once with one worker per backend (``--workers 1``) and once with the
automatic split (on 2 cores, from an empty cache: torch, the critical path, gets a helper once the
other backends are done), alternating which goes first. Each run gets an empty cache folder of its
own (``--warm``: one shared folder, filled by a run before the timed ones: the exports are hits and
no helper should start), so both pay the same exports and compiles. Prints both wall times,
their ratio (split / unsplit), how many workers each backend had, and whether the two bundles
have the same environment id and compare identical (the declared process-salted hashing is
``known`` in any two runs).

    python benchmarks/workers.py [-k EXPR] [--rounds N] [--warm]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cache import timed_run  # benchmarks/cache.py, beside this file

from detharness.compare.scan import available_cores


def _run(out: Path, keyword: str | None, workers: str | None, env: dict[str, str]) -> float:
    return timed_run(out, keyword, env, ["--workers", workers] if workers else None)


def _manifest(bundle: Path) -> dict[str, object]:
    return json.loads((bundle / "manifest.json").read_text())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="keyword", help="Only variants matching this expression (default: all)")
    parser.add_argument("--rounds", type=int, default=1, help="Pairs of runs, alternating which goes first")
    parser.add_argument("--warm", action="store_true", help="Share one cache folder, filled before the timed runs")
    args = parser.parse_args()
    times: dict[str, list[float]] = {"unsplit": [], "split": []}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        base = {k: v for k, v in os.environ.items() if k != "DETHARNESS_NO_CACHE"}

        def env_for(name: str) -> dict[str, str]:
            return {**base, "DETHARNESS_CACHE_DIR": str(tmp / ("cache" if args.warm else f"cache-{name}"))}

        if args.warm:
            _run(tmp / "warm-up", args.keyword, None, env_for("warm"))
        for round_ in range(args.rounds):
            order = [("unsplit", "1"), ("split", None)]
            for name, workers in order if round_ % 2 == 0 else order[::-1]:
                times[name].append(_run(tmp / f"{name}-{round_}", args.keyword, workers, env_for(f"{name}-{round_}")))
        unsplit, split = _manifest(tmp / "unsplit-0"), _manifest(tmp / "split-0")
        compared = subprocess.run([sys.executable, "-m", "detharness", "compare", str(tmp / "unsplit-0"),
                                   str(tmp / "split-0"), "--format", "json"],
                                  capture_output=True, text=True, env=base, check=False)
        summary = json.loads(compared.stdout)["summary"] if compared.stdout else {}
    best = {name: min(values) for name, values in times.items()}
    ratio = best["split"] / best["unsplit"]
    print(f"cores: {available_cores()}")
    for name in ("unsplit", "split"):
        workers = (unsplit if name == "unsplit" else split)["options"]["workers"]  # type: ignore[index]
        shown = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"{name + ':':9} {best[name]:6.1f} s (runs: {shown})  workers {workers}")
    same_id = unsplit["environment_id"] == split["environment_id"]
    print(f"ratio split/unsplit {ratio:.2f}; same environment id: {same_id}; the two bundles compared: {summary}")
    differing = {s: n for s, n in summary.items() if s not in ("identical", "skipped", "known")}
    sys.exit(0 if same_id and not differing else 1)


if __name__ == "__main__":
    main()
