from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent

# Every test (and every detharness process it starts) caches exports and compiled programs in a
# folder of this session's own, removed at exit: a user's ~/.cache/detharness is never read or
# written, and no entry from an earlier session can stand in for a fresh export. The session's
# pytest-xdist workers share it (the controller makes it and passes it on in _SESSION_CACHE; the
# cache is safe for concurrent runs), so a built-in case exported by the plugin's run of the
# library is not exported again by each CLI test that runs it. tests/test_cache.py points single
# tests at folders of their own.
_SESSION_CACHE = "DETHARNESS_TEST_SESSION_CACHE"
_shared = os.environ.get(_SESSION_CACHE, "")
if os.environ.get("PYTEST_XDIST_WORKER") and _shared and os.path.isdir(_shared):
    _CACHE = _shared  # an xdist worker of a session whose controller made the folder
else:
    _CACHE = tempfile.mkdtemp(prefix="detharness-test-cache-")
    os.environ[_SESSION_CACHE] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)
os.environ["DETHARNESS_CACHE_DIR"] = _CACHE

# OpenBLAS's idle threads spin for 2**28 cycles (about 0.1 s) after start-up and after each call
# before they sleep. In the hundreds of short processes this suite starts (CLI runs, their workers)
# that spinning was about 0.2 of a small run's 0.5 CPU-seconds, taken from the other xdist worker on
# a 2-core runner. The timeout sets how long idle threads wait, never how work is split: no result
# changes, and detharness leaves it out of the environment (environment.NOT_NUMERICS_VARIABLES).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# The CI scripts the tests run (ci/compare.sh, ci/run-job.sh...) call `detharness` by name, as a job
# does; it is installed beside the interpreter running the tests, which may not be on PATH when the
# suite is started as .venv/bin/python -m pytest without activating the environment.
_BIN = os.path.dirname(sys.executable)
if _BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _BIN + os.pathsep + os.environ.get("PATH", "")

SMALL_CASES = """
    import os
    import time

    import numpy as np

    from detharness import case

    c = case("small/scale", tags={"small"}, tolerance="ulp(4)",
             inputs=lambda rng: {"x": rng.standard_normal((64, 8)).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": np.tanh(x) * 3}

    @c.impl("numpy32", backend="numpy", dtypes=("float32",))
    def _(x):
        return {"y": np.tanh(x) * np.float32(3)}

    @c.impl("torch", backend="torch", dtypes=("float32", "float16"))
    def _(x):
        import torch
        return {"y": torch.tanh(x) * 3}

    s = case("small/softmax", tags={"small"}, tolerance="ulp(32)",
             inputs=lambda rng: {"x": (rng.standard_normal((32, 256)) * 3).astype("float32")})

    @s.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return {"y": e / e.sum(-1, keepdims=True)}

    @s.impl("torch", backend="torch", dtypes=("float32",))
    def _(x):
        import torch
        return {"y": torch.softmax(x, -1)}
"""

# A numpy "model" whose state saves and loads with the json round-trip format (case-file text,
# indented as the case strings here are, to sit inside one).
SCALED_STATE_CLASS = """
    class Scaled:
        def __init__(self, k):
            self.k = k

        def __call__(self, x):
            return {"y": x * self.k}

        def get_state(self):
            return {"k": self.k}

        @classmethod
        def from_state(cls, state):
            return cls(state["k"])
"""

CRASHING_CASES = """
    import os
    import signal
    import time

    import numpy as np

    from detharness import case

    c = case("bad/crash", inputs=lambda rng: {"x": np.ones(4, dtype="float32")})

    @c.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x}

    @c.impl("segfault", backend="numpy")
    def _(x):
        os.kill(os.getpid(), signal.SIGSEGV)

    @c.impl("hang", backend="numpy")
    def _(x):
        time.sleep(60)

    @c.impl("raises", backend="numpy")
    def _(x):
        raise ValueError("bad shape in the serving code")

    @c.impl("after", backend="numpy")
    def _(x):
        return {"y": x + 0}
"""


#: Options for a pytest the tests start over case files: no cache folder written, and no
#: hypothesis plugin, which imports all of hypothesis (half a second of each such pytest's start-up,
#: in each of its xdist workers too) for runs that hold no hypothesis test.
PYTEST_OPTIONS = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest")


def write_cases(folder: Path, text: str, name: str = "cases.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def small_cases(tmp_path: Path) -> Path:
    return write_cases(tmp_path / "small_cases", SMALL_CASES)


@functools.cache
def aarch64_emulation_missing() -> str | None:
    """Why this machine cannot emulate aarch64 (no emulator or packages: ci/setup-arm.sh), or None.
    The emulation tests skip with it, so the reason is looked up once per process."""
    from detharness.matrix.emulation import Unavailable, check_available

    try:
        check_available("aarch64")
    except Unavailable as exc:
        return str(exc)
    return None


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run detharness's command line and read what it printed and its exit status, as a user would.

    It runs in this process, ``detharness.cli.main`` with file descriptors 1 and 2 captured, so what
    the workers it starts write reaches the same output a terminal would show, and is checked for
    leaving this process as it found it (see :func:`_in_process`). A command still running after
    ``timeout`` seconds is interrupted as Ctrl-C would and raises ``subprocess.TimeoutExpired``, as
    ``subprocess.run`` does. What only a new interpreter shows (the modules a command imports, a
    signal from outside) is tested with ``python -m detharness`` in a subprocess.
    """
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CI", None)
    return _in_process(list(args), full_env, cwd, timeout)


# Set by imports of other libraries that an ``--in-process`` run makes here, not by detharness:
# threadpoolctl sets the first when imported, torch's inductor the second on first use.
_SET_BY_LIBRARIES = frozenset({"KMP_DUPLICATE_LIB_OK", "TORCHINDUCTOR_CACHE_DIR"})
_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def _in_process(args: list[str], env: dict[str, str], cwd: Path | None,
                timeout: float) -> subprocess.CompletedProcess[str]:
    """``detharness.cli.main(args)`` here, under ``env`` and in ``cwd``, with fds 1 and 2 captured.

    Starting an interpreter and importing numpy and detharness is 0.25 CPU-seconds of every CLI call,
    half of a small run's; the suite makes a few hundred. A command must leave its caller (a script or
    a notebook may call ``main`` too) as it found it: its environment variables, working folder,
    signal handlers and ``sys.argv``, no worker process left running. A command that changes
    one fails the test, naming what changed; the process is put back either way.
    """
    from detharness import cli

    saved_env, saved_cwd, saved_argv = dict(os.environ), os.getcwd(), sys.argv
    saved_handlers = {s: signal.getsignal(s) for s in _SIGNALS}
    saved_streams = sys.stdout, sys.stderr
    running = set(multiprocessing.active_children())  # the plugin's workers, say, that outlive one item
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["detharness", *args]
    leaks: list[str] = []
    code: object = 0
    timed_out = threading.Event()

    def interrupt() -> None:  # as Ctrl-C would: KeyboardInterrupt in the main thread, main ends its workers
        timed_out.set()
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)

    with tempfile.TemporaryFile() as out_file, tempfile.TemporaryFile() as err_file:
        for stream in saved_streams:
            stream.flush()
        saved_fds = os.dup(1), os.dup(2)
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        # As Python sets up a pipe's streams: stdout block-buffered and strict, stderr line-buffered.
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False,  # noqa: SIM115
                          buffering=1)
        try:
            if cwd is not None:
                os.chdir(cwd)
            timer = threading.Timer(timeout, interrupt)
            timer.start()
            try:
                code = cli.main(args)
            except SystemExit as exc:  # argparse: --help, --version, a usage error
                code = exc.code
                if isinstance(code, str):
                    sys.stderr.write(code + "\n")
                    code = 1
            finally:
                timer.cancel()
        finally:
            sys.stdout.close()  # flushed; fds 1 and 2 stay open (closefd=False)
            sys.stderr.close()
            sys.stdout, sys.stderr = saved_streams
            for fd, saved in zip((1, 2), saved_fds, strict=True):
                os.dup2(saved, fd)
                os.close(saved)
            changed = sorted(k for k in {*env, *os.environ} - _SET_BY_LIBRARIES if env.get(k) != os.environ.get(k))
            if changed:
                leaks.append(f"environment variables {changed}")
            if os.path.realpath(os.getcwd()) != os.path.realpath(cwd if cwd is not None else saved_cwd):
                leaks.append(f"the working folder (now {os.getcwd()})")
            if sys.argv != ["detharness", *args]:
                leaks.append("sys.argv")
            changed_handlers = [s.name for s in _SIGNALS if signal.getsignal(s) != saved_handlers[s]]
            if changed_handlers:
                leaks.append(f"signal handlers {changed_handlers}")
            alive = [p for p in multiprocessing.active_children() if p not in running]
            if alive:
                leaks.append(f"processes left running {[p.name for p in alive]}")
                for process in alive:
                    process.kill()
            for s, handler in saved_handlers.items():
                signal.signal(s, handler)
            os.environ.clear()
            os.environ.update(saved_env)
            os.chdir(saved_cwd)
            sys.argv = saved_argv
        out_file.seek(0)
        err_file.seek(0)
        stdout = out_file.read().decode("utf-8", "replace")
        stderr = err_file.read().decode("utf-8", "replace")
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(["detharness", *args], timeout, stdout, stderr)
    assert not leaks, f"detharness {shlex.join(args)} changed its caller's process: {', '.join(leaks)}\n{stderr}"
    returncode = 0 if code is None else code
    assert isinstance(returncode, int), f"detharness {shlex.join(args)} ended with {code!r}"
    return subprocess.CompletedProcess(["detharness", *args], returncode, stdout, stderr)


@pytest.fixture
def session_severities(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The log severity of every ONNX Runtime session opened while the test runs (-1: no options)."""
    import onnxruntime

    severities: list[int] = []
    real = onnxruntime.InferenceSession

    def recording(*args: object, sess_options: object = None, **kwargs: object) -> object:
        severities.append(getattr(sess_options, "log_severity_level", -1))
        return real(*args, sess_options=sess_options, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnxruntime, "InferenceSession", recording)
    return severities


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The case library's items (``--dh-cases cases``) first, in their own order, then the tests.

    pytest-xdist's worksteal hands each worker a contiguous half of this list. With the library
    first, one worker runs all of it, so its backend workers import each framework and build the
    exporter's registry once, not once per xdist worker; and its exports and jax programs are in the
    session's cache (above) before the tests that run the same built-in cases (the rng and
    round-trip tags, a real matrix) ask for them. No test depends on the order: each passes alone.
    """
    from detharness.pytest_plugin import VariantItem

    items.sort(key=lambda item: not isinstance(item, VariantItem))


def pytest_unconfigure(config: pytest.Config) -> None:
    """An xdist worker's heap, frozen once its tests are done: its exit then skips the interpreter's
    last garbage collections over torch's, jax's and every test's objects (about 1 s, on the
    session's critical path: the controller waits for the last worker to end). As
    detharness.runner._freeze_heap does for a backend worker that is told to stop."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import gc

        gc.freeze()
