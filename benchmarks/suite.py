"""How long the whole built-in library takes on the CPU backends, and where the time goes.

Runs every case of ``cases/`` (whatever is in it) on the CPU with every backend it uses (numpy,
torch, onnxruntime, jax), as ``detharness run --device cpu`` does: one worker process per backend,
side by side, then the in-environment checks. Goal: under 3 minutes on a 2-core machine.

Prints the total, the seconds per group (the first part of a case id: preprocessing, models,
skew...) and per backend, and where the time goes:

- framework imports: each worker's start-up, split into importing the framework (with its
  switches and fingerprint), the worker's own case discovery, and the rest (spawning an
  interpreter, importing detharness);
- prepare: ``Backend.prepare`` per variant (torch exports to ONNX, ONNX Runtime sessions, jax
  compiles), timed by a wrapper this script installs;
- execution: the variants' ``seconds`` as the bundle manifest records them;
- other: the rest of each variant in its worker (casting inputs, module builders, output
  conversion), and the parent's pipe traffic;
- comparison: the backend, device and repeat checks, timed group by group.

The runner records no prepare time of its own, so this script wraps ``Backend.prepare``,
``runner.execute``, ``runner.load_backend`` and ``runner.discover`` when it is imported. Workers
are started with ``spawn``, which imports the main script again in each worker (as
``__mp_main__``), so the wrappers are in force there too and report through the variants' ``info``
and the worker's hello message. Nothing in detharness is edited.

    python benchmarks/suite.py [--cases PATH]... [--in-process] [--out DIR] [--top N] [--json FILE]

Busy seconds are sums over variants: backends run side by side, so per-group and per-stage sums
can exceed the wall-clock total.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

GOAL_SECONDS = 180.0
CPU_BACKENDS = ("numpy", "torch", "onnxruntime", "jax")

# Keys this script adds to a variant's info and to a worker's hello message.
PREPARE_KEY = "bench.prepare_seconds"
EXECUTE_KEY = "bench.execute_seconds"
LOAD_KEY = "bench.load_seconds"
DISCOVER_KEY = "bench.discover_seconds"

# Filled in the parent: per backend, one entry per worker start; per variant id, the parent's wall
# time of its task (worker mode: pipe round trip included).
STARTS: dict[str, list[dict[str, float]]] = {}
TASK_WALL: dict[str, float] = {}
PARENT: dict[str, float] = {"discover": 0.0, "inputs": 0.0}
_last_discover = [0.0]


def install_timers() -> None:
    """Wrap the runner's steps with timers; runs in the parent and in every spawned worker."""
    from detharness import runner
    from detharness.backends import base

    if getattr(runner, "_suite_timers", False):
        return
    runner._suite_timers = True  # type: ignore[attr-defined]

    original_prepare = base.Backend.prepare

    def prepare(self: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        call = original_prepare(self, obj, *args, **kwargs)
        # prepare() resets run_info first, so the key survives only if added afterwards.
        self._run_info[PREPARE_KEY] = time.perf_counter() - start
        return call

    base.Backend.prepare = prepare  # type: ignore[method-assign]

    original_execute = runner.execute

    def execute(backend: Any, c: Any, task: Any) -> Any:
        start = time.perf_counter()
        reply = original_execute(backend, c, task)
        reply.info = {**(reply.info or {}), EXECUTE_KEY: time.perf_counter() - start}
        return reply

    runner.execute = execute

    original_discover = runner.discover

    def discover(paths: Any = None) -> Any:
        start = time.perf_counter()
        try:
            return original_discover(paths)
        finally:
            _last_discover[0] = time.perf_counter() - start

    runner.discover = discover

    original_load = runner.load_backend

    def load_backend(name: str, deterministic: bool) -> tuple[Any, dict[str, Any]]:
        start = time.perf_counter()
        backend, hello = original_load(name, deterministic)
        seconds = time.perf_counter() - start
        # In a worker, discovery has just run for this worker; in-process, the parent's is counted apart.
        STARTS.setdefault(name, []).append({"load": seconds, "discover": 0.0, "wall": seconds})
        return backend, {**hello, LOAD_KEY: seconds, DISCOVER_KEY: _last_discover[0]}

    runner.load_backend = load_backend

    original_start = runner.Worker.start

    def start_worker(self: Any) -> Any:
        start = time.perf_counter()
        hello = original_start(self)
        wall = time.perf_counter() - start
        STARTS.setdefault(self.backend, []).append(
            {"load": float(hello.info.get(LOAD_KEY, 0.0)), "discover": float(hello.info.get(DISCOVER_KEY, 0.0)),
             "wall": wall})
        return hello

    runner.Worker.start = start_worker  # type: ignore[method-assign]

    original_task = runner.Worker.run

    def run_task(self: Any, task: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_task(self, task)
        finally:
            TASK_WALL[task.id] = time.perf_counter() - start

    runner.Worker.run = run_task  # type: ignore[method-assign]

    original_arrays = runner.case_arrays

    def case_arrays(c: Any, replay: Any) -> Any:
        start = time.perf_counter()
        try:
            return original_arrays(c, replay)
        finally:
            PARENT["inputs"] += time.perf_counter() - start

    runner.case_arrays = case_arrays


# At import, not under __main__: spawned workers import this script and must get the wrappers too.
install_timers()


def group_of(case_id: str) -> str:
    return case_id.split("/", 1)[0]


def _sum(values: Iterable[float | None]) -> float:
    return sum(v for v in values if v)


def time_checks(record: Any, groups: Mapping[str, list[str]]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The in-environment checks run group by group (the same results as one ``run_checks``), timed."""
    from detharness import checks

    results: list[Any] = []
    seconds: dict[str, float] = {}
    for group, ids in groups.items():
        start = time.perf_counter()
        for name in ("backend", "device", "repeat"):
            results += checks.CHECKS[name].judge(record, ids)
        seconds[group] = time.perf_counter() - start
    return results, seconds


def run_suite(case_paths: list[str], in_process: bool, out: str | None) -> dict[str, Any]:
    """Run the library once and return every figure the report prints."""
    from detharness import record as record_mod
    from detharness import runner
    from detharness.backends import get_backend

    installed = [name for name in CPU_BACKENDS if get_backend(name).is_installed()]
    options = runner.RunOptions(case_paths=case_paths, device="cpu", in_process=in_process)
    start = time.perf_counter()
    record = runner.run(options)
    run_wall = time.perf_counter() - start
    PARENT["discover"] = _last_discover[0]  # the parent's own discovery (workers report theirs)

    groups: dict[str, list[str]] = {}
    for v in record.variants.values():
        groups.setdefault(group_of(v.case), []).append(v.id)
    start = time.perf_counter()
    results, check_seconds = time_checks(record, groups)
    checks_wall = time.perf_counter() - start
    write_seconds = None
    if out:
        record.verdicts = results
        start = time.perf_counter()
        record_mod.save(record, out)
        write_seconds = time.perf_counter() - start

    per_group: dict[str, dict[str, Any]] = {}
    per_backend: dict[str, dict[str, Any]] = {}
    variants: list[dict[str, Any]] = []
    for v in record.variants.values():
        execute_s = float(v.info.get(EXECUTE_KEY) or 0.0)
        prepare_s = float(v.info.get(PREPARE_KEY) or 0.0)
        seconds = float(v.seconds or 0.0)
        wall = TASK_WALL.get(v.id, execute_s)
        row = {"id": v.id, "group": group_of(v.case), "backend": v.backend, "status": v.status.value, "wall": wall,
               "prepare": prepare_s, "execution": seconds, "other": max(0.0, wall - prepare_s - seconds)}
        variants.append(row)
        for key, table in ((row["group"], per_group), (v.backend, per_backend)):
            entry = table.setdefault(key, {"variants": 0, "busy": 0.0, "prepare": 0.0, "execution": 0.0, "other": 0.0})
            entry["variants"] += 1
            for field in ("prepare", "execution", "other"):
                entry[field] += row[field]
            entry["busy"] += wall
    for group, seconds in check_seconds.items():
        per_group[group]["comparison"] = seconds
    for name, entry in per_backend.items():
        starts = STARTS.get(name, [])
        entry["start_up"] = _sum(s["wall"] for s in starts)
        entry["import"] = _sum(s["load"] for s in starts)
        entry["worker_discover"] = _sum(s["discover"] for s in starts)
        entry["starts"] = len(starts)
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    total = run_wall + checks_wall + (write_seconds or 0.0)
    return {
        "mode": "in-process" if in_process else "workers",
        "backends_installed": installed,
        "cases": len(record.cases),
        "variants": len(record.variants),
        "total_seconds": total,
        "run_seconds": run_wall,
        "comparison_seconds": checks_wall,
        "bundle_write_seconds": write_seconds,
        "parent_discover_seconds": PARENT["discover"],
        "parent_inputs_seconds": PARENT["inputs"],
        "groups": per_group,
        "backends": per_backend,
        "stages": {
            "framework_imports": _sum(e["start_up"] for e in per_backend.values()),
            "prepare": _sum(r["prepare"] for r in variants),
            "execution": _sum(r["execution"] for r in variants),
            "other": _sum(r["other"] for r in variants),
            "comparison": checks_wall,
        },
        "statuses": statuses,
        "slowest": sorted(variants, key=lambda r: -r["wall"]),
        "goal_seconds": GOAL_SECONDS,
    }


def print_report(figures: Mapping[str, Any], top: int, write: Callable[[str], Any] = print) -> None:
    total = figures["total_seconds"]
    verdict = "ok" if total <= GOAL_SECONDS else f"MISSED (goal {GOAL_SECONDS:g} s)"
    write(f"detharness suite: {figures['cases']} cases, {figures['variants']} CPU variants, "
          f"backends {', '.join(figures['backends_installed'])}; {figures['mode']}")
    write(f"total {total:8.1f} s   {verdict}")
    write(f"  run (discover, execute)  {figures['run_seconds']:8.1f} s   of which parent discovery "
          f"{figures['parent_discover_seconds']:.2f} s, inputs {figures['parent_inputs_seconds']:.2f} s")
    write(f"  comparison (checks)      {figures['comparison_seconds']:8.1f} s")
    if figures["bundle_write_seconds"] is not None:
        write(f"  bundle write             {figures['bundle_write_seconds']:8.1f} s")

    write("\nper group      variants     busy  prepare  execute    other  compare")
    for name, g in sorted(figures["groups"].items(), key=lambda kv: -kv[1]["busy"]):
        write(f"  {name:12s} {g['variants']:8d} {g['busy']:8.1f} {g['prepare']:8.1f} {g['execution']:8.1f} "
              f"{g['other']:8.1f} {g.get('comparison', 0.0):8.2f}")

    write("\nper backend    variants start-up (import  discover)    busy  start-up+busy")
    for name, b in sorted(figures["backends"].items(), key=lambda kv: -(kv[1]["start_up"] + kv[1]["busy"])):
        write(f"  {name:12s} {b['variants']:8d} {b['start_up']:8.1f} {b['import']:8.1f} {b['worker_discover']:8.2f} "
              f"{b['busy']:8.1f} {b['start_up'] + b['busy']:13.1f}")

    stages = figures["stages"]
    write("\nwhere the time goes (sums; backends overlap, so these exceed the wall time)")
    labels = {"framework_imports": "framework imports (worker start-up)", "prepare": "prepare (exports, sessions, compiles)",
              "execution": "execution (variant seconds)", "other": "other (casting, builders, outputs, pipes)",
              "comparison": "comparison (checks)"}
    for key, label in labels.items():
        write(f"  {label:42s} {stages[key]:8.1f} s")

    write(f"\nstatuses: {', '.join(f'{k} {v}' for k, v in sorted(figures['statuses'].items()))}")
    if top:
        write(f"\nslowest {top} variants             wall  prepare  execute    other")
        for r in figures["slowest"][:top]:
            write(f"  {r['wall']:6.2f} {r['prepare']:8.2f} {r['execution']:8.3f} {r['other']:8.2f}  {r['id']} ({r['status']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", action="append", default=[], metavar="PATH",
                        help="Case files or folders (default: the built-in library)")
    parser.add_argument("--in-process", action="store_true", help="Run every backend in this process, one after another")
    parser.add_argument("--out", metavar="DIR", help="Also write the bundle here and time the write")
    parser.add_argument("--top", type=int, default=10, help="How many of the slowest variants to list")
    parser.add_argument("--json", metavar="FILE", help="Write the figures as JSON")
    args = parser.parse_args(argv)
    figures = run_suite(args.cases, args.in_process, args.out)
    print_report(figures, args.top)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    return 0 if figures["total_seconds"] <= GOAL_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
