"""One variant never costs the others nor changes them: garbage on the pipe, global switches,
forked children, a killed or interrupted detharness. Each runs the CLI as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli, write_cases

pytestmark = pytest.mark.slow


def _results(stdout: str) -> dict[str, dict]:
    return {r["variant"]: r for r in json.loads(stdout)["results"]}


def test_garbage_on_the_workers_pipe_costs_that_variant_only(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import multiprocessing.connection
        import os
        import sys

        import numpy as np
        from detharness import case

        g = case("iso/garbage", inputs=lambda rng: {"x": np.ones(3)})

        @g.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            return {"y": x}

        @g.impl("writes", backend="numpy", dtypes=("float64",))
        def _(x):
            frame = sys._getframe()  # up to the worker's loop, which holds its end of the pipe
            while frame is not None:
                conn = frame.f_locals.get("conn")
                if isinstance(conn, multiprocessing.connection.Connection):
                    os.write(conn.fileno(), b"\\x00\\x00\\x00\\x08notapick")
                frame = frame.f_back
            return {"y": x}

        h = case("iso/healthy", inputs=lambda rng: {"x": np.ones(3)})

        @h.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            return {"y": x}

        @h.impl("after", backend="numpy", dtypes=("float64",))
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json", timeout=120)
    results = _results(done.stdout)
    bad = results["iso/garbage[writes:cpu:float64:eager]"]
    assert bad["status"] == "error" and "did the variant write to detharness's pipe?" in bad["message"]
    assert results["iso/healthy[after:cpu:float64:eager]"]["status"] == "identical"


def test_global_switches_a_variant_changes_are_restored_and_recorded(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("iso/a-changes", inputs=lambda rng: {"x": np.ones(3)})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            np.seterr(divide="raise")
            np.set_printoptions(precision=2)
            return {"y": x}

        d = case("iso/b-divides", inputs=lambda rng: {"x": np.zeros(3)})

        @d.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            return {"y": np.float64(1.0) / x}  # inf with numpy's default errstate; raises if it leaked

        @d.impl("same", backend="numpy", dtypes=("float64",))
        def _(x):
            return {"y": np.float64(1.0) / x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json", "--out", str(tmp_path / "b"), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _results(done.stdout)["iso/b-divides[same:cpu:float64:eager]"]["status"] == "identical"
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    changer = manifest["variants"]["iso/a-changes[ref:cpu:float64:eager]"]
    assert changer["info"]["state_changed"]["numpy.errstate"][0].startswith("{'divide': 'warn'")
    assert "numpy.printoptions" in changer["info"]["state_changed"]
    assert any("changed global settings" in w for w in changer["log"]["warnings"])


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        # A zombie is gone for our purpose (its parent has not reaped it yet).
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def test_a_child_a_case_forks_ends_with_the_run(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    cases = write_cases(tmp_path / "mine", f"""
        import subprocess

        import numpy as np
        from detharness import case

        c = case("iso/forks", inputs=lambda rng: {{"x": np.ones(3)}})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            child = subprocess.Popen(["sleep", "60"])
            open({str(pid_file)!r}, "w").write(str(child.pid))
            return {{"y": x}}
    """)
    start = time.monotonic()
    done = run_cli("run", "--cases", str(cases), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 30  # no 60 s wait on the child's pipes
    assert _gone(int(pid_file.read_text()), within=5)


def _start_hanging(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    pid_file = tmp_path / "worker.pid"
    cases = write_cases(tmp_path / "mine", f"""
        import os
        import time

        import numpy as np
        from detharness import case

        c = case("iso/hangs", inputs=lambda rng: {{"x": np.ones(3)}})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            open({str(pid_file)!r}, "w").write(str(os.getpid()))
            time.sleep(600)
            return {{"y": x}}
    """)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    process = subprocess.Popen([sys.executable, "-m", "detharness", "run", "--cases", str(cases)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and process.poll() is None, process.communicate()
        time.sleep(0.1)
    return process, int(pid_file.read_text())


def test_a_worker_dies_with_a_killed_detharness(tmp_path: Path) -> None:
    process, worker = _start_hanging(tmp_path)
    process.kill()
    process.communicate(timeout=30)
    assert _gone(worker, within=10)


def test_ctrl_c_exits_130_with_one_line_and_ends_the_workers(tmp_path: Path) -> None:
    process, worker = _start_hanging(tmp_path)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 130
    assert stderr.splitlines() == ["detharness: interrupted"]
    assert _gone(worker, within=10)
