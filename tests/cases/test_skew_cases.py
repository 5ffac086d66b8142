"""The built-in skew pairs (cases/skew): a training path and a serving path that really diverge,
each declared a known divergence, so the library's run is green (the plugin reports them xfail)
while its report shows them; without the declaration the same pair fails."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detharness.cases import Case, builtin_cases_path, discover

SKEW_DIR = builtin_cases_path() / "skew"
SKEW_CASES = list(discover([SKEW_DIR]))


def _ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    return subprocess.run([sys.executable, "-m", "detharness", "run", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _file_of(c: Case) -> Path:
    return SKEW_DIR / Path(c.location.rsplit(":", 1)[0]).name


def test_the_library_has_at_least_six_skew_pairs() -> None:
    assert len(SKEW_CASES) >= 6, _ids(SKEW_CASES)
    assert all(c.id.startswith("skew/") and "skew" in c.tags for c in SKEW_CASES)


@pytest.mark.parametrize("c", SKEW_CASES, ids=_ids(SKEW_CASES))
def test_a_skew_pair_is_a_training_reference_and_a_declared_serving_path(c: Case) -> None:
    assert set(c.impls) == {"training", "serving"}, c.id
    assert c.impls["training"].reference and not c.impls["serving"].reference
    # Held against the training path only: a serving variant matches itself on another device or run.
    assert [(k.variants, k.checks, bool(k.reason)) for k in c.known] == [("*[serving:*", ("backend",), True)], c.id


@pytest.mark.parametrize("c", SKEW_CASES, ids=_ids(SKEW_CASES))
def test_a_skew_file_is_named_after_its_skew_and_says_how_to_fix_it(c: Case) -> None:
    path = _file_of(c)
    assert c.id == f"skew/{path.stem}"
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    assert docstring.startswith("Skew:") and "Training:" in docstring and "Serving:" in docstring, path
    assert "Fix:" in docstring, path


# That every pair reports known (xfail) on this machine is what the plugin's items of cases/skew say
# in the library's one run (`pytest --dh-cases cases`); a pair that stops diverging shows as XPASS.


@pytest.mark.slow
def test_without_its_declaration_a_skew_pair_fails_as_diverged(tmp_path: Path) -> None:
    source = (SKEW_DIR / "bucket_edges_right_vs_left_closed.py").read_text(encoding="utf-8")
    [declaration] = [node for node in ast.parse(source).body
                     if isinstance(node, ast.Expr) and "known_divergence" in ast.unparse(node)]
    lines = source.splitlines(keepends=True)
    undeclared = "".join(lines[:declaration.lineno - 1] + lines[declaration.end_lineno:])
    assert "known_divergence" not in undeclared
    (tmp_path / "undeclared.py").write_text(undeclared, encoding="utf-8")
    done = _run("--cases", str(tmp_path / "undeclared.py"), "--format", "json")
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    [result] = json.loads(done.stdout)["results"]
    assert result["variant"] == "skew/bucket_edges_right_vs_left_closed[serving:cpu:int64:eager]"
    assert result["status"] == "diverged" and result["max_abs"] == 1
