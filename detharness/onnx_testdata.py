"""ONNX backend-test data as a case source: ``model.onnx`` plus ``test_data_set_N/`` folders.

``--cases`` (and the pytest plugin's ``--dh-cases``) accept a folder in the layout of ONNX's
backend test data (``onnx/backend/test/data/``)::

    test_Conv2d/
        model.onnx
        test_data_set_0/input_0.pb ... output_0.pb ...

either one such test folder or a folder holding them at any depth. Every test becomes a case:

- id: ``onnx/`` plus the test folder's path relative to the parent of the folder given, so
  ``--cases .../data/pytorch-converted`` gives ``onnx/pytorch-converted/test_Conv2d``. A test with
  several data sets gives one case per data set, ``onnx/.../test_X/0``, ``/1``...; with one data set
  the id carries no suffix (the usual layout, and the one ONNX's own runner names).
- tags: ``onnx`` and the name of the folder holding the test (``pytorch-converted``).
- inputs: the ``input_i.pb`` tensors, fed by position to the model's inputs (ONNX's runner and
  ``onnxruntime.backend`` feed them the same way); the stored ``output_i.pb`` tensors are the
  reference (``Case.reference_outputs``), named after the model's outputs.
- one implementation, ``onnxruntime`` on the onnxruntime backend at ``opt:all`` (what a plain
  ``InferenceSession`` uses), whose dtype is the model's float input dtype (the runner casts float
  inputs to the variant's dtype, so any other choice would change the inputs), or the first
  input's dtype for a model with no float input.
- tolerance: ONNX's backend-test convention, ``close(1e-3, 1e-7)`` (its runner's rtol and atol).

A model the runtime cannot load or run is ``error`` with the runtime's own message, as when running
ONNX Runtime by hand. That includes a kernel the CPU provider lacks (``Add(6)`` at float64), which
the onnxruntime backend otherwise reports as ``skipped``: for a generated variant (a torch model
exported at a dtype) that means "this combination cannot run here", but a test folder fixes its
model and its dtypes, so a missing kernel is the runtime failing the test. The builder therefore
opens one CPU session itself before handing the model to the backend and lets the runtime's
exception through. A CUDA variant is judged by the same CPU session: ONNX Runtime places nodes
its CUDA provider lacks on the CPU provider, so the CPU's kernels are the floor.

What is refused, each as its case's ``error`` with a message (never by failing discovery):
inputs or outputs that are not tensors (sequences, maps, optionals, sparse tensors); ``.pb``
tensors that keep their data in external files; stored inputs whose dtype differs from the
model's declared input type; several float input dtypes in one model; files (``model.onnx``,
``.pb``, external data) that resolve, links followed, outside the test folder. Nothing is
unpickled: ``.pb`` files are parsed as ``onnx.TensorProto`` only.

Not runnable here: string tensors. The onnxruntime backend takes no string arrays, so tests with
string inputs (``simple/test_strnorm_*``) come out ``skipped`` with the backend's reason.

Discovery imports onnx only once a folder is found to hold test data (:func:`find_test_folders`
looks at file names only), so ``detharness list`` of ordinary case folders stays fast.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detharness.cases import Case, Registry, case_files, display_path
from detharness.dtypes import FLOAT_DTYPES, dtype_name
from detharness.errors import CaseError, DetHarnessError, DtypeError, UsageError

if TYPE_CHECKING:
    import onnx

#: ONNX's backend-test comparison: ``np.testing.assert_allclose(rtol=1e-3, atol=1e-7)`` in
#: ``onnx/backend/test/runner/__init__.py``; ``close`` is the same inequality.
ONNX_TOLERANCE = "close(1e-3, 1e-7)"
MODEL_FILE = "model.onnx"
DATA_SET_PREFIX = "test_data_set_"
#: The onnxruntime mode a plain ``InferenceSession`` runs at (its default optimization level).
ONNX_MODE = "opt:all"
ID_PREFIX = "onnx"

_DATA_SET = re.compile(r"^test_data_set_(\d+)$")
_TENSOR_FILE = re.compile(r"^(input|output)_(\d+)\.pb$")
_NOT_ID_CHAR = re.compile(r"[^A-Za-z0-9_.+-]")

# The kinds of ONNX TypeProto a test value can have, as the protobuf spelled in its .pb file.
_VALUE_KINDS = {
    "sequence_type": "a sequence (onnx.SequenceProto)",
    "map_type": "a map (onnx.MapProto)",
    "optional_type": "an optional (onnx.OptionalProto)",
    "sparse_tensor_type": "a sparse tensor (onnx.SparseTensorProto)",
}

# Models already opened once by the CPU provider in this process (by the sha256 of model.onnx):
# a case's CPU and CUDA variants share one probe.
_LOADABLE: set[str] = set()


# -- finding test folders (file names only: no onnx import) ------------------------------------


def is_test_folder(path: Path) -> bool:
    """Whether ``path`` holds ``model.onnx`` and at least one ``test_data_set_N`` folder."""
    if not (path / MODEL_FILE).is_file():
        return False
    try:
        return any(_DATA_SET.match(p.name) and p.is_dir() for p in path.iterdir())
    except OSError:
        return False


def find_test_folders(root: Path) -> list[Path]:
    """Every test folder at or below ``root``, sorted by path.

    Hidden folders and those starting with ``_`` are skipped, as for case files. Linked folders
    are not entered: a link could lead outside the folder the user named.
    """
    if is_test_folder(root):
        return [root]
    found: list[Path] = []
    for current, dirs, _files in os.walk(root):
        here = Path(current)
        keep = []
        for name in sorted(dirs):
            sub = here / name
            if name.startswith((".", "_")) or sub.is_symlink():
                continue
            if is_test_folder(sub):
                found.append(sub)  # its data-set folders are data, not more tests
            else:
                keep.append(name)
        dirs[:] = keep
    return sorted(found)


def load_onnx_test_data(folder: Path, registry: Registry) -> bool:
    """The ``CASE_SOURCES`` hook: add a case per test (and data set) found under ``folder``.

    Returns True (the folder is claimed) when it holds test data and no Python case files outside
    the test folders. A folder holding both gets its tests added and returns False, so that
    discovery goes on to import its case files as usual. A folder with no test data is left alone
    without importing onnx.
    """
    tests = find_test_folders(folder)
    if not tests:
        return False
    root = folder.resolve()
    base = root.parent if root.parent != root else root
    for test in tests:
        key = str(test.resolve())
        if key in registry.files:
            continue  # the same folder named twice (or inside another one named)
        for c in cases_for_test(test, base):
            registry.add(c)
        registry.files.append(key)
    python_files = [p for p in case_files(folder) if not any(_inside(p, t) for t in tests)]
    return not python_files


# -- one test folder -> cases ------------------------------------------------------------------


@dataclass
class _Value:
    """One graph input or output as ONNX Runtime sees it: name, kind, declared dtype."""

    name: str
    kind: str | None  # TypeProto's oneof: tensor_type, sequence_type... (None: not declared)
    dtype: str | None  # detharness dtype name of a tensor's declared element type


@dataclass
class _Model:
    path: Path
    sha256: str
    inputs: list[_Value] = field(default_factory=list)
    outputs: list[_Value] = field(default_factory=list)
    external_sha256: dict[str, str] = field(default_factory=dict)
    problem: Exception | None = None


def cases_for_test(test: Path, base: Path) -> list[Case]:
    """The cases of one test folder: one per data set. ``base`` is what case ids are relative to."""
    rel = test.resolve().relative_to(base).as_posix() if test.resolve() != base else test.resolve().name
    case_id = f"{ID_PREFIX}/{_id_part(rel)}"
    group = _id_part(test.resolve().parent.name) or ID_PREFIX
    model = _read_model(test)
    data_sets = sorted(
        (int(m.group(1)), p) for p in test.iterdir() if (m := _DATA_SET.match(p.name)) and p.is_dir()
    )
    made: list[Case] = []
    for number, folder in data_sets:
        suffix = f"/{number}" if len(data_sets) > 1 else ""
        made.append(_make_case(f"{case_id}{suffix}", test, folder, model, tags={ID_PREFIX, group}))
    return made


def _make_case(case_id: str, test: Path, data_set: Path, model: _Model, tags: set[str]) -> Case:
    problem = model.problem
    inputs: dict[str, np.ndarray] = {}
    outputs: dict[str, np.ndarray] = {}
    data_hash = hashlib.sha256()
    if problem is None:
        try:
            inputs, outputs = _read_data_set(test, data_set, model, data_hash)
        except DetHarnessError as exc:
            problem = exc
        except Exception as exc:  # a broken test is its case's error, never discovery's
            problem = CaseError(f"{display_path(data_set)}: {type(exc).__name__}: {exc}")
    dtype = "float32"
    if problem is None:
        try:
            dtype = _variant_dtype(model, inputs)
        except CaseError as exc:
            problem = exc
    rel_set = data_set.name
    description = (f"ONNX backend test {display_path(test)} ({rel_set}): ONNX Runtime against the stored outputs"
                   + (f"; cannot run: {problem}" if problem is not None else ""))
    extra = f"model sha256 {model.sha256}; data sha256 {data_hash.hexdigest()}"
    if model.external_sha256:
        extra += "; external " + ", ".join(f"{k}={v}" for k, v in sorted(model.external_sha256.items()))

    def stored_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        # The test's own inputs: no random stream is drawn.
        return inputs

    c = Case(case_id, inputs=stored_inputs, tags=tags, tolerance=ONNX_TOLERANCE, reference_outputs=outputs,
             description=description, location=display_path(test / MODEL_FILE), fingerprint_extra=extra)
    c.impl("onnxruntime", backend="onnxruntime", dtypes=(dtype,), modes=(ONNX_MODE,), module=True)(
        _builder(model, problem)
    )
    return c


def _builder(model: _Model, problem: Exception | None) -> Callable[[dict[str, Any]], Any]:
    def build(params: dict[str, Any]) -> Any:
        """Load the test's model (external data kept inside its folder) and let ONNX Runtime open it."""
        if problem is not None:
            raise type(problem)(str(problem))
        from detharness.backends.onnx_model import load_model_safely

        loaded = load_model_safely(model.path)
        if model.sha256 not in _LOADABLE:
            _open_session(loaded.SerializeToString())
            _LOADABLE.add(model.sha256)
        return loaded

    return build


def _open_session(data: bytes) -> None:
    """Open the model as a plain CPU ``InferenceSession`` would, raising the runtime's own error.

    The backend turns "Could not find an implementation for Op(N)" into a skip; here it must stay
    the runtime's failure (see the module docstring), so the exception is not translated.
    """
    import onnxruntime

    from detharness.backends.onnxruntime_backend import session_options

    # The backend's options: ORT_ENABLE_ALL, and errors only, so that the opset warnings of old
    # test models ("only *guarantees* support for models stamped with opset version 7") stay off
    # the terminal.
    options = session_options("ORT_ENABLE_ALL")
    onnxruntime.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _read_model(test: Path) -> _Model:
    """The model's identity and its inputs and outputs as ONNX Runtime sees them.

    Any problem (a link out of the folder, an unreadable file, external data outside the folder)
    is kept on the result, to become the case's error; the outside file is never opened.
    """
    path = test / MODEL_FILE
    model = _Model(path=path, sha256="")
    try:
        _check_inside(path, test)
        data = path.read_bytes()
    except (UsageError, OSError) as exc:
        model.problem = exc if isinstance(exc, UsageError) else UsageError(f"cannot read {display_path(path)}: {exc}")
        return model
    model.sha256 = hashlib.sha256(data).hexdigest()
    import onnx

    from detharness.backends.onnx_model import check_external_data, external_tensors

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # a corrupt file is the test's failure, not discovery's
        model.problem = UsageError(f"cannot read ONNX model {display_path(path)}: {exc}")
        return model
    try:
        check_external_data(proto, test)
    except UsageError as exc:
        model.problem = UsageError(f"{display_path(path)}: {exc}")
        return model
    for tensor in external_tensors(proto):
        location = {e.key: e.value for e in tensor.external_data}["location"]
        if location not in model.external_sha256:
            model.external_sha256[location] = _file_sha256(test / location)
    initializers = {t.name for t in proto.graph.initializer}
    # ONNX Runtime feeds only the graph inputs that no initializer provides (IR < 4 models list
    # their weights as inputs too): these are what input_0.pb, input_1.pb... go to, in order.
    model.inputs = [_value(v) for v in proto.graph.input if v.name not in initializers]
    model.outputs = [_value(v) for v in proto.graph.output]
    return model


def _value(info: onnx.ValueInfoProto) -> _Value:
    kind = info.type.WhichOneof("value")
    dtype = None
    if kind == "tensor_type" and info.type.tensor_type.elem_type:
        dtype = _onnx_dtype_name(info.type.tensor_type.elem_type)
    return _Value(name=info.name, kind=kind, dtype=dtype)


def _onnx_dtype_name(elem_type: int) -> str | None:
    from onnx import TensorProto, helper

    if elem_type == TensorProto.STRING:
        return "str"
    try:
        return dtype_name(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError, DtypeError):
        return None  # a type detharness has no name for (float8...): the runtime will judge it


def _read_data_set(test: Path, data_set: Path, model: _Model,
                   data_hash: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    files: dict[str, dict[int, Path]] = {"input": {}, "output": {}}
    for p in data_set.iterdir():
        m = _TENSOR_FILE.match(p.name)
        if m:
            files[m.group(1)][int(m.group(2))] = p
    read: dict[str, dict[str, np.ndarray]] = {}
    for role, declared in (("input", model.inputs), ("output", model.outputs)):
        numbers = sorted(files[role])
        if numbers != list(range(len(numbers))):
            raise CaseError(f"{display_path(data_set)}: {role} files are not numbered 0..{len(numbers) - 1}: "
                            + ", ".join(files[role][n].name for n in numbers))
        arrays: dict[str, np.ndarray] = {}
        for n in numbers:
            value = declared[n] if n < len(declared) else None
            name = value.name if value is not None else f"{role}_{n}"
            if name in arrays:
                name = f"{role}_{n}"
            if value is not None and value.kind in _VALUE_KINDS:
                raise CaseError(f"{role} {value.name!r} ({files[role][n].name}) is {_VALUE_KINDS[value.kind]}; "
                                "detharness compares tensors only")
            data = _read_inside(files[role][n], test)
            data_hash.update(f"{role}_{n}\0".encode() + hashlib.sha256(data).digest())
            array = _tensor_from_bytes(data, files[role][n])
            if role == "input" and value is not None and value.dtype is not None and value.dtype != dtype_name_of(array):
                raise CaseError(f"{files[role][n].name} holds {dtype_name_of(array)}, but the model's input "
                                f"{value.name!r} is {value.dtype}")
            arrays[name] = array
        read[role] = arrays
    return read["input"], read["output"]


def dtype_name_of(array: np.ndarray) -> str:
    """detharness's dtype name of a stored array (``str`` for text, ``bytes`` for raw bytes)."""
    return "bytes" if array.dtype.kind == "S" else dtype_name(array.dtype)


def _tensor_from_bytes(data: bytes, path: Path) -> np.ndarray:
    """A ``.pb`` file's TensorProto as a numpy array; strings as ``str`` (UTF-8) or ``bytes``."""
    import onnx
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(data)
    except Exception as exc:
        raise CaseError(f"{display_path(path)} is not an ONNX TensorProto: {exc}") from exc
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        # to_array would open the named file wherever it is: test tensors must carry their data.
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        raise UsageError(f"{display_path(path)} keeps its data in an external file ({location!r}); refused")
    try:
        array = numpy_helper.to_array(tensor)
    except Exception as exc:
        raise CaseError(f"{display_path(path)}: cannot convert the tensor: {exc}") from exc
    if array.dtype.kind == "O":
        # ONNX strings come back as an object array (of str or bytes, by onnx version); detharness
        # stores no object arrays: text becomes str, bytes that are not UTF-8 stay bytes.
        items = list(array.ravel())
        try:
            text = [b.decode("utf-8") if isinstance(b, bytes) else str(b) for b in items]
            array = np.array(text, dtype=str).reshape(array.shape)
        except UnicodeDecodeError:
            raw = [b if isinstance(b, bytes) else str(b).encode("utf-8") for b in items]
            array = np.array(raw, dtype=bytes).reshape(array.shape)
    # Not np.ascontiguousarray: it turns a 0-d tensor (a stored scalar) into shape (1,).
    return np.require(array, requirements="C")


def _variant_dtype(model: _Model, inputs: dict[str, np.ndarray]) -> str:
    """The one dtype this test's variant can have: its float inputs' dtype, else the first input's."""
    names = [dtype_name_of(a) for a in inputs.values()]
    floats = sorted({n for n in names if n in FLOAT_DTYPES})
    if len(floats) > 1:
        # The runner casts every float input to the variant's dtype: this model cannot be fed as stored.
        raise CaseError(f"the model's float inputs have several dtypes ({', '.join(floats)}); "
                        "detharness feeds every float input at one dtype")
    if floats:
        return floats[0]
    if names:
        return names[0]
    declared = [v.dtype for v in model.outputs if v.dtype]
    return declared[0] if declared else "float32"


# -- paths -------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` resolves, links followed, to ``folder`` or below it."""
    target = Path(os.path.realpath(path))
    root = Path(os.path.realpath(folder))
    return target == root or root in target.parents


def _check_inside(path: Path, folder: Path) -> None:
    if not _inside(path, folder):
        raise UsageError(f"{display_path(path)} is a link to {os.path.realpath(path)!r}, outside its test folder; refused")


def _read_inside(path: Path, folder: Path) -> bytes:
    _check_inside(path, folder)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CaseError(f"cannot read {display_path(path)}: {exc}") from exc


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _id_part(text: str) -> str:
    """A folder path as case-id parts: characters ids cannot hold become ``_``."""
    parts = [_NOT_ID_CHAR.sub("_", part) for part in text.split("/") if part]
    return "/".join(parts)


__all__ = ["ONNX_TOLERANCE", "cases_for_test", "find_test_folders", "is_test_folder", "load_onnx_test_data"]
