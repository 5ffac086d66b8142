"""A worker's exit: what ``Worker.stop()`` costs per backend, with the heap frozen at the end (as
detharness does, ``runner._ending``) against the same worker without it.

For each installed backend, a real worker is started, runs the built-in ``models/softmax`` case's
variants of that backend (torch's ONNX export among them, as in a run), and is stopped,
alternating which kind goes first. Printed per backend: the CPU seconds the worker spent
from the stop message to its end (its whole CPU time, from the kernel once it is reaped, less what
``/proc`` said just before the stop), the wall time of ``stop()``, how the worker ended (``exit 0``,
or ``killed``: the runner waits 0.5 s before it kills a worker), and the ratio frozen / plain.

    python benchmarks/worker_exit.py [--rounds N] [--backend NAME]...
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

CASES = Path(__file__).resolve().parent.parent / "cases" / "models" / "softmax.py"


def _plain_worker_main(*args: Any) -> None:
    """The worker as it would be without the freeze at its end."""
    runner._ending = lambda: None
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


def one(kind: type[runner.Worker], backend: str) -> tuple[float, float, str]:
    worker = kind(backend, [str(CASES)], deterministic=False, timeout=600)
    hello = worker.start()
    if hello.error:
        raise SystemExit(f"{backend} worker did not start: {hello.error}")
    case = discover([str(CASES)])["models/softmax"]
    inputs, params = case.make_inputs(), case.make_params()
    for v in case.variants():
        if v.impl.backend == backend and v.device == "cpu":
            reply = worker.run(runner.task_for(v, inputs, params, 1))
            if reply.outcome == Outcome.ERROR:
                raise SystemExit(f"{v.id}: {reply.error}")
    process = worker.process
    assert process is not None and process.pid is not None
    time.sleep(0.3)  # let the start-up settle: the figure is the exit's alone
    before_children, before_worker = _children_cpu(), _proc_cpu(process.pid)
    start = time.perf_counter()
    worker.stop()
    wall = time.perf_counter() - start
    exit_cpu = _children_cpu() - before_children - before_worker
    ended = "exit 0" if process.exitcode == 0 else f"killed ({process.exitcode})"
    return exit_cpu, wall, ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", action="append", help="Backends to measure (default: every installed one)")
    args = parser.parse_args()
    backends = args.backend or [b for b in ("torch", "jax", "onnxruntime", "numpy") if get_backend(b).is_installed()]
    print(f"{'backend':12} {'frozen: exit CPU':>17} {'stop()':>8}  {'plain: exit CPU':>16} {'stop()':>8}  "
          f"{'ratio':>6}  ended (frozen / plain)")
    for backend in backends:
        figures: dict[str, list[tuple[float, float, str]]] = {"frozen": [], "plain": []}
        for r in range(args.rounds):
            order = [("frozen", runner.Worker), ("plain", PlainWorker)]
            for name, kind in order if r % 2 == 0 else order[::-1]:
                figures[name].append(one(kind, backend))
        frozen_cpu = statistics.median(f[0] for f in figures["frozen"])
        plain_cpu = statistics.median(f[0] for f in figures["plain"])
        print(f"{backend:12} {frozen_cpu:15.2f} s {statistics.median(f[1] for f in figures['frozen']):6.2f} s  "
              f"{plain_cpu:14.2f} s {statistics.median(f[1] for f in figures['plain']):6.2f} s  "
              f"{frozen_cpu / plain_cpu if plain_cpu > 0 else float('nan'):6.2f}  "
              f"{', '.join(sorted({f[2] for f in figures['frozen']}))} / "
              f"{', '.join(sorted({f[2] for f in figures['plain']}))}")


if __name__ == "__main__":
    multiprocessing.set_start_method("spawn", force=True)
    main()
