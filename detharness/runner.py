"""Expand variants and execute them: in one worker process per backend, or in this process.

Each worker imports its framework once and runs every variant of its backend. A crash, a hang past
``--timeout`` or an out-of-memory kill costs one variant: it is recorded as ``error`` with the
reason, the worker is restarted and the remaining variants go on. Workers of different backends run
side by side (the parent only waits on pipes), so torch's and jax's start-up costs overlap.

Implementations get their inputs by name (``def _(a, b)`` gets the input called ``a`` as ``a``,
whatever the order of the case's input dict), ``params`` when the case has parameters, and ``ctx``
(a :class:`~detharness.cases.Context`) when they ask for it. What a variant prints or warns, and
what its framework logs, goes to that variant's record (:class:`~detharness.results.VariantLog`),
not to the terminal.
"""

from __future__ import annotations

import contextlib
import inspect
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detharness import environment as env_mod
from detharness import roundtrip as rt
from detharness.backends import Backend, UnsupportedVariant, VariantSpec, get_backend, load_backend, state
from detharness.backends.base import jsonable
from detharness.cases import Case, Context, Registry, Variant, discover, display_path
from detharness.checks import CHECKS, RUN_CHECKS, Plan, checks_for, needed
from detharness.compare.scan import available_cores
from detharness.dtypes import cast_floats
from detharness.errors import BackendError, CaseError, UsageError
from detharness.record import CaseRecord, RunRecord, VariantRecord, digest_arrays
from detharness.results import Hello, Outcome, Reply, Task, VariantLog
from detharness.select import compile_expression

DEVICE_CHOICES = ("cpu", "cuda", "all")
_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _cache_enabled() -> bool:
    from detharness import cache

    return cache.enabled()


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
    #: Record the layers inside every model variant (``--intermediates``; a case can ask for it too).
    intermediates: bool = False
    #: Only these variant ids (``bisect --variant --against``), and nothing they would need.
    only_ids: list[str] = field(default_factory=list)
    #: ``(I, N)``: run only shard I of N of the selection (``--shard I/N``; see :mod:`detharness.shard`).
    shard: tuple[int, int] | None = None
    #: Use the persistent cache of prepared artefacts (ONNX exports, jax compiles); ``--no-cache``
    #: turns it off. It never changes a result: each variant's ``cache`` field says what it used.
    #: (On unless ``DETHARNESS_NO_CACHE`` is set.)
    cache: bool = field(default_factory=lambda: _cache_enabled())
    #: Worker processes per backend (``--workers``). None: one each, and a helper for a backend
    #: whose rest is worth one when a core is idle (:func:`helper_worthwhile`), up to as many
    #: workers as there are cores; an int: at most that many per backend, by the same rule (1: one
    #: worker per backend); a mapping: that many for each backend named (1 for the others), started
    #: at once. Every helper keeps the first worker's thread settings, so the results and the
    #: environment id are the same whatever the split.
    workers: int | Mapping[str, int] | None = None

    @property
    def plan(self) -> Plan:
        return Plan(repeating=self.repeat > 1 or self.repeat_processes > 1)


def select_variants(registry: Registry, options: RunOptions) -> list[Variant]:
    """The declared variants that pass ``-k``, ``--tag``, ``--backend``, ``--device`` and ``--check``.

    Whether a device is really present is decided later, by the backend's worker.
    """
    match = compile_expression(options.keyword) if options.keyword else None
    wanted_backends = set(options.backends)
    plan = options.plan
    chosen: list[Variant] = []
    for c in registry:
        for v in c.variants():
            if options.only_ids and v.id not in options.only_ids:
                continue
            if options.tags and not v.tags.intersection(options.tags):
                continue
            if options.checks and not checks_for(v, plan, options.checks):
                continue
            if wanted_backends and v.impl.backend not in wanted_backends:
                continue
            if options.device != "all" and v.device != options.device:
                continue
            if match is not None and not match(v.id, v.keywords):
                continue
            chosen.append(v)
    return chosen


def check_backends_requested(names: Iterable[str]) -> None:
    """``--backend`` naming an unknown or uninstalled backend is a usage error (exit 2)."""
    for name in names:
        backend = get_backend(name)
        if not backend.is_installed():
            raise BackendError(f"backend {name!r} is not installed: {backend.install_hint}")


def case_record(c: Case, inputs: dict[str, np.ndarray], params: dict[str, np.ndarray]) -> CaseRecord:
    ref = c.reference_variant
    return CaseRecord(
        id=c.id, fingerprint=c.fingerprint, tags=sorted(c.tags), kind=c.kind, inputs=inputs, params=params,
        reference=ref.impl.name if ref else ("stored" if c.reference_outputs is not None else None),
        reference_variant=ref.id if ref else None, reference_outputs=c.reference_outputs, known=list(c.known),
        location=c.location, inputs_digest=digest_arrays({**inputs, **{f"param:{k}": v for k, v in params.items()}}),
        decisions=dict(c.decisions), accuracy=dict(c.accuracy),
    )


def case_arrays(c: Case, replay: RunRecord | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The case's inputs and parameters (replayed from a baseline bundle, or made from the seed),
    after checking that every implementation takes them by name (:class:`CaseError` otherwise)."""
    if replay is not None and c.id in replay.cases:
        stored = replay.cases[c.id]
        inputs = {k: np.asarray(stored.inputs[k]) for k in stored.inputs}
        params = {k: np.asarray(stored.params[k]) for k in stored.params}
    else:
        inputs, params = c.make_inputs(), c.make_params()
    c.check_signatures(list(inputs), list(params))
    return inputs, params


def task_for(v: Variant, inputs: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray], repeat: int, *,
             intermediates: bool = False, replay: RunRecord | None = None) -> Task:
    """What :func:`execute` needs to run one variant; it crosses to a worker process. With
    ``intermediates`` (or a case that asks for them) its layers are recorded, and where ``replay``
    (the ``--inputs-from`` bundle) holds the baseline's inputs to each layer of this variant, each
    layer is also re-run on them (shadow mode)."""
    record_layers = (intermediates or v.case.intermediates) and v.impl.module
    shadow = None
    if record_layers and replay is not None:
        from detharness.record import layer_inputs

        shadow = layer_inputs(replay.variants.get(v.id))
    return Task(id=v.id, case=v.case.id, impl=v.impl.name, device=v.device, dtype=v.dtype, mode=v.mode,
                repeat=repeat, inputs=dict(inputs), params=dict(params), intermediates=bool(record_layers),
                shadow_inputs=shadow)


# -- execution of one variant (shared by workers, --in-process and the pytest plugin) ----------


def execute(backend: Backend, c: Case, task: Task) -> Reply:
    """Run one variant with a loaded backend; never raises for the case's own failures.

    The global switches that change numerics (:mod:`detharness.backends.state`) are put back as
    they were before the variant; what it changed is recorded in its ``info`` and ``log``.
    """
    before = state.snapshot()
    try:
        reply = _execute(backend, c, task)
    except Exception as exc:
        # What _execute does not turn into the variant's result (a backend's own check, such as a
        # probe of its kernels, that fails) is still that variant's error: a worker must not die
        # of it and take every later variant of its backend with it.
        reply = Reply.failure(task.id, f"detharness could not run this variant: {one_line(exc)}",
                              user_traceback(exc))
    finally:
        changed = state.restore(before)
    if changed:
        reply.info = {**reply.info, "state_changed": changed}
        reply.log.warnings.append("the variant changed global settings (restored after it): " +
                                  "; ".join(f"{key}: {values[0]} -> {values[1]}" for key, values in changed.items()))
    return reply


def _execute(backend: Backend, c: Case, task: Task) -> Reply:
    impl = c.impls[task.impl]
    reply = Reply(id=task.id, outcome=Outcome.OK)
    if task.device not in backend.devices():
        return Reply.skip(task.id, f"no {task.device} device seen by {backend.name}")
    fmt: rt.RoundtripFormat | None = None
    if rt.is_roundtrip_mode(task.mode):
        name = task.mode[len(rt.PREFIX):]
        fmt = rt.find_format(impl.backend, name, c.roundtrip_formats)
        if fmt is None:
            known = ", ".join(f.name for f in rt.formats_for(impl.backend))
            return Reply.failure(task.id, f"no round-trip format {name!r} for backend {impl.backend!r} (known: {known})")
        why_not = fmt.missing() or (None if impl.module else
                                    f"the {task.mode} mode needs a module builder, and this implementation is a "
                                    "plain function")
        if why_not:
            return Reply.skip(task.id, why_not)
    spec = VariantSpec(device=task.device, dtype=task.dtype, mode=fmt.before_mode if fmt else task.mode,
                       is_module=impl.module, variant_id=task.id)
    try:
        supported, why = backend.supports(spec)
    except UnsupportedVariant as exc:
        return Reply.skip(task.id, exc.reason)
    if not supported:
        return Reply.skip(task.id, why)
    ctx = Context(device=task.device, dtype=task.dtype, seed=c.seed, variant=task.id, backend=impl.backend,
                  mode=task.mode)
    try:
        native = {k: backend.to_native(cast_floats(np.asarray(a), task.dtype), task.device)
                  for k, a in task.inputs.items()}
        params = {k: backend.to_native(cast_floats(np.asarray(a), task.dtype), task.device)
                  for k, a in task.params.items()}
        extras: dict[str, Any] = {"ctx": ctx} if impl.takes_ctx() else {}
        if impl.module:
            obj: Any = build(impl.fn, params, extras)
            order = module_input_order(obj, list(native), c.id, impl.name)
        else:
            if task.params or c.params_factory is not None:
                extras["params"] = params
            obj = bind_by_name(impl.fn, list(native), extras)
            order = list(native)
        inputs = [native[name] for name in order]
        names = list(c.outputs) if c.outputs else None
        extra_info: dict[str, Any] = {}
        if fmt is not None:
            # The before outputs, the save and the load happen here, in this worker; the loaded
            # object's callable is what runs (and repeats) below.
            trip_ctx = rt.RoundtripContext(
                backend=backend, device=task.device, dtype=task.dtype, example_inputs=tuple(inputs),
                build=lambda: build(impl.fn, params, extras), variant_id=task.id,
                key=f"{c.id}|{impl.name}|{task.dtype}|{digest_arrays({**task.inputs, **task.params})}")
            call, trip = rt.run_roundtrip(fmt, obj, trip_ctx, inputs, seed=c.seed, names=names)
            reply.roundtrip = trip.to_dict()
            extra_info = {**trip_ctx.info, "roundtrip.format": fmt.name}
        else:
            call = backend.prepare(obj, spec, example_inputs=inputs)
        # An rng case always draws twice: reseeding must give the same stream (the rng check).
        runs = max(1, task.repeat, 2 if c.kind == "rng" else 1)
        digests: list[str] = []
        seconds = 0.0
        for run in range(runs):
            raw, elapsed = backend.run(call, inputs, device=task.device, seed=c.seed)
            seconds += elapsed
            outputs = backend.outputs_to_numpy(raw, names=names)
            digest = digest_arrays(outputs)
            if run == 0:
                reply.outputs = outputs
            elif digest not in digests and reply.repeat_outputs is None:
                reply.repeat_outputs = outputs
            if digest not in digests:
                digests.append(digest)
            reply.run_digests.append(digest)
        reply.seconds = seconds / runs
        reply.info = jsonable({**backend.run_info(), **extra_info})
        if task.intermediates:
            reply.layers = _record_layers(backend, obj, spec, call, inputs, reply, names, task, fmt is not None)
        if runs > 1:
            reply.distinct_results = len(digests)
    except UnsupportedVariant as exc:
        return Reply.skip(task.id, exc.reason)
    except Exception as exc:  # an implementation's failure is a result, not a crash of the harness
        return Reply.failure(task.id, one_line(exc), user_traceback(exc))
    return reply


def _record_layers(backend: Backend, obj: Any, spec: VariantSpec, call: Any, inputs: list[Any], reply: Reply,
                   names: list[str] | None, task: Task, roundtrip: bool) -> Any:
    """The variant's layers (``--intermediates``); a failure to record them is a note, never the
    variant's error: its outputs were recorded already."""
    from detharness import intermediates

    try:
        return intermediates.record(backend, obj, spec, call, inputs, reply.outputs, names=names,
                                    shadow_inputs=task.shadow_inputs, roundtrip=roundtrip)
    except Exception as exc:
        return intermediates.Recorded(notes=[f"layers not recorded: {one_line(exc)}"], approximate=True)


def build(fn: Callable[..., Any], params: Mapping[str, Any], extras: Mapping[str, Any]) -> Any:
    """Call a builder: ``params`` by name where it has a parameter of that name, else first by position."""
    try:
        by_name = "params" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        by_name = False
    return fn(params=params, **extras) if by_name else fn(params, **extras)


def bind_by_name(fn: Callable[..., Any], names: Sequence[str], extras: Mapping[str, Any]) -> Callable[..., Any]:
    """A positional callable (what backends call) that passes each input to ``fn`` by its name."""
    keys = tuple(names)

    def call(*arrays: Any) -> Any:
        return fn(**dict(zip(keys, arrays, strict=True)), **extras)

    call.__name__ = getattr(fn, "__name__", "implementation")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    return call


def declared_inputs(obj: Any) -> list[str] | None:
    """The input names a built model declares, in its order: an ONNX graph's inputs, a torch
    module's ``forward`` parameters, a callable's parameters; None where it does not say."""
    graph = getattr(obj, "graph", None)
    if graph is not None and hasattr(graph, "input") and hasattr(graph, "initializer"):
        constants = {t.name for t in graph.initializer}
        return [i.name for i in graph.input if i.name not in constants]
    target = getattr(obj, "forward", obj)
    if not callable(target):
        return None
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return None
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def module_input_order(obj: Any, names: Sequence[str], case_id: str, impl: str) -> list[str]:
    """The order in which a built model gets the case's inputs (it is called with them by position,
    as an exporter calls it).

    Where the model declares every input name the case gives, they are matched by name, whatever
    the order of the case's dict. Otherwise they go in the case's order (``nn.Sequential`` calls its
    input ``input``), provided no name the two share stands at another position: that would hand
    an input to the wrong parameter, which is an error.
    """
    declared = declared_inputs(obj)
    if declared is None:
        return list(names)
    if all(name in declared for name in names):
        return sorted(names, key=declared.index)
    misplaced = [name for i, name in enumerate(names) if name in declared and declared.index(name) != i]
    if misplaced:
        raise CaseError(f"case {case_id}: the model that implementation {impl!r} builds takes "
                        f"({', '.join(declared)}), the case gives ({', '.join(names)}): input "
                        f"{misplaced[0]!r} would reach another parameter; name the inputs as the model does")
    return list(names)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def user_traceback(exc: BaseException, limit: int = 30) -> str | None:
    """The exception's traceback without detharness's own frames: the user's file and line first
    (None when every frame is detharness's: the message says it all)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_PACKAGE_DIR)]
    if not frames:
        return None
    lines = ["Traceback (most recent call last):\n"]
    if len(frames) > limit:
        lines.append(f"  ... {len(frames) - limit} frames above ...\n")
    lines += traceback.format_list(frames[-limit:])
    lines += traceback.format_exception_only(type(exc), exc)
    return "".join(lines)


# -- capturing what a variant prints -------------------------------------------------------------


@contextlib.contextmanager
def captured(into: list[VariantLog]) -> Iterator[None]:
    """Send fd 1 and 2 (prints, C++ framework logs) and Python warnings of the block to a
    :class:`VariantLog`, appended to ``into`` when the block ends."""
    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = [os.dup(1), os.dup(2)]
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught_now:
                warnings.simplefilter("default")
                yield
            caught = list(caught_now)
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            texts = []
            for f in (out_file, err_file):
                f.seek(0)
                texts.append(f.read().decode("utf-8", "replace"))
            into.append(VariantLog.bounded(
                texts[0], texts[1],
                [f"{w.filename}:{w.lineno}: {w.category.__name__}: {w.message}" for w in caught]))


# -- worker processes --------------------------------------------------------------------------


def _detach_worker(parent: int) -> None:
    """Make this worker a process group of its own that dies with detharness.

    Its own group: a terminal's Ctrl-C reaches detharness alone (which ends the workers, printing
    one line), and the runner ends the whole group with the worker, children a case forked
    included. Dying with the parent: a kill -9 of detharness must not leave a worker running a
    hung variant forever (Linux's PR_SET_PDEATHSIG; everywhere, a watchdog thread that ends the
    group once the parent is gone).
    """
    with contextlib.suppress(OSError):
        os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        with contextlib.suppress(OSError):
            os.killpg(os.getpgrp(), signal.SIGKILL)
        os._exit(1)

    threading.Thread(target=watch, name="detharness-parent-watchdog", daemon=True).start()


def _freeze_heap() -> None:
    """Leave every object this worker holds now out of the garbage collector's full passes.

    Called twice. Once the framework and the case files are loaded: a full collection walks every
    tracked object, after ``import torch`` most of the framework, again each time the variants'
    allocations trigger one; frozen, the built-in models' torch and jax variants take about 6% less
    CPU. And when the worker is told to stop (or finds its pipe closed), its answers sent: a torch
    worker that exported to ONNX spent about 0.55 CPU-s exiting, nearly all of it the interpreter's
    last collections, and the runner kills a worker still there after 0.5 s; frozen, the exit takes
    about 0.17 s and the atexit handlers and stream flushes still run. (benchmarks/worker_gc.py
    measures both, and checks that the outputs stay bitwise equal.)

    Nothing changes but the collector's work: frozen objects are still freed by reference counting,
    no result depends on when a collection runs, and nothing a worker holds is written at exit (the
    cache's entries and jax's compiled programs are written when they are made).
    """
    import gc

    gc.freeze()


def _worker_main(conn: multiprocessing.connection.Connection, backend_name: str, case_paths: list[str],
                 deterministic: bool, parent: int = 0, use_cache: bool = True) -> None:
    _detach_worker(parent or os.getppid())
    from detharness import cache

    os.environ[cache.NO_CACHE_VARIABLE] = "0" if use_cache else "1"  # this worker and what it starts
    logs: list[VariantLog] = []
    try:
        with captured(logs):
            for name, value in get_backend(backend_name).worker_environment.items():
                os.environ.setdefault(name, value)  # before the case files: one may import the framework
            registry = discover(case_paths or None)
            backend, hello = load_backend(backend_name, deterministic)
    except BaseException as exc:
        stderr = logs[-1].stderr.strip().splitlines()[-3:] if logs else []
        conn.send(("hello", Hello(error=one_line(exc) + ("".join(f"\n  {line}" for line in stderr)))))
        return
    conn.send(("hello", Hello(devices=tuple(hello["devices"]), fingerprint=hello["fingerprint"],
                              info={k: v for k, v in hello.items() if k not in ("devices", "fingerprint")})))
    _freeze_heap()  # what is loaded lives as long as the worker
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = None
        if message is None:
            _freeze_heap()  # the exit's last collections have nothing to walk
            return
        logs = []
        with captured(logs):
            case = registry.get(message.case)
            if case is None:
                reply = Reply.failure(message.id, f"case {message.case} is not in this worker's case files")
            else:
                reply = execute(backend, case, message)
        reply.log = logs[-1].with_warnings(reply.log.warnings)
        conn.send(("result", reply))


#: The interpreter that worker processes run (default: this one). An emulated interpreter cannot
#: start itself (no binfmt_misc): ``detharness matrix`` points this at a host-side launcher of the
#: emulator for an emulated profile (see :mod:`detharness.matrix.emulation`).
WORKER_PYTHON_VARIABLE = "DETHARNESS_WORKER_PYTHON"


def worker_python() -> str:
    """The executable that starts a worker: ``$DETHARNESS_WORKER_PYTHON``, else this interpreter."""
    return os.environ.get(WORKER_PYTHON_VARIABLE, "").strip() or sys.executable


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

    def __init__(self, backend: str, case_paths: Sequence[str], deterministic: bool, timeout: float,
                 use_cache: bool = True) -> None:
        self.backend = backend
        self.case_paths = list(case_paths)
        self.deterministic = deterministic
        self.timeout = timeout
        self.use_cache = use_cache
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: multiprocessing.connection.Connection | None = None
        self.hello = Hello()

    def start(self) -> Hello:
        ctx = multiprocessing.get_context("spawn")
        executable = worker_python()
        if executable != sys.executable:
            ctx.set_executable(executable)
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, name=f"detharness-{self.backend}", daemon=True,
                                   args=(child, self.backend, self.case_paths, self.deterministic, os.getpid(),
                                         self.use_cache))
        self.process.start()
        child.close()
        self.conn = parent
        # Importing a framework can take a while on a cold disk: allow it beyond one variant's timeout.
        message = self._receive(max(self.timeout, 300.0))
        if message is not None and message[0] == "hello" and isinstance(message[1], Hello):
            self.hello = message[1]
        else:
            why = _describe_exit(self.process.exitcode) if message is None else f"its first message {message[1]}"
            self.hello = Hello(error=f"{self.backend} worker did not start: {why}")
            self.stop()
        return self.hello

    def _receive(self, timeout: float) -> tuple[str, Any] | None:
        """The worker's next message; None if it ended or said nothing in ``timeout`` seconds;
        ``("garbage", why)`` for bytes that are not a message of ours (a variant that wrote to the
        pipe's file descriptor). A message cut short cannot hang the reader: past the timeout the
        worker is ended, which closes the pipe."""
        assert self.conn is not None and self.process is not None
        deadline = time.monotonic() + timeout
        try:
            if not self.conn.poll(timeout):
                return None
            timer = threading.Timer(max(1.0, deadline - time.monotonic()), self._kill)
            timer.start()
            try:
                message = self.conn.recv()
            finally:
                timer.cancel()
        except (EOFError, OSError):
            self.process.join(5)
            return None
        except Exception as exc:  # unpickling what is not a pickle
            return ("garbage", f"could not be read ({type(exc).__name__}: {str(exc)[:200]})")
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] in ("hello", "result")):
            return ("garbage", f"was not a message of detharness's (a {type(message).__name__})")
        return message

    def _kill(self) -> None:
        """End the worker and every process of its group (children a case forked)."""
        process = self.process
        if process is None:
            return
        if process.is_alive():
            process.kill()
        if process.pid is not None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)

    def run(self, task: Task) -> Reply:
        # Restarted after a crash or a timeout; one that could not start answers with why, not
        # with another start (a framework import, or a wait for a hang) for every variant.
        if self.hello.error is None and (self.process is None or not self.process.is_alive()):
            self.start()
        if self.hello.error is not None:
            return Reply.failure(task.id, self.hello.error)
        assert self.conn is not None and self.process is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(task)
        message = self._receive(self.timeout)
        if message is not None and message[0] == "result" and isinstance(message[1], Reply) \
                and message[1].id == task.id:
            return message[1]
        if message is not None:
            detail = message[1] if message[0] == "garbage" else f"answered another variant ({message[1]!r:.80})"
            self.stop()
            return Reply.failure(task.id, f"the worker's answer {detail}: did the variant write to detharness's "
                                          "pipe? The worker was restarted for the next variants")
        alive = self.process.is_alive()
        reason = f"timed out after {self.timeout:g} s" if alive else _describe_exit(self.process.exitcode)
        self.stop()
        return Reply.failure(task.id, reason)

    def stop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self.conn.send(None)
        if self.process is not None:
            self.process.join(0.5)
            self._kill()  # the worker if it is still there, and what its variants left running
            self.process.join(5)
        self.process = None


class _InProcess:
    """A backend loaded in this process (``--in-process``, ``--dh-in-process``): for debugging."""

    def __init__(self, name: str, deterministic: bool, use_cache: bool = True) -> None:
        from detharness import cache

        self.name = name
        self.use_cache = use_cache
        self.backend: Backend | None = None
        try:
            with cache.enabled_as(use_cache):
                self.backend, hello = load_backend(name, deterministic)
            self.hello = Hello(devices=tuple(hello["devices"]), fingerprint=hello["fingerprint"])
        except Exception as exc:
            self.hello = Hello(error=f"{name} failed to load: {one_line(exc)}")

    def run(self, case: Case, task: Task) -> Reply:
        if self.backend is None:
            return Reply.failure(task.id, self.hello.error or "not loaded")
        # Other code in this process (a test fixture) may have reset the framework's settings.
        self.backend.reload_settings()
        from detharness import cache

        logs: list[VariantLog] = []
        with captured(logs), cache.enabled_as(self.use_cache):
            reply = execute(self.backend, case, task)
        reply.log = logs[-1].with_warnings(reply.log.warnings)
        return reply

    def stop(self) -> None:
        """Nothing to end: the framework stays loaded in this process."""


class Executor:
    """Runs variants of any backend: one worker process per backend, started on first use (or
    everything in this process). The runner and the pytest plugin share it."""

    def __init__(self, case_paths: Sequence[str] = (), *, deterministic: bool = False, timeout: float = 600.0,
                 in_process: bool = False, use_cache: bool | None = None) -> None:
        from detharness import cache

        self.case_paths = list(case_paths)
        self.deterministic = deterministic
        self.timeout = timeout
        self.in_process = in_process
        #: None: as this process has it (on unless DETHARNESS_NO_CACHE is set).
        self.use_cache = cache.enabled() if use_cache is None else use_cache
        self._runners: dict[str, Worker | _InProcess] = {}
        self._lock = threading.Lock()
        #: Fingerprint keys of every backend loaded so far.
        self.fingerprint: dict[str, Any] = {}

    def _runner(self, name: str) -> Worker | _InProcess:
        with self._lock:
            runner = self._runners.get(name)
        if runner is None:
            if self.in_process:
                runner = _InProcess(name, self.deterministic, self.use_cache)
                hello = runner.hello
            else:
                runner = Worker(name, self.case_paths, self.deterministic, self.timeout, self.use_cache)
                hello = runner.start()
            with self._lock:
                self._runners[name] = runner
                self.fingerprint.update(hello.fingerprint)
        return runner

    def start(self, name: str) -> Hello:
        """Start backend ``name``'s worker now (it is otherwise started by its first variant) and
        return what it said when it started; its fingerprint keys join :attr:`fingerprint`."""
        return self._runner(name).hello

    def execute(self, v: Variant, task: Task) -> Reply:
        backend = get_backend(v.impl.backend)
        if not backend.is_installed():
            return Reply.skip(v.id, f"{backend.name} not installed: {backend.install_hint}")
        runner = self._runner(v.impl.backend)
        if isinstance(runner, _InProcess):
            return runner.run(v.case, task)
        return runner.run(task)

    def close(self) -> None:
        with self._lock:
            runners = list(self._runners.values())
            self._runners.clear()
        for runner in runners:
            runner.stop()


# -- the whole run -----------------------------------------------------------------------------


def validate(options: RunOptions) -> None:
    if options.backends:
        check_backends_requested(options.backends)
    if options.device not in DEVICE_CHOICES:
        raise UsageError(f"--device {options.device!r}: choose from {', '.join(DEVICE_CHOICES)}")
    if options.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    if options.repeat_processes < 1:
        raise UsageError("--repeat-processes must be at least 1")
    counts = options.workers.values() if isinstance(options.workers, Mapping) else [options.workers or 1]
    if any(n < 1 for n in counts):
        raise UsageError("--workers must be at least 1")
    if options.repeat_processes > 1 and options.in_process:
        raise UsageError("--repeat-processes runs fresh worker processes; it cannot be combined with --in-process")
    unknown = [c for c in options.checks if c not in CHECKS]
    if unknown:
        raise UsageError(f"--check {unknown[0]!r}: choose from {', '.join(CHECKS)}")
    if options.shard is not None:
        from detharness.shard import check_shard

        check_shard(*options.shard)
    if options.cache:
        from detharness import cache

        cache.max_bytes()  # a size cap it cannot read: refused before anything runs


def selection_settings(variants: Sequence[Variant], options: RunOptions) -> dict[str, Any]:
    """What, besides the variant ids, makes two runs of one selection different runs: the settings
    that change results, the cases' fingerprints (their code) and the replayed inputs."""
    replay = options.inputs_from
    return {
        "checks": sorted(options.checks or RUN_CHECKS), "device": options.device, "repeat": options.repeat,
        "repeat_processes": options.repeat_processes, "deterministic": options.deterministic,
        "intermediates": options.intermediates,
        "cases": {c.id: c.fingerprint for c in {v.case.id: v.case for v in variants}.values()},
        "inputs_from": None if replay is None else {"environment_id": replay.environment_id, "created": replay.created,
                                                    "cases": {cid: c.inputs_digest for cid, c in replay.cases.items()}},
    }


def take_shard(variants: list[Variant], options: RunOptions) -> tuple[list[Variant], dict[str, Any], dict[str, int]]:
    """The variants of shard ``options.shard`` (in selection order), what the run records of the
    shard (``options["shard"]``) and each taken variant's position in the whole selection."""
    from detharness import shard as shard_mod

    assert options.shard is not None
    index, count = options.shard
    units = shard_mod.unit_costs((v.case.id, v.id, v.impl.backend) for v in variants)
    mine = set(shard_mod.partition(units, count)[index - 1])
    info = {"index": index, "count": count,
            "selection": shard_mod.selection_hash((v.id for v in variants), selection_settings(variants, options)),
            "checks": list(options.checks or RUN_CHECKS), "selected": len(variants), "cases": sorted(mine)}
    positions = {v.id: i for i, v in enumerate(variants) if v.case.id in mine}
    return [v for v in variants if v.id in positions], info, positions


# -- splitting a backend's variants across worker processes --------------------------------------

#: A backend gets a helper worker only when the rest of its share is estimated to take longer than
#: this many times what starting its first worker took: the helper pays that start before it helps.
HELPER_GAIN = 2.0


def helper_worthwhile(*, remaining_cost: int, done_cost: int, done_seconds: float, start_seconds: float | None,
                      workers: int, most: int) -> bool:
    """Whether a backend whose share still holds cases the cost table prices at ``remaining_cost``
    ms should get another worker (a core is idle: the caller knows). The table's prices are scaled
    by what the cases done so far really took (``done_seconds`` for ``done_cost`` ms): a warm cache
    turns the table's cold exports into hits, and a second worker would then cost more than it saves.
    Nothing is decided before the first worker has started and finished a case."""
    if workers >= most or start_seconds is None or done_cost <= 0 or remaining_cost <= 0:
        return False
    rest = remaining_cost / done_cost * done_seconds
    return rest > HELPER_GAIN * max(start_seconds, 0.1)


def worker_limits(by_backend: Mapping[str, Sequence[Variant]], options: RunOptions) -> tuple[dict[str, int], bool]:
    """The most workers each backend may have in this run (see :attr:`RunOptions.workers`), and
    whether that many start at once (a mapping) instead of as helpers when a core is idle and the
    rest of the backend's share is worth one. Never more than the backend's cases; 1 in this
    process (``--in-process``) and for a backend that is not installed (it starts no worker)."""
    units = {b: len({v.case.id for v in todo}) for b, todo in by_backend.items()}
    installed = {b for b in by_backend if get_backend(b).is_installed()}
    forced = isinstance(options.workers, Mapping)
    limits: dict[str, int] = {}
    for b in by_backend:
        if options.in_process or b not in installed:
            limits[b] = 1
        elif isinstance(options.workers, Mapping):
            limits[b] = max(1, min(int(options.workers.get(b, 1)), units[b]))
        else:
            limits[b] = max(1, min(options.workers or available_cores(), units[b]))
    return limits, forced and not options.in_process


class _Share:
    """One backend's variants for one pass, handed a case at a time to the workers that share them.

    The first worker takes cases from the front, in selection order (an unsplit run's order); a
    helper takes them from the back. The first worker's fingerprint is the backend's: a helper that
    starts with another one (another thread count, say) runs nothing (see :func:`run`).
    """

    def __init__(self, backend: str, todo: Sequence[Variant], most: int) -> None:
        from detharness.shard import variant_cost

        self.backend = backend
        self.most = most
        self.installed = get_backend(backend).is_installed()
        units: dict[str, list[Variant]] = {}
        for v in todo:
            units.setdefault(v.case.id, []).append(v)
        self._units = [(unit, sum(variant_cost(v.id, backend) for v in unit)) for unit in units.values()]
        self._lock = threading.Lock()
        #: Workers started (the first and its helpers), and those that ran nothing, with why.
        self.workers = 0
        self.declined: list[str] = []
        #: Set once the first worker has started: :attr:`fingerprint` and :attr:`start_seconds` are then its.
        self.started = threading.Event()
        self.fingerprint: dict[str, Any] = {}
        self.start_seconds: float | None = None
        #: The table's cost (ms) of the cases done so far, and the seconds they really took.
        self.done_cost = 0
        self.done_seconds = 0.0

    def take(self, front: bool) -> tuple[list[Variant], int] | None:
        with self._lock:
            if not self._units:
                return None
            return self._units.pop(0 if front else -1)

    def done(self, cost: int, seconds: float) -> None:
        with self._lock:
            self.done_cost += cost
            self.done_seconds += seconds

    def remaining_cost(self) -> int:
        """The table's cost (ms) of the cases no worker has taken yet."""
        with self._lock:
            return sum(cost for _, cost in self._units)

    def wants_helper(self) -> bool:
        with self._lock:
            done_cost, done_seconds = self.done_cost, self.done_seconds
        return self.started.is_set() and helper_worthwhile(
            remaining_cost=self.remaining_cost(), done_cost=done_cost, done_seconds=done_seconds,
            start_seconds=self.start_seconds, workers=self.workers, most=self.most)


def run(options: RunOptions) -> RunRecord:
    """Discover, select, execute and record. Checks are applied by the caller (:mod:`checks`).

    Each backend's variants run in a worker process of its own, all side by side (or in this
    process, ``--in-process``). When a core is idle (the other backends are done) and the rest of a
    backend's share is estimated to take well over what starting a worker takes, a helper worker
    takes cases from the back of that share (:func:`helper_worthwhile`): on 2 cores, torch's ONNX
    exports in the default library, the run's critical path, get a second worker.
    """
    validate(options)
    registry = discover(options.case_paths or None)
    variants = needed(select_variants(registry, options), options.plan, options.checks or None)
    shard: dict[str, Any] | None = None
    positions: dict[str, int] = {}
    if options.shard is not None:
        variants, shard, positions = take_shard(variants, options)

    cases: dict[str, CaseRecord] = {}
    arrays: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    for c in {v.case.id: v.case for v in variants}.values():
        inputs, params = case_arrays(c, options.inputs_from)
        arrays[c.id] = (inputs, params)
        cases[c.id] = case_record(c, inputs, params)

    by_backend: dict[str, list[Variant]] = {}
    for v in variants:
        by_backend.setdefault(v.impl.backend, []).append(v)
    limits, forced = worker_limits(by_backend, options)

    fingerprint: dict[str, Any] = {}
    # One dict of replies per set of fresh processes (--repeat-processes); the first is the run's.
    passes: list[dict[str, Reply]] = []
    shares: list[list[_Share]] = []
    lock = threading.Lock()
    done = 0
    total = len(variants) * options.repeat_processes

    def run_worker(share: _Share, index: int, replies: dict[str, Reply], events: queue.Queue[str] | None) -> None:
        """One worker process's part of a backend's variants, taken case by case from ``share``."""
        nonlocal done
        executor: Executor | None = None
        joined = True
        try:
            executor = Executor(options.case_paths, deterministic=options.deterministic, timeout=options.timeout,
                                in_process=options.in_process, use_cache=options.cache)
            if not options.in_process and share.installed:
                # Started before any variant: a helper is held against the first worker's
                # fingerprint (thread counts included) before it runs anything.
                began = time.monotonic()
                try:
                    executor.start(share.backend)
                finally:
                    if index == 0:
                        share.fingerprint = dict(executor.fingerprint)
                        share.start_seconds = time.monotonic() - began
                        share.started.set()
                if index > 0:
                    share.started.wait()
                    joined = env_mod.environment_id(executor.fingerprint) == env_mod.environment_id(share.fingerprint)
                    if not joined:
                        differ = env_mod.diff(share.fingerprint, executor.fingerprint)
                        shown = "; ".join(f"{key}: {a} != {b}" for key, (a, b) in sorted(differ.items())[:3])
                        with lock:
                            share.declined.append(f"worker {index + 1}: {shown}")
                        return
            if events is not None:
                events.put("started")
            while (taken := share.take(front=index == 0)) is not None:
                unit, cost = taken
                began = time.monotonic()
                for v in unit:
                    reply = executor.execute(v, task_for(v, *arrays[v.case.id], repeat=options.repeat,
                                                         intermediates=options.intermediates,
                                                         replay=options.inputs_from))
                    with lock:
                        replies[v.id] = reply
                        done += 1
                        if options.progress:
                            options.progress(done, total, v.id)
                share.done(cost, time.monotonic() - began)
                if events is not None:
                    events.put("unit")
        finally:
            if index == 0:
                share.started.set()  # whatever happened: no helper waits forever
            if executor is not None:
                executor.close()
                if joined:
                    with lock:
                        fingerprint.update(executor.fingerprint)
            if events is not None:
                events.put("exit")  # whatever happened: the run does not wait for this thread forever

    for _ in range(options.repeat_processes):
        replies: dict[str, Reply] = {}
        these = [_Share(b, todo, limits[b]) for b, todo in by_backend.items()]
        if options.in_process:
            for share in these:
                share.workers = 1
                run_worker(share, 0, replies, None)
        else:
            # Each pass starts new workers: a fresh interpreter (a new hash seed unless
            # PYTHONHASHSEED is set), new thread pools, a new allocator state.
            _run_shares(these, forced, replies, run_worker)
        passes.append(replies)
        shares.append(these)

    environment = dict(sorted(env_mod.merge(env_mod.fingerprint(), fingerprint).items()))
    workers = {} if options.in_process or not shares else {s.backend: s.workers - len(s.declined) for s in shares[0]}
    declined = {s.backend: s.declined for p in shares for s in p if s.declined}
    record = RunRecord(environment=environment, environment_id=env_mod.environment_id(environment),
                       cases=cases, options={**_options_json(options), "shard": shard, "workers": workers,
                                             **({"workers_declined": declined} if declined else {})})
    for v in variants:
        per_pass = [p.get(v.id) or Reply.failure(v.id, "no result (worker lost)") for p in passes]
        record.variants[v.id] = variant_record(v, merge_process_passes(per_pass) if len(per_pass) > 1 else per_pass[0])
        if shard is not None:
            record.variants[v.id].shard = {"index": shard["index"], "count": shard["count"],
                                           "selection": shard["selection"], "position": positions[v.id]}
    return record


def _run_shares(shares: Sequence[_Share], forced: bool, replies: dict[str, Reply],
                work: Callable[[_Share, int, dict[str, Reply], queue.Queue[str] | None], None]) -> None:
    """Run every share's workers, side by side, until all are done: one per backend to begin with
    (``forced``: each share's :attr:`_Share.most` at once); then, each time a worker finishes a case
    or ends while fewer workers than cores are running, a helper for the share that wants one most."""
    events: queue.Queue[str] = queue.Queue()
    threads: list[threading.Thread] = []
    failures: list[BaseException] = []

    def guarded(share: _Share, index: int) -> None:
        try:
            work(share, index, replies, events)
        except BaseException as exc:  # raised in the caller's thread below, not lost with this one
            failures.append(exc)

    def launch(share: _Share) -> None:
        index = share.workers
        share.workers += 1
        thread = threading.Thread(target=guarded, args=(share, index), daemon=True,
                                  name=f"detharness-{share.backend}-{index + 1}")
        threads.append(thread)
        thread.start()

    for share in shares:
        for _ in range(share.most if forced else 1):
            launch(share)
    live, cores = len(threads), available_cores()
    while live:
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            continue
        if event == "exit":
            live -= 1
        while not forced and live and live < cores:
            wanting = [s for s in shares if s.wants_helper()]
            if not wanting:
                break
            launch(max(wanting, key=lambda s: (s.remaining_cost(), s.backend)))
            live += 1
    for thread in threads:
        thread.join()
    if failures:
        # A variant's own failure is a reply, never an exception: this is detharness's (or a bad
        # option found late), and its variants would otherwise be reported as "worker lost".
        raise failures[0]


def variant_record(v: Variant, reply: Reply) -> VariantRecord:
    """The record of one variant from its reply (from a worker, this process or the plugin).

    The backend reports what the artefact cache did under ``info["cache"]``; it goes to the
    record's own ``cache`` field (not part of the info, the fingerprint or the environment id).
    """
    info = dict(reply.info)
    cache = info.pop("cache", None)
    return VariantRecord(
        id=v.id, case=v.case.id, impl=v.impl.name, backend=v.impl.backend, device=v.device, dtype=v.dtype,
        mode=v.mode, status=reply.outcome, reference=v.impl.reference, error=reply.error,
        traceback=reply.traceback, seconds=reply.seconds, outputs=reply.outputs,
        tolerances={name: v.case.tolerance_for(name, v.dtype) for name in reply.outputs},
        distinct_results=reply.distinct_results, repeat_outputs=reply.repeat_outputs,
        info=info, repeat=reply.repeat, roundtrip=reply.roundtrip, log=reply.log,
        cache=cache if isinstance(cache, dict) else None, **layer_fields(reply.layers),
    )


def layer_fields(recorded: Any) -> dict[str, Any]:
    """A reply's recorded layers as the VariantRecord fields that hold them."""
    if recorded is None:
        return {}
    return {"intermediates": {"info": recorded.to_info()}, "layers": dict(recorded.layers),
            "layer_inputs": {f"{name}|{i}": array for name, arrays in recorded.inputs.items()
                             for i, array in enumerate(arrays)},
            "shadow": dict(recorded.shadow)}


def merge_process_passes(passes: list[Reply]) -> Reply:
    """One variant's replies from several sets of fresh processes, as one reply.

    The first pass's outputs stand for the variant; ``distinct_results`` counts the distinct
    outputs over every run of every process; ``repeat_outputs`` holds the first that differ from
    the first run's; ``repeat`` keeps each process's run digests (and any process's failure).
    """
    first = passes[0]
    digests = [list(p.run_digests) for p in passes]
    failures = [f"process {i + 1}: {p.outcome}: {p.error}" for i, p in enumerate(passes)
                if p.outcome != first.outcome]
    merged = Reply(**{**vars(first), "repeat": {"processes": len(passes),
                                                  "runs": max((len(d) for d in digests), default=0),
                                                  "digests": digests, "failures": failures}})
    if merged.outcome != Outcome.OK:
        return merged
    every = [d for ds in digests for d in ds]
    merged.distinct_results = len(set(every)) if every else None
    if merged.repeat_outputs is None:
        head = every[0] if every else None
        for p, ds in zip(passes[1:], digests[1:], strict=True):
            if p.outcome == Outcome.OK and ds and ds[0] != head:
                merged.repeat_outputs = p.outputs
                break
    return merged


def _options_json(options: RunOptions) -> dict[str, Any]:
    return {
        "cases": [display_path(p) for p in options.case_paths],
        "keyword": options.keyword, "tags": options.tags, "backends": options.backends, "device": options.device,
        "repeat": options.repeat, "repeat_processes": options.repeat_processes, "checks": options.checks,
        "deterministic": options.deterministic, "timeout": options.timeout,
        "inputs_from": display_path(options.inputs_from.path) if options.inputs_from and options.inputs_from.path else None,
        "in_process": options.in_process,
    }
