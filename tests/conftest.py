from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
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
    """Run ``python -m detharness`` as a user would, in a fresh interpreter."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("CI", None)
    return subprocess.run([sys.executable, "-m", "detharness", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=timeout)


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
