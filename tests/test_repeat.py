"""The repeat check: runs in one process (--repeat) and in fresh processes (--repeat-processes)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYTEST_OPTIONS, SCALED_STATE_CLASS, run_cli, write_cases

# Nondeterministic on purpose, the way real feature code is: a vocabulary built from a set of
# strings is ordered by their hashes, which Python salts per process (PYTHONHASHSEED).
HASH_SALTED_CASES = """
    import numpy as np

    from detharness import case

    WORDS = [f"token-{i}" for i in range(24)]

    c = case("mine/vocabulary", inputs=lambda rng: {"rows": rng.integers(0, 24, 200)})

    @c.impl("set-order", backend="numpy", dtypes=("int64",))
    def _(rows):
        vocabulary = list(set(WORDS))  # iteration order follows this process's hash seed
        codes = {word: i for i, word in enumerate(vocabulary)}
        return {"codes": np.array([codes[WORDS[r]] for r in rows], dtype=np.int64)}

    @c.impl("sorted", backend="numpy", dtypes=("int64",))
    def _(rows):
        codes = {word: i for i, word in enumerate(sorted(set(WORDS)))}
        return {"codes": np.array([codes[WORDS[r]] for r in rows], dtype=np.int64)}
"""


def _no_hash_seed() -> dict[str, str]:
    # An inherited PYTHONHASHSEED would give every fresh process the same salt.
    env = dict(os.environ)
    env.pop("PYTHONHASHSEED", None)
    return env


def _run(*args: str) -> Any:
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "detharness", *args], capture_output=True, text=True,
                          env=_no_hash_seed(), timeout=600)


def _results(stdout: str) -> dict[str, dict[str, Any]]:
    return {r["variant"]: r for r in json.loads(stdout)["results"] if r["check"] == "repeat"}


@pytest.fixture
def salted(tmp_path: Path) -> Path:
    return write_cases(tmp_path / "salted", HASH_SALTED_CASES)


def test_hash_salted_output_agrees_within_a_process_and_not_across_fresh_ones(salted: Path, tmp_path: Path) -> None:
    same_process = _run("run", "--cases", str(salted), "--repeat", "3", "--check", "repeat", "--format", "json")
    assert same_process.returncode == 0, same_process.stdout + same_process.stderr
    for result in _results(same_process.stdout).values():
        assert (result["status"], result["distinct_results"]) == ("identical", 1)
        assert result["message"] == "3 runs gave bitwise identical outputs"

    fresh = _run("run", "--cases", str(salted), "--repeat-processes", "3", "--check", "repeat", "--format", "json",
                 "--out", str(tmp_path / "A"))
    assert fresh.returncode == 1, fresh.stdout + fresh.stderr
    results = _results(fresh.stdout)
    salted_result = results["mine/vocabulary[set-order:cpu:int64:eager]"]
    assert salted_result["status"] == "diverged"
    assert salted_result["distinct_results"] in (2, 3)
    assert salted_result["message"].startswith(
        f"3 fresh processes gave {salted_result['distinct_results']} distinct results (not bitwise reproducible)\n")
    assert salted_result["baseline"] == "mine/vocabulary[set-order:cpu:int64:eager] process 1"
    assert salted_result["candidate"] in {"mine/vocabulary[set-order:cpu:int64:eager] process 2",
                                          "mine/vocabulary[set-order:cpu:int64:eager] process 3"}
    assert salted_result["first_mismatch_index"] is not None
    assert salted_result["reproduce"] == (f"detharness run --cases {salted} -k "
                                          "'mine/vocabulary[set-order:cpu:int64:eager]' --check repeat --repeat-processes 3")
    clean = results["mine/vocabulary[sorted:cpu:int64:eager]"]
    assert (clean["status"], clean["distinct_results"]) == ("identical", 1)
    assert clean["message"] == "3 fresh processes gave bitwise identical outputs"

    manifest = json.loads((tmp_path / "A" / "manifest.json").read_text())
    repeat = manifest["variants"]["mine/vocabulary[set-order:cpu:int64:eager]"]["repeat"]
    assert repeat["processes"] == 3 and repeat["runs"] == 1 and len(repeat["digests"]) == 3
    assert manifest["options"]["repeat_processes"] == 3


def test_fixed_hash_seed_makes_the_processes_agree(salted: Path) -> None:
    env = {**_no_hash_seed(), "PYTHONHASHSEED": "0"}
    result = run_cli("run", "--cases", str(salted), "--repeat-processes", "2", "--format", "json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {r["status"] for r in _results(result.stdout).values()} == {"identical"}


def test_repeat_and_processes_together_count_every_run(salted: Path) -> None:
    result = _run("run", "--cases", str(salted), "-k", "sorted", "--repeat", "2", "--repeat-processes", "2",
                  "--check", "repeat", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    only = _results(result.stdout)["mine/vocabulary[sorted:cpu:int64:eager]"]
    assert only["message"] == "2 fresh processes x 2 runs gave bitwise identical outputs"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeat-processes", "0"], "detharness: error: --repeat-processes must be at least 1\n"),
        (["--repeat-processes", "2", "--in-process"],
         "detharness: error: --repeat-processes runs fresh worker processes; it cannot be combined with --in-process\n"),
        (["--check", "repeat"],
         "detharness: error: --check repeat needs --repeat N or --repeat-processes N with N of 2 or more\n"),
        (["--check", "bogus"], "detharness: error: --check 'bogus': choose from backend, device, repeat, rng, roundtrip "
                               "(environment checks run with `detharness compare`)\n"),
    ],
)
def test_bad_repeat_usage_exits_2(salted: Path, args: list[str], message: str) -> None:
    result = run_cli("run", "--cases", str(salted), *args)
    assert result.returncode == 2
    assert result.stderr == message


PLUGIN_CASES = """
    import numpy as np

    from detharness import case

    c = case("p/stream", kind="rng")

    @c.impl("pcg64", backend="numpy", dtypes=("float64",))
    def _():
        return {"normal": np.random.default_rng(3).standard_normal(16)}

    s = case("p/scale", inputs=lambda rng: {"x": rng.standard_normal(8)})

    @s.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": x * 3}

    @s.impl("numpy32", backend="numpy", dtypes=("float32",))
    def _(x):
        return {"y": x * np.float32(3)}

""" + SCALED_STATE_CLASS + """
    @s.impl("builder", backend="numpy", module=True, dtypes=("float64",), modes=("eager",))
    def _(params):
        return Scaled(np.float64(3))

    s.roundtrip("builder", ["json"])
"""


def test_plugin_makes_rng_roundtrip_and_repeat_items(pytester: pytest.Pytester) -> None:
    folder = pytester.mkdir("my_cases")
    write_cases(folder, PLUGIN_CASES)
    result = pytester.runpytest_subprocess("--dh-cases", str(folder), "-v", *PYTEST_OPTIONS)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines_random([
        "*rng:p/stream?pcg64:cpu:float64:eager?*PASSED*",
        "*roundtrip:p/scale?builder:cpu:float64:roundtrip:json?*PASSED*",
        "*backend:p/scale?numpy32:cpu:float32:eager?*PASSED*",
        "*backend:p/scale?builder:cpu:float64:eager?*PASSED*",
    ])
    repeated = pytester.runpytest_subprocess("--dh-cases", str(folder), "--dh-repeat", "3", "-v", *PYTEST_OPTIONS,
                                             "-k", "repeat")
    repeated.assert_outcomes(passed=5)
    repeated.stdout.fnmatch_lines_random(["*repeat:p/stream?pcg64:cpu:float64:eager?*PASSED*",
                                          "*repeat:p/scale?builder:cpu:float64:roundtrip:json?*PASSED*"])
