"""Expand variants and execute them: in one worker process per backend, or in this process.

Each worker imports its framework once and runs every variant of its backend. A crash, a hang past
``--timeout`` or an out-of-memory kill costs one variant: it is recorded as ``error`` with the
reason, the worker is restarted and the remaining variants go on. Workers of different backends run
side by side (the parent only waits on pipes), so torch's and jax's start-up costs overlap.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import signal
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detharness import environment as env_mod
from detharness import roundtrip as rt
from detharness.backends import Backend, UnsupportedVariant, get_backend
from detharness.backends.base import jsonable
from detharness.cases import Case, Registry, Variant, discover, display_path
from detharness.checks import own_checks
from detharness.dtypes import cast_floats
from detharness.errors import BackendError, UsageError
from detharness.record import CaseRecord, RunRecord, VariantRecord, digest_arrays
from detharness.select import compile_expression

DEVICE_CHOICES = ("cpu", "cuda", "all")


@dataclass
class RunOptions:
    case_paths: list[str] = field(default_factory=list)
    keyword: str | None = None
    tags: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    device: str = "all"
    repeat: int = 1
    #: Run every variant in this many fresh sets of worker processes (hash seeds, thread pools and
    #: allocators differ in each) and flag outputs that are not bitwise identical across them.
    repeat_processes: int = 1
    #: The checks asked for (empty: all that apply); variants no chosen check looks at are not run.
    checks: list[str] = field(default_factory=list)
    deterministic: bool = False
    timeout: float = 600.0
    inputs_from: RunRecord | None = None
    in_process: bool = False
    progress: Callable[[int, int, str], None] | None = None


def select_variants(registry: Registry, options: RunOptions) -> list[Variant]:
    """The declared variants that pass ``-k``, ``--tag``, ``--backend`` and ``--device``.

    Whether a device is really present is decided later, by the backend's worker.
    """
    match = compile_expression(options.keyword) if options.keyword else None
    wanted_backends = set(options.backends)
    repeating = options.repeat > 1 or options.repeat_processes > 1
    chosen: list[Variant] = []
    for c in registry:
        for v in c.variants():
            if options.tags and not v.tags.intersection(options.tags):
                continue
            if options.checks and not set(options.checks).intersection(checks_for(v, repeating)):
                continue
            if wanted_backends and v.impl.backend not in wanted_backends:
                continue
            if options.device != "all" and v.device != options.device:
                continue
            if match is not None and not match(v.id, v.keywords):
                continue
            chosen.append(v)
    return chosen


def checks_for(v: Variant, repeating: bool = False) -> tuple[str, ...]:
    """The in-environment checks that look at a variant: what ``--check`` selects it by
    (:func:`checks.own_checks`, and ``repeat`` for every variant when runs are repeated)."""
    own = own_checks(v.case.kind, v.mode)
    return own + ("repeat",) if repeating else own


def check_backends_requested(names: Iterable[str]) -> None:
    """``--backend`` naming an unknown or uninstalled backend is a usage error (exit 2)."""
    for name in names:
        backend = get_backend(name)
        if not backend.is_installed():
            raise BackendError(f"backend {name!r} is not installed: {backend.install_hint}")


def with_references(variants: list[Variant]) -> list[Variant]:
    """Add each selected case's reference variant, which the backend check needs as its baseline."""
    have = {v.id for v in variants}
    extra: list[Variant] = []
    # Only cases with a variant the backend check judges: a round trip is held against its own
    # before outputs, an rng stream against itself, and neither needs the reference run.
    judged = [v for v in variants if "backend" in checks_for(v)]
    for c in {id(v.case): v.case for v in judged}.values():
        ref = c.reference_variant
        if ref is not None and ref.id not in have:
            extra.append(ref)
            have.add(ref.id)
    return variants + extra


def case_record(c: Case, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> CaseRecord:
    ref = c.reference_variant
    return CaseRecord(
        id=c.id, fingerprint=c.fingerprint, tags=sorted(c.tags), kind=c.kind, inputs=inputs, params=params,
        reference=ref.impl.name if ref else ("stored" if c.reference_outputs is not None else None),
        reference_variant=ref.id if ref else None, reference_outputs=c.reference_outputs, known=list(c.known),
        location=c.location, inputs_digest=digest_arrays({**inputs, **{f"param:{k}": v for k, v in params.items()}}),
    )


# -- execution of one variant (shared by workers, --in-process and the pytest plugin) ----------


def case_arrays(c: Case, replay: RunRecord | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The case's inputs and parameters: replayed from a baseline bundle, or made from the seed."""
    if replay is not None and c.id in replay.cases:
        stored = replay.cases[c.id]
        return {k: np.asarray(stored.inputs[k]) for k in stored.inputs}, {k: np.asarray(stored.params[k]) for k in stored.params}
    return c.make_inputs(), c.make_params()


def task_for(v: Variant, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], repeat: int
             ) -> dict[str, Any]:
    """What :func:`execute` needs to run one variant (a plain dict: it crosses to a worker process)."""
    return {"id": v.id, "case": v.case.id, "impl": v.impl.name, "device": v.device, "dtype": v.dtype,
            "mode": v.mode, "repeat": repeat, "inputs": dict(inputs), "params": dict(params)}


def execute(backend: Backend, c: Case, task: Mapping[str, Any]) -> dict[str, Any]:
    """Run one variant with a loaded backend; returns a result dict (never raises for case errors)."""
    impl = c.impls[task["impl"]]
    device, dtype, mode, repeat = task["device"], task["dtype"], task["mode"], int(task.get("repeat", 1))
    result: dict[str, Any] = {"id": task["id"], "status": "ok", "error": None, "seconds": None, "outputs": {},
                              "distinct_results": None, "repeat_outputs": None, "run_digests": [], "info": {},
                              "roundtrip": None}
    if device not in backend.devices():
        result.update(status="skipped", error=f"no {device} device seen by {backend.name}")
        return result
    fmt: rt.RoundtripFormat | None = None
    if rt.is_roundtrip_mode(mode):
        fmt = rt.find_format(impl.backend, mode[len(rt.PREFIX):], c.roundtrip_formats)
        if fmt is None:
            result.update(status="error", error=f"no round-trip format {mode[len(rt.PREFIX):]!r} for backend "
                                                f"{impl.backend!r} (known: {', '.join(f.name for f in rt.formats_for(impl.backend))})")
            return result
        why_not = fmt.missing() or (None if impl.module else
                                    f"the {mode} mode needs a module builder, and this implementation is a plain function")
        if why_not:
            result.update(status="skipped", error=why_not)
            return result
    supported, why = backend.supports(device=device, dtype=dtype, mode=fmt.before_mode if fmt else mode)
    if not supported:
        result.update(status="skipped", error=why)
        return result
    try:
        inputs = [backend.to_native(cast_floats(np.asarray(a), dtype), device) for a in task["inputs"].values()]
        params = {k: backend.to_native(cast_floats(np.asarray(a), dtype), device) for k, a in task["params"].items()}
        if impl.module:
            obj: Any = impl.fn(params)
        elif params:
            obj = functools.partial(impl.fn, params=params)
        else:
            obj = impl.fn
        names = list(c.outputs) if c.outputs else None
        extra_info: dict[str, Any] = {}
        if fmt is not None:
            # The before outputs, the save and the load happen here, in this worker; the loaded
            # object's callable is what runs (and repeats) below.
            ctx = rt.RoundtripContext(backend=backend, device=device, dtype=dtype, example_inputs=tuple(inputs),
                                      build=lambda: impl.fn(params),
                                      key=f"{c.id}|{impl.name}|{dtype}|{digest_arrays({**task['inputs'], **task['params']})}")
            call, trip = rt.run_roundtrip(fmt, obj, ctx, inputs, seed=c.seed, names=names)
            result["roundtrip"] = trip.to_dict()
            extra_info = {**ctx.info, "roundtrip.format": fmt.name}
        else:
            call = backend.prepare(obj, mode=mode, device=device, dtype=dtype, example_inputs=inputs,
                                   is_module=impl.module)
        # An rng case always draws twice: reseeding must give the same stream (the rng check).
        runs = max(1, repeat, 2 if c.kind == "rng" else 1)
        digests: list[str] = []
        first: dict[str, np.ndarray] = {}
        seconds = 0.0
        for run in range(runs):
            raw, elapsed = backend.run(call, inputs, device=device, seed=c.seed)
            seconds += elapsed
            outputs = backend.outputs_to_numpy(raw, names=names)
            digest = digest_arrays(outputs)
            if run == 0:
                first = outputs
            elif digest not in digests and result["repeat_outputs"] is None:
                result["repeat_outputs"] = outputs
            if digest not in digests:
                digests.append(digest)
            result["run_digests"].append(digest)
        result.update(outputs=first, seconds=seconds / runs, info=jsonable({**backend.run_info(), **extra_info}))
        if runs > 1:
            result["distinct_results"] = len(digests)
    except UnsupportedVariant as exc:
        result.update(status="skipped", error=exc.reason)
    except Exception as exc:  # an implementation's failure is a result, not a crash of the harness
        result.update(status="error", error=_one_line(exc), traceback=traceback.format_exc(limit=6))
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# -- worker processes --------------------------------------------------------------------------


def _load_backend(name: str, deterministic: bool) -> tuple[Backend, dict[str, Any]]:
    """Set switches (some must precede the import: XLA_FLAGS), import, and fingerprint a backend."""
    backend = get_backend(name)
    switches = backend.apply_switches(deterministic)
    backend.load()
    switches = {**switches, **backend.apply_switches(deterministic)}
    fingerprint = dict(backend.fingerprint())
    for key, value in switches.items():
        fingerprint[key if "." in key else f"{name}.{key}"] = value
    return backend, {"devices": list(backend.devices()), "fingerprint": fingerprint}


def _worker_main(conn: multiprocessing.connection.Connection, backend_name: str, case_paths: list[str],
                 deterministic: bool) -> None:
    try:
        registry = discover(case_paths or None)
        backend, hello = _load_backend(backend_name, deterministic)
    except BaseException as exc:
        conn.send(("hello", {"error": _one_line(exc)}))
        return
    conn.send(("hello", hello))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        conn.send(("result", execute(backend, registry[message["case"]], message)))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        hint = " (out of memory?)" if -code == signal.SIGKILL else ""
        return f"worker crashed: killed by {name}{hint}"
    return f"worker exited with code {code}"


class Worker:
    """One backend's worker process, restarted after a crash or a timeout."""

    def __init__(self, backend: str, options: RunOptions) -> None:
        self.backend = backend
        self.options = options
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: multiprocessing.connection.Connection | None = None
        self.hello: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, name=f"detharness-{self.backend}", daemon=True,
                                   args=(child, self.backend, self.options.case_paths, self.options.deterministic))
        self.process.start()
        child.close()
        self.conn = parent
        # Importing a framework can take a while on a cold disk: allow it beyond one variant's timeout.
        message = self._receive(max(self.options.timeout, 300.0))
        if message is None:
            self.hello = {"error": f"{self.backend} worker did not start: {_describe_exit(self.process.exitcode)}"}
            self.stop()
        else:
            self.hello = message[1]
        return self.hello

    def _receive(self, timeout: float) -> tuple[str, Any] | None:
        assert self.conn is not None and self.process is not None
        try:
            if self.conn.poll(timeout):
                return self.conn.recv()  # type: ignore[no-any-return]
        except (EOFError, OSError):
            self.process.join(5)
        return None

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        # Restarted after a crash or a timeout; one that could not start answers with why, not
        # with another start (a framework import, or a wait for a hang) for every variant.
        if "error" not in self.hello and (self.process is None or not self.process.is_alive()):
            self.start()
        if "error" in self.hello:
            return {"id": task["id"], "status": "error", "error": self.hello["error"]}
        assert self.conn is not None and self.process is not None
        try:
            self.conn.send(task)
        except (BrokenPipeError, OSError):
            pass
        message = self._receive(self.options.timeout)
        if message is not None:
            return message[1]  # type: ignore[no-any-return]
        alive = self.process.is_alive()
        reason = f"timed out after {self.options.timeout:g} s" if alive else _describe_exit(self.process.exitcode)
        self.stop()
        return {"id": task["id"], "status": "error", "error": reason}

    def stop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        if self.process is not None:
            self.process.join(0.5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
        self.process = None


# -- the whole run -----------------------------------------------------------------------------


def run(options: RunOptions) -> RunRecord:
    """Discover, select, execute and record. Checks are applied by the caller (:mod:`checks`)."""
    if options.backends:
        check_backends_requested(options.backends)
    if options.device not in DEVICE_CHOICES:
        raise UsageError(f"--device {options.device!r}: choose from {', '.join(DEVICE_CHOICES)}")
    if options.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if options.repeat_processes < 1:
        raise UsageError("--repeat-processes must be at least 1")
    if options.repeat_processes > 1 and options.in_process:
        raise UsageError("--repeat-processes runs fresh worker processes; it cannot be combined with --in-process")
    registry = discover(options.case_paths or None)
    variants = select_variants(registry, options)
    if not options.checks or "backend" in options.checks:
        variants = with_references(variants)  # no other check reads the reference's outputs

    cases: dict[str, CaseRecord] = {}
    arrays: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    for c in {v.case.id: v.case for v in variants}.values():
        inputs, params = case_arrays(c, options.inputs_from)
        arrays[c.id] = (inputs, params)
        cases[c.id] = case_record(c, inputs, params)

    by_backend: dict[str, list[Variant]] = {}
    for v in variants:
        by_backend.setdefault(v.impl.backend, []).append(v)

    backend_keys: dict[str, Any] = {}
    # One dict of results per set of fresh processes (--repeat-processes); the first is the run's.
    passes: list[dict[str, dict[str, Any]]] = []
    results: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    done = 0
    total = len(variants) * options.repeat_processes

    def report(result: dict[str, Any]) -> None:
        nonlocal done
        with lock:
            results[result["id"]] = result
            done += 1
            if options.progress:
                options.progress(done, total, result["id"])

    def task_of(v: Variant) -> dict[str, Any]:
        return task_for(v, *arrays[v.case.id], repeat=options.repeat)

    def run_backend(name: str, todo: list[Variant]) -> None:
        backend = get_backend(name)
        if not backend.is_installed():
            for v in todo:
                report({"id": v.id, "status": "skipped", "error": f"{name} not installed: {backend.install_hint}"})
            return
        if options.in_process:
            try:
                loaded, hello = _load_backend(name, options.deterministic)
            except Exception as exc:
                hello = {"error": f"{name} failed to load: {_one_line(exc)}"}
            with lock:
                backend_keys.update(hello.get("fingerprint", {}))
            for v in todo:
                if "error" in hello:
                    report({"id": v.id, "status": "error", "error": hello["error"]})
                else:
                    report(execute(loaded, v.case, task_of(v)))
            return
        worker = Worker(name, options)
        hello = worker.start()
        with lock:
            backend_keys.update(hello.get("fingerprint", {}))
        try:
            for v in todo:
                report(worker.run(task_of(v)))
        finally:
            worker.stop()

    for _ in range(options.repeat_processes):
        results = {}
        if options.in_process:
            for name, todo in by_backend.items():
                run_backend(name, todo)
        else:
            # Each pass starts new workers: a fresh interpreter (a new hash seed unless
            # PYTHONHASHSEED is set), new thread pools, a new allocator state.
            threads = [threading.Thread(target=run_backend, args=(n, t), daemon=True) for n, t in by_backend.items()]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        passes.append(results)

    environment = dict(sorted(env_mod.merge(env_mod.fingerprint(), backend_keys).items()))
    record = RunRecord(environment=environment, environment_id=env_mod.environment_id(environment),
                       cases=cases, options=_options_json(options))
    lost = {"status": "error", "error": "no result (worker lost)"}
    for v in variants:
        per_pass = [p.get(v.id, lost) for p in passes]
        record.variants[v.id] = variant_record(v, merge_process_passes(per_pass) if len(per_pass) > 1 else per_pass[0])
    return record


def variant_record(v: Variant, result: Mapping[str, Any]) -> VariantRecord:
    """The record of one variant from its result dict (from a worker, this process or the plugin)."""
    outputs = result.get("outputs") or {}
    return VariantRecord(
        id=v.id, case=v.case.id, impl=v.impl.name, backend=v.impl.backend, device=v.device, dtype=v.dtype,
        mode=v.mode, status=result["status"], reference=v.impl.reference, error=result.get("error"),
        seconds=result.get("seconds"), outputs=outputs,
        tolerances={name: v.case.tolerance_for(name, v.dtype) for name in outputs},
        distinct_results=result.get("distinct_results"), repeat_outputs=result.get("repeat_outputs"),
        info=result.get("info") or {}, repeat=result.get("repeat"), roundtrip=result.get("roundtrip"),
    )


def merge_process_passes(passes: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's results from several sets of fresh processes, as one result.

    The first pass's outputs stand for the variant; ``distinct_results`` counts the distinct
    outputs over every run of every process; ``repeat_outputs`` holds the first that differ from
    the first run's; ``repeat`` keeps each process's run digests (and any process's failure).
    """
    merged = dict(passes[0])
    digests = [list(p.get("run_digests") or []) for p in passes]
    failures = [f"process {i + 1}: {p.get('status')}: {p.get('error')}" for i, p in enumerate(passes)
                if p.get("status") != merged.get("status")]
    merged["repeat"] = {"processes": len(passes), "runs": max((len(d) for d in digests), default=0),
                        "digests": digests, "failures": failures}
    if merged.get("status") != "ok":
        return merged
    every = [d for ds in digests for d in ds]
    merged["distinct_results"] = len(set(every)) if every else None
    if merged.get("repeat_outputs") is None:
        first = every[0] if every else None
        for p, ds in zip(passes[1:], digests[1:]):
            if p.get("status") == "ok" and ds and ds[0] != first:
                merged["repeat_outputs"] = p.get("outputs")
                break
    return merged


def _options_json(options: RunOptions) -> dict[str, Any]:
    return {
        "cases": [display_path(p) for p in options.case_paths],
        "keyword": options.keyword, "tags": options.tags, "backends": options.backends, "device": options.device,
        "repeat": options.repeat, "repeat_processes": options.repeat_processes, "checks": options.checks,
        "deterministic": options.deterministic, "timeout": options.timeout,
        "inputs_from": options.inputs_from.path if options.inputs_from is not None else None,
        "in_process": options.in_process,
    }
