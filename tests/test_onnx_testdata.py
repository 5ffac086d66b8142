"""ONNX backend-test folders as a case source: ids, stored references, refusals, and ONNX's own data.

The last test runs the ``pytorch-converted`` folder that the onnx wheel ships through
``detharness run`` and through a hand-written ONNX Runtime loop, and requires the same outcome for
every test.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from detharness import checks  # noqa: E402
from detharness.cases import discover  # noqa: E402
from detharness.onnx_testdata import ONNX_TOLERANCE, find_test_folders  # noqa: E402
from detharness.runner import RunOptions, run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

# Every file the Python side of this process opens, while recording: the external-data test
# asserts that a file outside the test folder is never among them. Audit hooks cannot be removed,
# so the hook stays installed and records only while the list is not None.
_OPENED: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.realpath(os.fsdecode(args[0])))


sys.addaudithook(_audit)


@pytest.fixture
def opened_files() -> Iterator[list[str]]:
    global _OPENED
    _OPENED = []
    try:
        yield _OPENED
    finally:
        _OPENED = None


# -- building test folders -------------------------------------------------------------------


def _model(op: str, n_inputs: int, elem: int = TensorProto.FLOAT, opset: int = 17,
           initializers: Sequence[TensorProto] = ()) -> onnx.ModelProto:
    names = [f"x{i}" for i in range(n_inputs)] + [t.name for t in initializers]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"])], "t",
        [helper.make_tensor_value_info(f"x{i}", elem, None) for i in range(n_inputs)],
        [helper.make_tensor_value_info("y", elem, None)],
        initializer=list(initializers),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 7 else 3
    return model


def write_test(folder: Path, model: onnx.ModelProto, data_sets: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> Path:
    """A test folder in ONNX's layout: model.onnx and test_data_set_N/{input,output}_i.pb."""
    folder.mkdir(parents=True)
    # Written as bytes: onnx.save would try to manage a tensor's external data itself.
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    for n, (inputs, outputs) in enumerate(data_sets):
        data_set = folder / f"test_data_set_{n}"
        data_set.mkdir()
        for role, arrays in (("input", inputs), ("output", outputs)):
            for i, array in enumerate(arrays):
                proto = array if not isinstance(array, np.ndarray) else numpy_helper.from_array(array)
                (data_set / f"{role}_{i}.pb").write_bytes(proto.SerializeToString())
    return folder


def run_in_process(path: Path) -> tuple[Any, list[dict[str, Any]]]:
    record = run(RunOptions(case_paths=[str(path)], device="cpu", in_process=True))
    return record, [r.to_json() for r in checks.CHECKS["backend"].judge(record)]


def only(results: list[dict[str, Any]]) -> dict[str, Any]:
    assert len(results) == 1, [(r["variant"], r["status"]) for r in results]
    return results[0]


X = np.array([[1.0, -2.0], [3.5, 0.25]], dtype=np.float32)
Y = np.array([[0.5, 0.5], [-1.0, 2.0]], dtype=np.float32)


# -- ids, tags, references -------------------------------------------------------------------


def test_hand_made_folder_gives_its_case_id_and_passes(tmp_path: Path) -> None:
    write_test(tmp_path / "my-group" / "test_add", _model("Add", 2), [((X, Y), (X + Y,))])
    registry = discover([tmp_path / "my-group"])
    c = registry["onnx/my-group/test_add"]
    assert sorted(c.tags) == ["my-group", "onnx"]
    assert c.tolerance == ONNX_TOLERANCE == "close(1e-3, 1e-7)"
    assert [v.id for v in c.variants()] == ["onnx/my-group/test_add[onnxruntime:cpu:float32:opt:all]",
                                            "onnx/my-group/test_add[onnxruntime:cuda:float32:opt:all]"]
    assert set(c.reference_outputs or {}) == {"y"}
    result = only(run_in_process(tmp_path / "my-group")[1])
    assert (result["status"], result["baseline"]) == ("identical", "onnx/my-group/test_add[stored outputs]")


def test_ids_are_relative_to_the_parent_of_the_folder_given(tmp_path: Path) -> None:
    for name in ("test_a", "deeper/test_b"):
        write_test(tmp_path / "data" / "suite" / name, _model("Relu", 1), [((X,), (np.maximum(X, 0),))])
    assert sorted(c.id for c in discover([tmp_path / "data"])) == ["onnx/data/suite/deeper/test_b",
                                                                   "onnx/data/suite/test_a"]
    # One test folder named directly keeps its own name; its tag is the folder holding it.
    c = next(iter(discover([tmp_path / "data" / "suite" / "deeper" / "test_b"])))
    assert (c.id, sorted(c.tags)) == ("onnx/test_b", ["deeper", "onnx"])


def test_a_folder_with_case_files_and_test_data_gives_both(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    write_test(folder / "onnx_tests" / "test_relu", _model("Relu", 1), [((X,), (np.maximum(X, 0),))])
    (folder / "scale.py").write_text(
        "from detharness import case\n"
        "c = case('mine/scale', inputs=lambda rng: {'x': rng.standard_normal(4)})\n"
        "@c.impl('numpy', backend='numpy', reference=True, dtypes=('float64',))\n"
        "def _(x):\n    return {'y': x * 2}\n")
    assert sorted(c.id for c in discover([folder])) == ["mine/scale", "onnx/mixed/onnx_tests/test_relu"]


def test_the_same_tests_named_twice_are_read_once(tmp_path: Path) -> None:
    write_test(tmp_path / "d" / "g" / "test_relu", _model("Relu", 1), [((X,), (np.maximum(X, 0),))])
    assert [c.id for c in discover([tmp_path / "d", tmp_path / "d" / "g"])] == ["onnx/d/g/test_relu"]


def test_several_data_sets_become_one_case_each(tmp_path: Path) -> None:
    write_test(tmp_path / "t" / "test_neg", _model("Neg", 1), [((X,), (-X,)), ((Y,), (-Y,))])
    assert [c.id for c in discover([tmp_path / "t"])] == ["onnx/t/test_neg/0", "onnx/t/test_neg/1"]
    statuses = {r["case"]: r["status"] for r in run_in_process(tmp_path / "t")[1]}
    assert statuses == {"onnx/t/test_neg/0": "identical", "onnx/t/test_neg/1": "identical"}


def test_wrong_stored_output_is_diverged(tmp_path: Path) -> None:
    wrong = X + Y
    wrong[1, 0] += 0.01  # far beyond rtol 1e-3 of 4.5
    write_test(tmp_path / "g" / "test_add", _model("Add", 2), [((X, Y), (wrong,))])
    result = only(run_in_process(tmp_path / "g")[1])
    assert result["status"] == "diverged"
    assert result["worst_index"] == [1, 0] and result["tolerance"] == "close(0.001, 1e-7)"


def test_within_onnx_tolerance_is_close(tmp_path: Path) -> None:
    stored = (X + Y) * np.float32(1 + 5e-4)  # inside rtol 1e-3: ONNX's own runner passes it
    write_test(tmp_path / "g" / "test_add", _model("Add", 2), [((X, Y), (stored,))])
    assert only(run_in_process(tmp_path / "g")[1])["status"] == "close"


def test_a_model_without_float_inputs_runs_at_its_input_dtype(tmp_path: Path) -> None:
    ints = np.array([1, 5, -3], dtype=np.int64)
    write_test(tmp_path / "g" / "test_abs", _model("Abs", 1, elem=TensorProto.INT64), [((ints,), (np.abs(ints),))])
    c = next(iter(discover([tmp_path / "g"])))
    assert c.impls["onnxruntime"].dtypes == ("int64",)
    assert only(run_in_process(tmp_path / "g")[1])["status"] == "identical"


# -- what the runtime cannot load or run -----------------------------------------------------


def _by_hand_error(model_path: Path) -> str:
    """The runtime's message for a model it cannot open, less the "Load model from PATH failed:"
    that it adds only when given a path (detharness hands it the checked model's bytes)."""
    with pytest.raises(Exception) as info:
        ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return re.sub(r"Load model from .* failed:", "", str(info.value).splitlines()[0])


def test_a_model_the_runtime_cannot_load_is_error_with_its_message(tmp_path: Path) -> None:
    folder = write_test(tmp_path / "g" / "test_bad", _model("NoSuchOp", 1), [((X,), (X,))])
    result = only(run_in_process(tmp_path / "g")[1])
    assert result["status"] == "error"
    assert _by_hand_error(folder / "model.onnx") in result["message"]
    assert "NoSuchOp" in result["message"]


def test_a_missing_kernel_is_error_not_skipped(tmp_path: Path) -> None:
    # Add(6) at float64: the CPU provider has no such kernel. The backend calls that a skip for
    # generated variants; for a test folder it is the runtime failing the test, as by hand.
    x = X.astype(np.float64)
    folder = write_test(tmp_path / "g" / "test_add6", _model("Add", 2, elem=TensorProto.DOUBLE, opset=6),
                        [((x, x), (x + x,))])
    result = only(run_in_process(tmp_path / "g")[1])
    assert result["status"] == "error"
    assert "Could not find an implementation for Add(6)" in result["message"]
    assert _by_hand_error(folder / "model.onnx") in result["message"]


# -- refusals --------------------------------------------------------------------------------


def test_external_data_outside_the_folder_is_refused_and_never_read(tmp_path: Path, opened_files: list[str]) -> None:
    outside = tmp_path / "g" / "outside.bin"
    weights = np.ones((2, 2), dtype=np.float32)
    tensor = numpy_helper.from_array(weights, name="w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../outside.bin")
    folder = write_test(tmp_path / "g" / "test_leak", _model("Add", 1, initializers=[tensor]), [((X,), (X + 1,))])
    outside.write_bytes(weights.tobytes())
    opened_files.clear()  # from here on, only what detharness opens

    _record, results = run_in_process(tmp_path / "g")
    result = only(results)
    assert result["status"] == "error"
    assert "'../outside.bin'" in result["message"] and "leaves the model's folder" in result["message"]
    assert os.path.realpath(outside) not in opened_files
    assert str(folder.resolve() / "model.onnx") in opened_files  # the hook did see this test's reads


def test_a_linked_input_outside_the_folder_is_refused_and_never_read(tmp_path: Path, opened_files: list[str]) -> None:
    folder = write_test(tmp_path / "g" / "test_link", _model("Relu", 1), [((X,), (np.maximum(X, 0),))])
    secret = tmp_path / "secret.pb"
    secret.write_bytes(numpy_helper.from_array(X).SerializeToString())
    pb = folder / "test_data_set_0" / "input_0.pb"
    pb.unlink()
    pb.symlink_to(secret)
    opened_files.clear()
    result = only(run_in_process(tmp_path / "g")[1])
    assert result["status"] == "error" and "outside its test folder; refused" in result["message"]
    assert os.path.realpath(secret) not in opened_files


def test_non_tensor_inputs_are_a_per_case_error(tmp_path: Path) -> None:
    seq_type = helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, None))
    graph = helper.make_graph(
        [helper.make_node("SequenceLength", ["s"], ["n"])], "t",
        [helper.make_value_info("s", seq_type)], [helper.make_tensor_value_info("n", TensorProto.INT64, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sequence = onnx.numpy_helper.from_list([X, Y], name="s")
    write_test(tmp_path / "g" / "test_seq", model, [((sequence,), (np.array(2, dtype=np.int64),))])
    write_test(tmp_path / "g" / "test_ok", _model("Relu", 1), [((X,), (np.maximum(X, 0),))])
    statuses = {r["case"]: (r["status"], r["message"]) for r in run_in_process(tmp_path / "g")[1]}
    assert statuses["onnx/g/test_ok"][0] == "identical"  # one odd test does not stop the others
    status, message = statuses["onnx/g/test_seq"]
    assert status == "error"
    assert "input 's' (input_0.pb) is a sequence (onnx.SequenceProto); detharness compares tensors only" in message


def test_ordinary_case_folders_do_not_import_onnx() -> None:
    code = ("import sys; from detharness.cases import discover; discover(); "
            "print('onnx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# -- ONNX's own backend-test data, by detharness and by hand ---------------------------------


def _tensor(path: Path) -> np.ndarray:
    proto = onnx.TensorProto()
    proto.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(proto)


def _numbered(folder: Path, role: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{role}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    return [_tensor(p) for p in files]


def _outcome_by_hand(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> str:
    """identical / close (ONNX's rtol 1e-3, atol 1e-7) / diverged, as ONNX's runner judges."""
    if len(expected) != len(actual):
        return "diverged"
    pairs = [(np.asarray(e), np.asarray(a)) for e, a in zip(expected, actual, strict=True)]
    if all(e.dtype == a.dtype and e.shape == a.shape and e.tobytes() == a.tobytes() for e, a in pairs):
        return "identical"
    for e, a in pairs:
        if e.dtype != a.dtype or e.shape != a.shape:
            return "diverged"
        if e.dtype.kind in "fiuc":
            if not np.allclose(a, e, rtol=1e-3, atol=1e-7, equal_nan=True):
                return "diverged"
        elif not np.array_equal(a, e):
            return "diverged"
    return "close"


def run_by_hand(folder: Path) -> dict[str, tuple[str, str]]:
    """Every test under ``folder`` run in a plain InferenceSession: name -> (outcome, message)."""
    outcomes: dict[str, tuple[str, str]] = {}
    for test in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
        data_set = test / "test_data_set_0"
        inputs, expected = _numbered(data_set, "input"), _numbered(data_set, "output")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(test / "model.onnx"), sess_options=options,
                                           providers=["CPUExecutionProvider"])
            feed = dict(zip([i.name for i in session.get_inputs()], inputs, strict=True))
            actual = session.run(None, feed)
        except Exception as exc:
            outcomes[test.name] = ("error", str(exc).splitlines()[0])
            continue
        outcomes[test.name] = (_outcome_by_hand(expected, actual), "")
    return outcomes


_SEVERITY = {"identical": 0, "close": 1, "diverged": 2, "error": 3}


def run_detharness(folder: Path) -> dict[str, tuple[str, str]]:
    """``detharness run --cases folder`` as a user runs it: test name -> (worst outcome, message)."""
    proc = subprocess.run(
        [sys.executable, "-m", "detharness", "run", "--cases", str(folder), "--device", "cpu",
         "--check", "backend", "--format", "json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode in (0, 1), proc.stderr
    outcomes: dict[str, tuple[str, str]] = {}
    for result in json.loads(proc.stdout)["results"]:
        # A mismatch (NaN/inf pattern, shape, dtype) is one way of not being within tolerance.
        status = "diverged" if result["status"] == "mismatch" else result["status"]
        name = result["case"].rsplit("/", 1)[1]
        current = outcomes.get(name)
        if current is None or _SEVERITY[status] > _SEVERITY[current[0]]:
            outcomes[name] = (status, result["message"])
    return outcomes


def _counts(outcomes: Mapping[str, tuple[str, str]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for status, _message in outcomes.values():
        counts[status] = counts.get(status, 0) + 1
    return counts


@pytest.mark.skipif(not (ONNX_DATA / "pytorch-converted").is_dir(), reason="this onnx wheel ships no pytorch-converted data")
def test_pytorch_converted_gives_the_same_outcome_as_onnx_runtime_by_hand() -> None:
    folder = ONNX_DATA / "pytorch-converted"
    by_hand = run_by_hand(folder)
    ours = run_detharness(folder)
    assert len(find_test_folders(folder)) == len(by_hand) == len(ours)
    assert {k: v[0] for k, v in ours.items()} == {k: v[0] for k, v in by_hand.items()}
    for name, (status, message) in by_hand.items():
        if status == "error":
            assert message in ours[name][1], name  # the runtime's own message, not a paraphrase
    # Measured with onnxruntime 1.32 on the CPU: 18 bitwise equal, 41 within
    # rtol 1e-3 / atol 1e-7, 23 that the runtime cannot load or run. Another version may move them.
    print(f"pytorch-converted: {_counts(ours)} (onnxruntime {ort.__version__})")
    if ort.__version__.startswith("1.32."):
        assert _counts(ours) == {"identical": 18, "close": 41, "error": 23}


def test_the_builder_opens_its_session_with_errors_only_logging(tmp_path: Path, session_severities: list[int]) -> None:
    # An opset-6 model: at ONNX Runtime's default severity it writes "only *guarantees* support
    # for models stamped with opset version 7 or above" to stderr for each session.
    write_test(tmp_path / "g" / "test_relu6", _model("Relu", 1, opset=6), [((X,), (np.maximum(X, 0),))])
    severities = session_severities
    c = next(iter(discover([tmp_path / "g"])))
    model = c.impls["onnxruntime"].fn({})
    assert isinstance(model, onnx.ModelProto)
    assert severities == [3]
