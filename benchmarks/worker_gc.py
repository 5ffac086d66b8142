"""The garbage collector in a backend worker: frozen as detharness does it against a plain worker.

A worker freezes its heap (``runner._freeze_heap``) once it has loaded its framework and case
files, so the collector's full passes skip those objects while the variants run, and again when it
is told to stop, so the interpreter's last collections at exit have nothing to walk.
This script starts real workers of each kind, alternating which goes first, runs the built-in
``cases/models`` variants of one backend on the CPU in each (the persistent cache off: every torch
ONNX variant exports), and prints per backend, as medians over the rounds:

- variants: the worker's CPU seconds from its start-up message to the stop (``/proc``);
- exit: its CPU seconds from the stop message to its end (the kernel's account once it is reaped,
  less what ``/proc`` said before), the wall time of ``Worker.stop()``, and how it ended
  (``exit 0``, or ``killed``: the runner waits 0.5 s before it kills a worker);
- the ratios frozen / plain, and whether both kinds gave bitwise-equal outputs (they must).

    python benchmarks/worker_gc.py [--rounds N] [--backend NAME]... [-k EXPR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from pathlib import Path
from typing import Any

from detharness import runner
from detharness.backends import get_backend
from detharness.cases import discover
from detharness.results import Outcome
from detharness.select import compile_expression

CASES = Path(__file__).resolve().parent.parent / "cases" / "models"


def _plain_worker_main(*args: Any) -> None:
    """The worker as it would be without either freeze."""
    runner._freeze_heap = lambda: None
    runner._worker_main(*args)


class PlainWorker(runner.Worker):
    def start(self) -> Any:
        original = runner._worker_main
        runner._worker_main = _plain_worker_main  # type: ignore[assignment]
        try:
            return super().start()
        finally:
            runner._worker_main = original


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one(kind: type[runner.Worker], backend: str, keyword: str | None) -> dict[str, Any]:
    registry = discover([str(CASES)])
    match = compile_expression(keyword) if keyword else None
    worker = kind(backend, [str(CASES)], deterministic=False, timeout=600, use_cache=False)
    hello = worker.start()
    if hello.error:
        raise SystemExit(f"{backend} worker did not start: {hello.error}")
    process = worker.process
    assert process is not None and process.pid is not None
    started = _proc_cpu(process.pid)
    outputs: dict[str, bytes] = {}
    for case in registry:
        inputs, params = case.make_inputs(), case.make_params()
        for v in case.variants():
            if v.impl.backend != backend or v.device != "cpu" or (match and not match(v.id, v.keywords)):
                continue
            reply = worker.run(runner.task_for(v, inputs, params, 1))
            if reply.outcome == Outcome.ERROR:
                raise SystemExit(f"{v.id}: {reply.error}")
            for name, array in sorted((reply.outputs or {}).items()):
                outputs[f"{v.id}/{name}"] = array.tobytes()
    before_children, before_worker = _children_cpu(), _proc_cpu(process.pid)
    start = time.perf_counter()
    worker.stop()
    stop_wall = time.perf_counter() - start
    return {"variants": before_worker - started, "exit": _children_cpu() - before_children - before_worker,
            "stop": stop_wall, "ended": "exit 0" if process.exitcode == 0 else f"killed ({process.exitcode})",
            "outputs": outputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--backend", action="append", help="Backends to measure (default: torch and jax, if installed)")
    parser.add_argument("-k", dest="keyword", help="Only variants matching this expression")
    args = parser.parse_args()
    backends = args.backend or [b for b in ("torch", "jax") if get_backend(b).is_installed()]
    print(f"{'backend':10} {'variants: frozen':>17} {'plain':>8} {'ratio':>6}   {'exit: frozen':>13} {'plain':>7} "
          f"{'ratio':>6}   {'stop(): frozen':>15} {'plain':>7}   ended (frozen / plain)   outputs")
    for backend in backends:
        runs: dict[str, list[dict[str, Any]]] = {"frozen": [], "plain": []}
        for r in range(args.rounds):
            order = [("frozen", runner.Worker), ("plain", PlainWorker)]
            for name, kind in order if r % 2 == 0 else order[::-1]:
                runs[name].append(one(kind, backend, args.keyword))

        def med(name: str, key: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return float(statistics.median(run[key] for run in runs[name]))

        same = all(run["outputs"] == runs["frozen"][0]["outputs"] for run in runs["frozen"] + runs["plain"])
        ended = " / ".join(", ".join(sorted({run["ended"] for run in runs[name]})) for name in ("frozen", "plain"))
        print(f"{backend:10} {med('frozen', 'variants'):15.2f} s {med('plain', 'variants'):6.2f} s "
              f"{med('frozen', 'variants') / med('plain', 'variants'):6.2f}   "
              f"{med('frozen', 'exit'):11.2f} s {med('plain', 'exit'):5.2f} s "
              f"{med('frozen', 'exit') / max(med('plain', 'exit'), 1e-9):6.2f}   "
              f"{med('frozen', 'stop'):13.2f} s {med('plain', 'stop'):5.2f} s   {ended:22}   "
              f"{'bitwise equal' if same else 'DIFFERENT'} ({len(runs['frozen'][0]['outputs'])})")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    main()
