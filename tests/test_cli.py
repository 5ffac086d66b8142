"""End-to-end: the CLI as a user runs it, reading its output and exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CRASHING_CASES, run_cli, write_cases

pytestmark = pytest.mark.slow


def test_help_and_list_import_no_framework() -> None:
    code = ("import sys; from detharness.cli import main; main(['list']); "
            "heavy = [m for m in ('torch', 'jax', 'onnxruntime', 'onnx') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_list_shows_variants_and_json(small_cases: Path) -> None:
    text = run_cli("list", "--cases", str(small_cases))
    assert text.returncode == 0, text.stderr
    assert "small/scale[torch:cpu:float16:eager]" in text.stdout
    assert "2 cases, 9 variants" in text.stdout
    listed = run_cli("list", "--cases", str(small_cases), "--json", "-k", "softmax")
    data = json.loads(listed.stdout)
    assert [c["id"] for c in data["cases"]] == ["small/softmax"]
    assert data["cases"][0]["variants"] == ["small/softmax[numpy:cpu:float64:eager]",
                                            "small/softmax[torch:cpu:float32:eager]", "small/softmax[torch:cuda:float32:eager]"]
    assert data["backends"]["torch"]["installed"] is True


def test_run_then_compare_with_itself_is_identical(small_cases: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "A"
    run = run_cli("run", "--cases", str(small_cases), "--out", str(bundle), "--format", "json",
                  "--report", str(tmp_path / "run.md"))
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    by_variant = {(r["check"], r["variant"]): r for r in report["results"]}
    assert by_variant[("backend", "small/scale[torch:cpu:float32:eager]")]["status"] in ("identical", "close")
    assert by_variant[("backend", "small/scale[torch:cuda:float32:eager]")]["status"] == "skipped"
    assert "no cuda device seen by torch" in by_variant[("backend", "small/scale[torch:cuda:float32:eager]")]["message"]
    assert (tmp_path / "run.md").read_text().startswith("## detharness run")
    assert (bundle / "manifest.json").exists()

    same = run_cli("compare", str(bundle), str(bundle), "--format", "json")
    assert same.returncode == 0, same.stderr
    compared = json.loads(same.stdout)
    statuses = {r["status"] for r in compared["results"]}
    assert statuses <= {"identical", "skipped"}
    assert compared["summary"]["identical"] == 6


def test_worker_crash_hang_and_exception_cost_one_variant_each(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "bad", CRASHING_CASES)
    run = run_cli("run", "--cases", str(cases), "--timeout", "3", "--device", "cpu", "--format", "json")
    assert run.returncode == 1
    results = {r["variant"]: r for r in json.loads(run.stdout)["results"]}
    assert results["bad/crash[segfault:cpu:float32:eager]"]["status"] == "error"
    assert results["bad/crash[segfault:cpu:float32:eager]"]["message"] == "worker crashed: killed by SIGSEGV"
    assert results["bad/crash[hang:cpu:float32:eager]"]["message"] == "timed out after 3 s"
    assert results["bad/crash[raises:cpu:float32:eager]"]["message"] == "ValueError: bad shape in the serving code"
    assert results["bad/crash[after:cpu:float32:eager]"]["status"] == "identical"
    assert results["bad/crash[raises:cpu:float32:eager]"]["reproduce"].startswith("detharness run --cases ")


def test_inputs_from_replays_the_baseline_inputs(small_cases: Path, tmp_path: Path) -> None:
    assert run_cli("run", "--cases", str(small_cases), "--backend", "numpy", "--out", str(tmp_path / "A")).returncode == 0
    replay = run_cli("run", "--cases", str(small_cases), "--backend", "numpy", "--inputs-from", str(tmp_path / "A"),
                     "--out", str(tmp_path / "B"))
    assert replay.returncode == 0, replay.stderr
    a = json.loads((tmp_path / "A" / "manifest.json").read_text())
    b = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert a["cases"]["small/scale"]["inputs"] == b["cases"]["small/scale"]["inputs"]
    assert b["options"]["inputs_from"] == str(tmp_path / "A")


def test_aten_cpu_capability_default_moves_softmax_and_layer_norm(tmp_path: Path) -> None:
    """A real cross-environment comparison: torch's vector kernels at two capability levels."""
    selection = ["-k", "(softmax or layer_norm) and torch and float32 and cpu and eager"]
    base = run_cli("run", *selection, "--out", str(tmp_path / "native"))
    assert base.returncode == 0, base.stdout + base.stderr
    cand = run_cli("run", *selection, "--out", str(tmp_path / "default"), env={"ATEN_CPU_CAPABILITY": "default"})
    assert cand.returncode == 0, cand.stdout + cand.stderr
    compared = run_cli("compare", str(tmp_path / "native"), str(tmp_path / "default"), "--format", "json",
                       "--fail-on", "diverged,mismatch,error,close")
    assert compared.returncode == 1
    results = {r["variant"]: r for r in json.loads(compared.stdout)["results"]}
    for variant in ("models/softmax[torch:cpu:float32:eager]", "models/layer_norm[torch:cpu:float32:eager]"):
        result = results[variant]
        assert result["status"] in ("close", "diverged"), result
        assert result["env_diff"]["env.ATEN_CPU_CAPABILITY"] == [None, "default"]
        assert result["env_diff"]["torch.cpu_capability"][1] == "DEFAULT"
        assert result["env_diff"]["torch.cpu_capability"][0] != "DEFAULT"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--backend", "tensorflow"], "detharness: error: unknown backend 'tensorflow'"),
        (["run", "--cases", "does/not/exist"], "detharness: error: --cases does/not/exist: no such file or directory"),
        (["run", "--repeat", "0"], "detharness: error: --repeat must be at least 1"),
        (["run", "--report", "out.html"], "detharness: error: --report out.html: unknown extension '.html'; use .md, .json or .txt"),
        (["run", "--fail-on", "bogus"], "detharness: error: --fail-on: unknown status 'bogus'"),
        (["compare", "no-such-bundle", "other"], "detharness: error: "),
        (["frobnicate"], "detharness: error: detharness: argument command: invalid choice"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(message)
    assert "Traceback" not in result.stderr


def test_case_file_that_raises_exits_2_naming_file_and_error(tmp_path: Path) -> None:
    bad = write_cases(tmp_path, "raise ImportError('pandas is not installed')\n", name="broken.py")
    result = run_cli("run", "--cases", str(bad), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr == f"detharness: error: case file {bad} failed to import (line 1): ImportError: pandas is not installed\n"
    assert not (tmp_path / "out").exists()


NAMED_INPUTS = """
    import numpy as np
    import warnings

    from detharness import case

    c = case("named/subtract", inputs=lambda rng: {"b": np.full(4, 3.0, "float32"), "a": np.full(4, 11.0, "float32")})

    @c.impl("training", backend="numpy", reference=True)
    def _(a, b):
        return {"y": a - b}

    @c.impl("serving", backend="numpy")
    def _(b, a):  # another order than the case's dict: inputs are matched by name
        print("serving says hello")
        warnings.warn("serving is deprecated", DeprecationWarning)
        return {"y": a - b}

    @c.impl("context", backend="numpy")
    def _(a, b, ctx):
        assert ctx.dtype == "float32" and ctx.device == "cpu", ctx
        return {"y": (a - b).astype(ctx.dtype)}

    r = case("named/raises", inputs=lambda rng: {"x": np.ones((2, 3), "float32")})

    @r.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x * 2}

    @r.impl("broken", backend="numpy")
    def _(x):
        return {"y": x.reshape(5)}
"""


def test_inputs_bind_by_name_whatever_their_order(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", NAMED_INPUTS)
    done = run_cli("run", "--cases", str(cases), "-k", "subtract", "--format", "json", "--out", str(tmp_path / "b"))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)  # a case's prints do not reach detharness's stdout
    statuses = {r["variant"]: r["status"] for r in data["results"]}
    assert statuses == {"named/subtract[serving:cpu:float32:eager]": "identical",
                        "named/subtract[context:cpu:float32:eager]": "identical"}
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    log = manifest["variants"]["named/subtract[serving:cpu:float32:eager]"]["log"]
    assert log["stdout"] == "serving says hello\n"
    assert any("DeprecationWarning: serving is deprecated" in w for w in log["warnings"])


@pytest.mark.parametrize(("signature", "named"), [
    ("def _(a):", "does not take b"),
    ("def _(a, b, c):", "takes c, which the case does not give"),
    ("def _(a, params):", "params (the case has no params=)"),
])
def test_a_missing_or_extra_parameter_fails_at_discovery(tmp_path: Path, signature: str, named: str) -> None:
    cases = write_cases(tmp_path / "mine", f"""
        import numpy as np
        from detharness import case

        c = case("named/bad", inputs=lambda rng: {{"a": np.ones(2), "b": np.ones(2)}})

        @c.impl("one", backend="numpy", reference=True)
        {signature}
            return {{"y": a}}
    """)
    done = run_cli("run", "--cases", str(cases), "--out", str(tmp_path / "b"))
    assert done.returncode == 2
    line = done.stderr.strip()
    assert "\n" not in line and named in line
    assert f"case named/bad: implementation 'one' ({cases}:7)" in line
    assert "the case's inputs are: a, b" in line
    assert not (tmp_path / "b").exists()


def test_an_input_may_not_take_a_reserved_name(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("named/reserved", inputs=lambda rng: {"ctx": np.ones(2)})

        @c.impl("one", backend="numpy", reference=True)
        def _(ctx):
            return {"y": ctx}
    """)
    done = run_cli("run", "--cases", str(cases))
    assert done.returncode == 2 and "no input may be called 'ctx'" in done.stderr


def test_a_failing_implementation_gives_one_error_with_its_traceback(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", NAMED_INPUTS)
    done = run_cli("run", "--cases", str(cases), "-k", "raises", "--format", "json")
    assert done.returncode == 1, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [(r["check"], r["status"]) for r in results] == [("backend", "error")]
    error = results[0]
    assert error["message"] == "ValueError: cannot reshape array of size 6 into shape (5,)"
    assert f'File "{cases}", line 32, in _' in error["traceback"]
    assert "detharness/runner.py" not in error["traceback"]  # the harness's own frames are trimmed
    text = run_cli("run", "--cases", str(cases), "-k", "raises")
    assert f'File "{cases}", line 32, in _' in text.stdout


def test_a_failed_reference_is_named_in_every_result_it_costs(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("named/noref", inputs=lambda rng: {"x": np.ones(3)})

        @c.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            raise RuntimeError("reference broke")

        @c.impl("a", backend="numpy")
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json")
    results = json.loads(done.stdout)["results"]
    assert [(r["status"], r["message"]) for r in results] == [
        ("error", "reference named/noref[ref:cpu:float64:eager] failed: RuntimeError: reference broke")]
    assert "reference broke" in results[0]["traceback"]


def test_a_forgotten_return_or_an_object_output_is_that_variants_error(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "mine", """
        import numpy as np
        from detharness import case

        c = case("user/outputs", inputs=lambda rng: {"x": np.ones(3, "float32")})

        @c.impl("ref", backend="numpy", reference=True)
        def _(x):
            return {"y": x}

        @c.impl("forgot", backend="numpy")
        def _(x):
            x * 2

        @c.impl("objects", backend="numpy")
        def _(x):
            return {"y": np.array([{1}, None], dtype=object)}

        @c.impl("good", backend="numpy")
        def _(x):
            return {"y": x}
    """)
    done = run_cli("run", "--cases", str(cases), "--format", "json", "--out", str(tmp_path / "b"))
    assert done.returncode == 1, done.stderr
    by_impl = {r["variant"].split("[")[1].split(":")[0]: r for r in json.loads(done.stdout)["results"]}
    assert by_impl["forgot"]["status"] == "error" and "returned None (a forgotten return?)" in by_impl["forgot"]["message"]
    assert by_impl["objects"]["status"] == "error" and "output 'y' is an array of dtype object" in by_impl["objects"]["message"]
    assert by_impl["good"]["status"] == "identical"
    assert (tmp_path / "b" / "manifest.json").is_file()
