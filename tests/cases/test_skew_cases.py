"""The built-in skew pairs (cases/skew): a training path and a serving path that really diverge,
each declared a known divergence, so the default run is green while its report shows them; without
the declaration the same pair fails."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from detharness.backends import get_backend
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


@pytest.fixture(scope="module")
def skew_run() -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = _run("--cases", str(SKEW_DIR), "--tag", "skew", "--format", "json")
    assert done.stdout, done.stderr[-4000:]
    return done, json.loads(done.stdout)


@pytest.mark.slow
def test_every_skew_pair_reports_known_and_the_run_exits_0(
        skew_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]]) -> None:
    done, report = skew_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = [r for r in report["results"] if r["status"] != "skipped"]
    for r in results:
        assert r["variant"].split("[", 1)[1].startswith("serving:"), r["variant"]
        assert r["status"] == "known" and r["underlying_status"] in ("diverged", "mismatch"), r
    installed = {c.id for c in SKEW_CASES if get_backend(c.impls["serving"].backend).is_installed()}
    # On the CPU every pair whose serving backend is installed is compared; CUDA variants may skip.
    assert {r["case"] for r in results if ":cpu:" in r["variant"]} == installed


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
