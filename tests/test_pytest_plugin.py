"""The pytest plugin as a user runs it: fresh pytest processes (pytester) over small case files."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import re
import textwrap
from pathlib import Path

import pytest

from tests.conftest import PYTEST_OPTIONS, SCALED_STATE_CLASS, run_cli

pytestmark = pytest.mark.slow

# Every check name's items for these cases: backend for the CPU and CUDA variants of numpy32,
# device for its CUDA variant; the reference makes no item of its own.
NUMPY_CASES = """
    import multiprocessing

    import numpy as np

    from detharness import case

    c = case("demo/scale", tags={"scaling"}, tolerance="ulp(4)",
             inputs=lambda rng: {"x": rng.standard_normal((16, 4)).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": np.tanh(x) * 3}

    @c.impl("numpy32", backend="numpy", dtypes=("float32",), devices=("cpu", "cuda"))
    def _(x):
        print(f"numpy32 ran in a worker process: {multiprocessing.parent_process() is not None}")
        return {"y": np.tanh(x) * np.float32(3)}
"""
NUMPY_IDS = [
    "my_cases/cases.py::backend:demo/scale[numpy32:cpu:float32:eager]",
    "my_cases/cases.py::backend:demo/scale[numpy32:cuda:float32:eager]",
    "my_cases/cases.py::device:demo/scale[numpy32:cuda:float32:eager]",
]

FAILING_CASES = """
    import numpy as np

    from detharness import case

    c = case("skew/rounding", inputs=lambda rng: {"x": np.linspace(-3, 3, 13)})
    c.known_divergence("serving rounds half away from zero", variants="*[serving:*")
    c.known_divergence("fixed rounded half away from zero until 2.1", variants="*[fixed:*")

    @c.impl("training", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": np.round(x * 2.5)}

    @c.impl("serving", backend="numpy", dtypes=("float64",))
    def _(x):
        return {"y": np.trunc(x * 2.5 + np.copysign(0.5, x))}

    @c.impl("undeclared", backend="numpy", dtypes=("float64",))
    def _(x):
        return {"y": np.trunc(x * 2.5 + np.copysign(0.5, x))}

    @c.impl("fixed", backend="numpy", dtypes=("float64",))
    def _(x):
        return {"y": np.round(x * 2.5)}

    @c.impl("raises", backend="numpy", dtypes=("float64",))
    def _(x):
        scale = x.reshape(7, -1)  # the frame the failure shows
        return {"y": scale}
"""

CRASHING_CASES = """
    import ctypes
    import os

    import numpy as np

    from detharness import case

    c = case("bad/crash", inputs=lambda rng: {"x": np.ones(4, dtype="float32")})

    @c.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x}

    @c.impl("exits", backend="numpy")
    def _(x):
        os._exit(3)

    @c.impl("segfault", backend="numpy")
    def _(x):
        ctypes.string_at(0)

    @c.impl("after", backend="numpy")
    def _(x):
        return {"y": x + 0}
"""

BASE_CASE = """
    import numpy as np

    from detharness import case

""" + SCALED_STATE_CLASS + """
    s = case("inc/base", inputs=lambda rng: {"x": rng.standard_normal(8)})

    @s.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": x * 3}

    @s.impl("builder", backend="numpy", module=True, dtypes=("float64",), modes=("eager",))
    def _(params):
        return Scaled(np.float64(3))
"""

INCLUDING_CASE = """
    import numpy as np

    from detharness import case
    from detharness.cases import include

    include("a_base.py")["inc/base"].roundtrip("builder", ["json"])

    t = case("inc/own", inputs=lambda rng: {"x": rng.standard_normal(8)})

    @t.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": x + 1}

    @t.impl("numpy32", backend="numpy", dtypes=("float32",))
    def _(x):
        return {"y": x + np.float32(1)}
"""

TORCH_CASE = """
    import numpy as np

    from detharness import case

    c = case("small/softmax", tolerance="ulp(32)",
             inputs=lambda rng: {"x": (rng.standard_normal((8, 32)) * 3).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return {"y": e / e.sum(-1, keepdims=True)}

    @c.impl("torch", backend="torch", dtypes=("float32",))
    def _(x):
        import torch
        return {"y": torch.softmax(x, -1)}
"""


@pytest.fixture(autouse=True)
def _native_extensions_loaded_first() -> None:
    """pytester puts ``sys.modules`` back after an in-process run, dropping what the run imported, and
    a native extension imported a second time can abort the process (onnx's registers its protobuf
    descriptors again). Imported before pytester takes its snapshot, they stay loaded."""
    for name in ("onnx", "onnxruntime", "torch", "jax"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def _cases(pytester: pytest.Pytester, text: str, name: str = "cases.py", folder: str = "my_cases") -> Path:
    where = pytester.path / folder
    where.mkdir(exist_ok=True)
    (where / name).write_text(textwrap.dedent(text))
    return where


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest over the case files: in this process (pytester restores the modules it imports), or
    in a fresh one for xdist runs. In-process runs also show that a session leaves nothing behind
    that the next session in the same process trips on."""
    if "-n" in args:
        return pytester.runpytest_subprocess(*PYTEST_OPTIONS, *args)
    return pytester.runpytest_inprocess(*PYTEST_OPTIONS, *args)


def _glob(text: str) -> str:
    """``text`` as an fnmatch pattern that matches it literally (node ids hold brackets)."""
    return re.sub(r"[\[\]]", lambda m: f"[{m.group()}]", text)


def _collected(result: pytest.RunResult) -> list[str]:
    return [line for line in result.stdout.lines if "::" in line]


def test_node_ids_name_file_check_and_variant_and_one_runs_alone(pytester: pytest.Pytester) -> None:
    _cases(pytester, NUMPY_CASES)
    collected = _run(pytester, "--dh-cases", "my_cases", "--collect-only", "-q")
    assert _collected(collected) == NUMPY_IDS, collected.stdout.str()

    alone = _run(pytester, "--dh-cases", "my_cases", NUMPY_IDS[0], "-v", "-rP")
    alone.assert_outcomes(passed=1)
    alone.stdout.fnmatch_lines([f"{_glob(NUMPY_IDS[0])} PASSED*",
                                # what the variant printed is its captured output, from its worker process
                                "*numpy32 ran in a worker process: True*"])
    # Without the variant part, a node id selects every variant of the case's check.
    by_case = _run(pytester, "--dh-cases", "my_cases", "my_cases/cases.py::backend:demo/scale", "-q")
    by_case.assert_outcomes(passed=1, skipped=1)


def test_markers_select_cuda_variants_which_skip_without_a_gpu_or_fail_when_required(
        pytester: pytest.Pytester) -> None:
    _cases(pytester, NUMPY_CASES)
    cuda = _run(pytester, "--dh-cases", "my_cases", "-m", "cuda and numpy", "-rs", "-k", "scaling")  # a case tag
    cuda.assert_outcomes(skipped=2, deselected=1)
    cuda.stdout.fnmatch_lines(["SKIPPED [[]2[]] my_cases/cases.py:*: no cuda device seen by numpy"])
    required = _run(pytester, "--dh-cases", "my_cases", "-m", "cuda", "--dh-require-cuda")
    required.assert_outcomes(failed=2, deselected=1)
    required.stdout.fnmatch_lines(["*--dh-require-cuda: demo/scale[[]numpy32:cuda:float32:eager[]] did not run: "
                                   "no cuda device seen by numpy*"])


def test_a_test_file_named_alone_collects_no_case_and_imports_none(pytester: pytest.Pytester) -> None:
    folder = _cases(pytester, textwrap.dedent(NUMPY_CASES) + "\nopen('imported.txt', 'w').close()\n")
    pytester.makepyfile(test_plain="def test_one():\n    assert True\n")
    pytester.makeini("[pytest]\ndh_cases = my_cases\n")
    alone = _run(pytester, "test_plain.py", "--collect-only", "-q")
    assert _collected(alone) == ["test_plain.py::test_one"]
    assert not (pytester.path / "imported.txt").exists()
    # With no path named, the ini key's cases join what pytest collects.
    everything = _run(pytester, "--collect-only", "-q")
    assert _collected(everything) == [*NUMPY_IDS, "test_plain.py::test_one"]
    assert (folder.parent / "imported.txt").exists()


def test_a_case_file_named_on_the_command_line_is_imported_once(pytester: pytest.Pytester) -> None:
    """pytest's Python collector imports any .py file named on the command line; a case file is
    the plugin's alone: its code runs once, and its cases go into no registry outside the session."""
    from detharness import cases

    folder = _cases(pytester, textwrap.dedent(NUMPY_CASES) + "\nwith open('imports.txt', 'a') as f:\n    f.write('x')\n")
    before = len(cases.default_registry)
    for _ in range(2):  # two sessions in one process
        result = _run(pytester, "--dh-cases", "my_cases", "my_cases/cases.py", "-m", "cpu", "--dh-in-process")
        result.assert_outcomes(passed=1)
    assert (folder.parent / "imports.txt").read_text() == "xx"
    assert len(cases.default_registry) == before
    # A file pytest collects by its name keeps its tests, under the case paths too.
    (folder / "test_mixed.py").write_text("def test_plain():\n    assert True\n")
    mixed = _run(pytester, "--dh-cases", "my_cases", "my_cases/test_mixed.py", "-m", "not cuda", "--dh-in-process")
    mixed.assert_outcomes(passed=1)


def test_failures_show_status_message_the_case_files_line_and_how_to_rerun(pytester: pytest.Pytester) -> None:
    source = textwrap.dedent(FAILING_CASES).splitlines()
    case_line = next(i for i, line in enumerate(source, 1) if line.startswith("c = case("))
    raise_line = next(i for i, line in enumerate(source, 1) if "x.reshape(7, -1)" in line)
    _cases(pytester, FAILING_CASES)
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-rxX")
    result.assert_outcomes(failed=2, xfailed=1, xpassed=1)
    result.stdout.fnmatch_lines_random([
        "XFAIL my_cases/cases.py::backend:skew/rounding[[]serving:cpu:float64:eager[]]*serving rounds half away*",
        "XPASS my_cases/cases.py::backend:skew/rounding[[]fixed:cpu:float64:eager[]]*no longer happens: fixed*",
        "diverged: *",  # then, or on the next line (with a known divergence's why-not), the comparison
        "*DIVERGED | Output: 'y' | *",
        "error: ValueError: cannot reshape array*",
        f'  File "*my_cases/cases.py", line {raise_line}, in _',
        f"case skew/rounding is defined at my_cases/cases.py:{case_line}",
        "reproduce: detharness run --cases my_cases -k 'skew/rounding[[]undeclared:cpu:float64:eager[]]' "
        "--check backend",
        "rerun: pytest --dh-cases my_cases 'my_cases/cases.py::backend:skew/rounding[[]raises:cpu:float64:eager[]]'",
    ])
    # A stale declaration fails under xfail_strict, as an xfail test that passes does.
    strict = _run(pytester, "--dh-cases", "my_cases", "-k", "fixed", "-o", "xfail_strict=true")
    strict.assert_outcomes(failed=1, deselected=3)
    # The rerun line is a command that runs that item alone.
    again = _run(pytester, "--dh-cases", "my_cases", "my_cases/cases.py::backend:skew/rounding[raises:cpu:float64:eager]")
    again.assert_outcomes(failed=1)


def test_a_crashing_implementation_fails_its_own_items_only(pytester: pytest.Pytester) -> None:
    _cases(pytester, CRASHING_CASES)
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-n", "2")
    result.assert_outcomes(failed=2, passed=1)
    result.stdout.fnmatch_lines_random(["*error: worker exited with code 3*",
                                        "*error: worker crashed: killed by SIGSEGV*"])


def test_a_case_s_only_implementation_is_an_item_that_fails_with_its_error(pytester: pytest.Pytester) -> None:
    """Nothing is held against it, so no check would make its item and its error would go unseen:
    it gets the backend check's item, as `detharness run` reports it there."""
    _cases(pytester, """
        import numpy as np
        from detharness import case

        broken = case("lone/broken", inputs=lambda rng: {"x": np.ones(3)})

        @broken.impl("only", backend="numpy", reference=True)
        def _(x):
            raise ValueError("the only implementation broke")

        fine = case("lone/fine", inputs=lambda rng: {"x": np.ones(3)})

        @fine.impl("only", backend="numpy")
        def _(x):
            return {"y": x}

        pair = case("pair/sum", inputs=lambda rng: {"x": np.ones(3)})

        @pair.impl("ref", backend="numpy", reference=True, dtypes=("float64",))
        def _(x):
            return {"y": x}

        @pair.impl("other", backend="numpy")
        def _(x):
            return {"y": x + 0}
    """)
    result = _run(pytester, "--dh-cases", "my_cases", "-v", "-rs")
    result.assert_outcomes(failed=1, skipped=1, passed=1)  # a reference someone needs gets no item
    result.stdout.fnmatch_lines_random([
        "*::backend:lone/broken[[]only:cpu:float32:eager[]] FAILED*",
        "*::backend:lone/fine[[]only:cpu:float32:eager[]] SKIPPED*",
        "*::backend:pair/sum[[]other:cpu:float32:eager[]] PASSED*",
        "*error: ValueError: the only implementation broke*",
        "*nothing to compare (the backend check had nothing to hold it against)*"])


def test_in_process_runs_variants_in_the_test_process(pytester: pytest.Pytester) -> None:
    _cases(pytester, NUMPY_CASES)
    result = _run(pytester, "--dh-cases", "my_cases", "--dh-in-process", "-m", "cpu", "-rP")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*numpy32 ran in a worker process: False*"])


def test_xdist_workers_record_one_bundle_that_compare_reads_and_that_serves_as_baseline(
        pytester: pytest.Pytester) -> None:
    _cases(pytester, NUMPY_CASES)
    if importlib.util.find_spec("torch"):
        _cases(pytester, TORCH_CASE, name="torch_cases.py")
    bundle = pytester.path / "recorded"
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-n", "2", "--dh-record", str(bundle))
    torch = importlib.util.find_spec("torch") is not None
    result.assert_outcomes(passed=2 if torch else 1)
    manifest = json.loads((bundle / "manifest.json").read_text())
    expected = {"demo/scale[numpy:cpu:float64:eager]", "demo/scale[numpy32:cpu:float32:eager]"}
    if torch:
        expected |= {"small/softmax[numpy:cpu:float64:eager]", "small/softmax[torch:cpu:float32:eager]"}
    assert set(manifest["variants"]) == expected
    assert len(manifest["verdicts"]) == len(expected) // 2
    assert any(key.startswith("torch.") for key in manifest["environment"]) == torch  # the workers' keys

    compared = run_cli("compare", str(bundle), str(bundle), "--format", "json")
    assert compared.returncode == 0, compared.stdout + compared.stderr
    assert {r["status"] for r in json.loads(compared.stdout)["results"]} == {"identical"}

    again = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "--dh-baseline", str(bundle), "-v")
    again.assert_outcomes(passed=(2 if torch else 1) + len(expected))
    again.stdout.fnmatch_lines(["*::environment:demo/scale[[]numpy32:cpu:float32:eager[]] PASSED*"])

    # A bundle already there is never overwritten; a run that records nothing leaves no manifest.
    before = (bundle / "manifest.json").read_bytes()
    refused = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "--dh-record", str(bundle))
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--dh-record*a bundle is already there; choose a new folder*"])
    assert (bundle / "manifest.json").read_bytes() == before
    empty = pytester.path / "empty"
    nothing = _run(pytester, "--dh-cases", "my_cases", "-m", "not cpu and not cuda", "--dh-record", str(empty))
    nothing.assert_outcomes(deselected=6 if torch else 3)
    assert not (empty / "manifest.json").exists()


def test_included_cases_stay_with_the_file_that_defined_them(pytester: pytest.Pytester) -> None:
    _cases(pytester, BASE_CASE, name="a_base.py")
    _cases(pytester, INCLUDING_CASE, name="b_including.py")
    # Loaded in either order (the include first here), a case's items sit under its own file,
    # once, with the round trip the other file added.
    expected = [
        "my_cases/a_base.py::backend:inc/base[builder:cpu:float64:eager]",
        "my_cases/a_base.py::roundtrip:inc/base[builder:cpu:float64:roundtrip:json]",
        "my_cases/b_including.py::backend:inc/own[numpy32:cpu:float32:eager]",
    ]
    collected = _run(pytester, "--dh-cases", "my_cases", "--collect-only", "-q", "-m", "cpu")
    assert _collected(collected) == expected, collected.stdout.str()
    alone = _run(pytester, "--dh-cases", "my_cases", expected[1], "-v")
    alone.assert_outcomes(passed=1)
    everything = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu")
    everything.assert_outcomes(passed=3)


def test_a_case_file_that_fails_to_import_is_its_own_collection_error(pytester: pytest.Pytester) -> None:
    _cases(pytester, NUMPY_CASES)
    _cases(pytester, "import numpy as np\n\nraise RuntimeError('no such column')\n", name="broken.py")
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*ERROR collecting my_cases/broken.py*",
                                 "*case file * failed to import (line 3): RuntimeError: no such column*"])


def test_an_onnx_test_folder_is_collected_through_its_model(pytester: pytest.Pytester) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    test = pytester.path / "onnx_tests" / "test_add"
    (test / "test_data_set_0").mkdir(parents=True)
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "add",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in ("a", "b")],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(test / "model.onnx"))
    a, b = np.array([1, 2, 3], np.float32), np.array([4, 5, 6], np.float32)
    for name, array in (("input_0", a), ("input_1", b), ("output_0", a + b)):
        (test / "test_data_set_0" / f"{name}.pb").write_bytes(numpy_helper.from_array(array).SerializeToString())
    node = "onnx_tests/test_add/model.onnx::backend:onnx/onnx_tests/test_add[onnxruntime:cpu:float32:opt:all]"
    collected = _run(pytester, "--dh-cases", "onnx_tests", "--collect-only", "-q", "-m", "cpu")
    assert _collected(collected) == [node], collected.stdout.str()
    alone = _run(pytester, "--dh-cases", "onnx_tests", node)
    alone.assert_outcomes(passed=1)


DYING_CASES = """
    import os

    import numpy as np

    from detharness import case

    c = case("lost/one", inputs=lambda rng: {"x": np.ones(4)})

    @c.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x}

    @c.impl("dies", backend="numpy")
    def _(x):
        if os.environ.get("PYTEST_XDIST_WORKER"):
            os._exit(9)  # in the test process (--dh-in-process): the xdist worker is gone
        raise ValueError("fails, and -x stops the session here")
"""
FINE_CASES = """
    import numpy as np

    from detharness import case

    c = case("kept/two", inputs=lambda rng: {"x": np.ones(4)})

    @c.impl("ref", backend="numpy", reference=True)
    def _(x):
        return {"y": x}

    @c.impl("fine", backend="numpy")
    def _(x):
        return {"y": x + 0}
"""
DIES = "lost/one[dies:cpu:float32:eager]"
FINE = "kept/two[fine:cpu:float32:eager]"


def test_a_killed_xdist_worker_s_variants_are_listed_as_not_recorded(pytester: pytest.Pytester) -> None:
    _cases(pytester, DYING_CASES, name="a_dying.py")
    _cases(pytester, FINE_CASES, name="b_fine.py")
    bundle = pytester.path / "recorded"
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-n", "2", "--dist", "loadfile",
                  "--dh-in-process", "--dh-record", str(bundle))
    assert f"{DIES}" in result.stdout.str()
    result.stdout.fnmatch_lines([f"detharness: --dh-record *: * collected variant(s) not recorded *{_glob(DIES)}*"])
    manifest = json.loads((bundle / "manifest.json").read_text())  # the other worker's part
    assert manifest["not_recorded"] == [DIES] and FINE in manifest["variants"]


def test_variants_a_session_did_not_reach_are_listed_as_not_recorded(pytester: pytest.Pytester) -> None:
    _cases(pytester, DYING_CASES, name="a_dying.py")
    _cases(pytester, FINE_CASES, name="b_fine.py")
    bundle = pytester.path / "recorded"
    result = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-x", "--dh-record", str(bundle))
    result.assert_outcomes(failed=1)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["not_recorded"] == [FINE]
    assert DIES in manifest["variants"]
    assert not (bundle / "parts").exists() or list((bundle / "parts").iterdir())
    result.stdout.fnmatch_lines([f"detharness: --dh-record *: 1 collected variant(s) not recorded "
                                 f"(listed under not_recorded in its manifest; *): {_glob(FINE)}"])
    # A complete session lists nothing.
    complete = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-k", "fine",
                    "--dh-record", str(pytester.path / "whole"))
    complete.assert_outcomes(passed=1)
    assert json.loads((pytester.path / "whole" / "manifest.json").read_text())["not_recorded"] == []
    assert "not recorded" not in complete.stdout.str()


def test_dh_baseline_space_form_with_a_path_outside_the_project_keeps_the_rootdir(
        pytester: pytest.Pytester, tmp_path_factory: pytest.TempPathFactory) -> None:
    _cases(pytester, NUMPY_CASES)
    pytester.makeini("[pytest]\ndh_cases = my_cases\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "baseline"
    made = run_cli("run", "--cases", str(pytester.path / "my_cases"), "--device", "cpu", "--out", str(elsewhere))
    assert made.returncode == 0, made.stderr
    for form in (["--dh-baseline", str(elsewhere)], [f"--dh-baseline={elsewhere}"]):
        result = _run(pytester, *form, "-m", "cpu", "-v")
        result.stdout.fnmatch_lines([f"rootdir: {pytester.path}*"])
        result.assert_outcomes(passed=3, deselected=2)  # backend: of numpy32, environment: of both


def test_a_new_record_session_merges_no_part_a_previous_interrupted_one_left(pytester: pytest.Pytester) -> None:
    _cases(pytester, FINE_CASES, name="b_fine.py")
    _cases(pytester, DYING_CASES, name="a_dying.py")
    bundle = pytester.path / "recorded"
    first = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-k", "dies", "--dh-record", str(bundle))
    first.assert_outcomes(failed=1, deselected=1)
    (bundle / "manifest.json").unlink()  # as if that session had been interrupted before its merge
    assert list((bundle / "parts").glob("*.json"))
    second = _run(pytester, "--dh-cases", "my_cases", "-m", "cpu", "-k", "fine", "--dh-record", str(bundle))
    second.assert_outcomes(passed=1, deselected=1)
    assert DIES not in json.loads((bundle / "manifest.json").read_text())["variants"]


def test_required_cuda_failures_carry_no_framework_debug_log() -> None:
    """Variants run in worker processes, so the test process's log capture holds no torch trace lines
    (a --dh-require-cuda failure carried 37 empty ``DEBUG torch.__trace`` lines)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-m", "pytest", *PYTEST_OPTIONS, "--dh-cases", "cases",
                           "cases/models/softmax.py", "-m", "cuda and torch", "--dh-require-cuda", "-q"],
                          capture_output=True, text=True, cwd=root, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "--dh-require-cuda:" in done.stdout
    assert "DEBUG" not in done.stdout
