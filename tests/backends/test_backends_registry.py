"""The registry and the Backend template's shared behaviour (names, outputs, supports, laziness)."""

from __future__ import annotations

import importlib.util
import json
from collections import namedtuple
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from detharness.backends import (
    BACKENDS,
    Backend,
    BackendInfo,
    UnsupportedVariant,
    VariantSpec,
    available_backends,
    get_backend,
    load_backend,
    register_backend,
    split_device,
)
from detharness.backends.base import jsonable
from detharness.errors import BackendError, UsageError


class MissingBackend(Backend):
    """A backend whose framework is not installed anywhere."""

    name = "missingfw"
    import_name = "detharness_no_such_framework"
    distributions = ("detharness-no-such-framework",)
    install_hint = "pip install detharness-no-such-framework"


@pytest.fixture
def missing() -> Iterator[Backend]:
    backend = register_backend(MissingBackend())
    yield backend
    del BACKENDS[backend.name]


def test_builtin_backends_are_registered_in_order() -> None:
    assert list(BACKENDS)[:4] == ["numpy", "torch", "onnxruntime", "jax"]
    assert available_backends()[:4] == ["numpy", "torch", "onnxruntime", "jax"]


def test_unknown_backend_is_a_backend_error_listing_known_names() -> None:
    with pytest.raises(BackendError) as info:
        get_backend("tensorflow")
    assert str(info.value) == "unknown backend 'tensorflow'; known: jax, numpy, onnxruntime, torch"
    assert isinstance(info.value, ValueError)
    assert info.value.exit_code == 2


def test_missing_framework_degrades_gracefully(missing: Backend) -> None:
    assert get_backend("missingfw") is missing
    assert "missingfw" not in available_backends()
    assert missing.describe() == {
        "name": "missingfw",
        "installed": False,
        "version": None,
        "install_hint": "pip install detharness-no-such-framework",
        "modes": ["eager"],
        "default_modes": ["eager"],
        "module_modes": [],
    }
    assert missing.supports(VariantSpec("cpu", "float32", "eager")) == (
        False,
        "missingfw is not installed (pip install detharness-no-such-framework)",
    )
    with pytest.raises(BackendError, match="not installed; install it with: pip install detharness-no-such"):
        get_backend("missingfw", require_installed=True)
    with pytest.raises(BackendError, match="not installed"):
        missing.load()


def test_duplicate_registration_names_both_places(missing: Backend) -> None:
    with pytest.raises(BackendError) as info:
        register_backend(MissingBackend())
    message = str(info.value)
    assert message.startswith("backend 'missingfw' is registered twice: MissingBackend at ")
    assert message.count("test_backends_registry.py:") == 2
    replacement = register_backend(MissingBackend(), replace=True)
    assert get_backend("missingfw") is replacement


@pytest.mark.parametrize("name", ["", "a:b", "x[1]", "two words"])
def test_backend_names_must_fit_in_a_variant_id(name: str) -> None:
    backend = MissingBackend()
    backend.name = name
    with pytest.raises(BackendError, match="must be non-empty"):
        register_backend(backend)


def test_describe_and_is_installed_import_no_framework(in_subprocess: Callable[..., Any]) -> None:
    found = in_subprocess(
        """
        import json, sys
        from detharness.backends import BACKENDS, available_backends, get_backend
        described = [b.describe() for b in BACKENDS.values()]
        installed = [b.is_installed() for b in BACKENDS.values()]
        available_backends(); get_backend("torch").modes_for(is_module=True)
        heavy = ("torch", "jax", "jaxlib", "onnxruntime", "onnx", "onnxscript")
        print(json.dumps({"imported": sorted(m for m in heavy if m in sys.modules),
                          "installed": installed, "names": [d["name"] for d in described]}))
        """
    )
    assert found == {
        "imported": [],
        "installed": [True, True, True, True],
        "names": ["numpy", "torch", "onnxruntime", "jax"],
    }


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cpu", ("cpu", None)), ("cuda", ("cuda", None)), ("cuda:1", ("cuda", 1))],
)
def test_split_device(device: str, expected: tuple[str, int | None]) -> None:
    assert split_device(device) == expected


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "tpu:0", ""])
def test_unknown_device_is_a_usage_error(device: str) -> None:
    with pytest.raises(UsageError, match="unknown device"):
        split_device(device)


Pair = namedtuple("Pair", ["mean", "std"])


@pytest.mark.parametrize(
    ("out", "names", "expected"),
    [
        ({"a": 1.0, "b": np.array([2.0])}, None, {"a": [1.0], "b": [2.0]}),
        (np.float32(3), None, {"y": [3.0]}),
        ((1.0, 2.0), None, {"y0": [1.0], "y1": [2.0]}),
        ([1.0, 2.0], ("lo", "hi"), {"lo": [1.0], "hi": [2.0]}),
        (5.0, ("z",), {"z": [5.0]}),
        (Pair(1.0, 2.0), None, {"mean": [1.0], "std": [2.0]}),
        ({"stats": (1.0, 2.0), "m": {"k": 3.0}}, None, {"stats.0": [1.0], "stats.1": [2.0], "m.k": [3.0]}),
    ],
    ids=["dict", "single", "tuple", "names", "single-named", "namedtuple", "nested"],
)
def test_outputs_are_named(out: Any, names: tuple[str, ...] | None, expected: dict[str, list[Any]]) -> None:
    got = get_backend("numpy").outputs_to_numpy(out, names=names)
    assert {k: np.atleast_1d(v).tolist() for k, v in got.items()} == expected
    assert all(isinstance(v, np.ndarray) for v in got.values())


def test_output_names_must_match_the_outputs() -> None:
    numpy = get_backend("numpy")
    with pytest.raises(ValueError, match="1 output names for 2 outputs"):
        numpy.outputs_to_numpy((1.0, 2.0), names=("y",))
    with pytest.raises(TypeError, match="output 'b' is None"):
        numpy.outputs_to_numpy({"a": 1.0, "b": None})


def test_supports_explains_why_not() -> None:
    numpy = get_backend("numpy")
    assert numpy.supports(VariantSpec("cpu", "bfloat16", "eager")) == (True, "")
    assert numpy.supports(VariantSpec("cuda", "float32", "eager")) == (False, "numpy sees no cuda device here")
    assert numpy.supports(VariantSpec("cpu", "float32", "jit")) == (False, "numpy has no mode 'jit' (modes: eager)")
    assert numpy.supports(VariantSpec("gpu", "float32", "eager"))[0] is False
    assert get_backend("onnxruntime").supports(VariantSpec("cpu", "float32", "opt:all", is_module=False)) == (
        False,
        "the opt:all mode needs a module builder, and this implementation is a plain function",
    )


def test_prepare_raises_unsupported_variant_with_the_reason() -> None:
    with pytest.raises(UnsupportedVariant) as info:
        get_backend("numpy").prepare(lambda x: x, VariantSpec("cuda", "float32", "eager"))
    assert info.value.reason == "numpy sees no cuda device here"


def test_modes_for_plain_functions_leave_out_module_modes() -> None:
    torch = get_backend("torch")
    assert torch.modes_for(is_module=True) == ("eager", "onnx")
    assert torch.modes_for(is_module=False) == ("eager",)


def test_run_seeds_calls_and_times() -> None:
    numpy = get_backend("numpy")
    call = numpy.prepare(lambda x: {"y": x + np.random.random()}, VariantSpec("cpu", "float64", "eager"))
    x = numpy.to_native(np.zeros(2), "cpu")
    first, seconds = numpy.run(call, [x], device="cpu", seed=7)
    again, _ = numpy.run(call, [x], device="cpu", seed=7)
    assert seconds >= 0
    assert np.array_equal(first["y"], again["y"])
    with pytest.raises(TypeError, match="seed must be an int"):
        numpy.seed(1.5)  # type: ignore[arg-type]


def test_jsonable_handles_what_fingerprints_hold() -> None:
    value = {"a": (1, np.int64(2)), "b": float("inf"), "c": float("nan"), "d": np.float32(0.5), "e": None}
    assert json.loads(json.dumps(jsonable(value))) == {"a": [1, 2], "b": "inf", "c": "nan", "d": 0.5, "e": None}


# -- the variant spec, the description, loading ---------------------------------------------------


def test_variant_spec_is_frozen_and_reads_the_device() -> None:
    spec = VariantSpec("cuda:1", "float32", "eager", is_module=True, variant_id="m/x[torch:cuda:1:float32:eager]")
    assert (spec.kind, spec.index) == ("cuda", 1)
    assert (VariantSpec("cpu", "float32", "eager").kind, VariantSpec("cpu", "float32", "eager").index) == ("cpu", None)
    assert VariantSpec("cpu", "float32", "eager") == VariantSpec(device="cpu", dtype="float32", mode="eager")
    assert VariantSpec("cpu", "float32", "eager").is_module is False
    with pytest.raises(AttributeError):
        spec.mode = "onnx"  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown device 'gpu'"):
        _ = VariantSpec("gpu", "float32", "eager").kind


def test_supports_and_prepare_take_a_variant_spec() -> None:
    numpy = get_backend("numpy")
    with pytest.raises(TypeError, match=r"Backend\.supports takes a VariantSpec\(device=\.\.\., .*not dict"):
        numpy.supports({"device": "cpu", "dtype": "float32", "mode": "eager"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Backend\.prepare takes a VariantSpec"):
        numpy.prepare(lambda x: x, "cpu")  # type: ignore[arg-type]


def test_info_describes_without_loading(missing: Backend) -> None:
    info = missing.info()
    assert info == BackendInfo(
        name="missingfw",
        installed=False,
        version=None,
        install_hint="pip install detharness-no-such-framework",
        modes=("eager",),
        default_modes=("eager",),
        module_modes=(),
    )
    assert missing.describe() == info.to_json()
    assert json.loads(json.dumps(get_backend("torch").describe()))["module_modes"] == ["onnx", "onnx:torchscript"]
    assert not missing.loaded


class Recording(Backend):
    """A backend over the json module that counts what loading and switching did."""

    name = "recording"
    import_name = "json"
    distributions = ()

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def _load_framework(self) -> None:
        self.calls.append("load")

    def _set_deterministic(self) -> None:
        self.calls.append("deterministic")

    def _read_switches(self) -> dict[str, Any]:
        return {"flag": self.deterministic, "recording.dotted": 1}


@pytest.fixture
def recording() -> Iterator[Recording]:
    backend = Recording()
    register_backend(backend)
    yield backend
    del BACKENDS[backend.name]


def test_load_backend_switches_loads_and_fingerprints(recording: Recording) -> None:
    backend, hello = load_backend("recording", True)
    assert backend is recording and backend.loaded and backend.deterministic
    assert hello["devices"] == ["cpu"]
    assert hello["fingerprint"] == {"recording.version": None, "recording.flag": True, "recording.dotted": 1}
    assert recording.calls == ["load", "deterministic", "deterministic"]
    numpy, hello = load_backend("numpy", False)
    assert numpy is get_backend("numpy") and hello["devices"] == ["cpu"]
    assert set(hello["fingerprint"]) == {"numpy.version", "ml_dtypes.version"}
    with pytest.raises(BackendError, match="unknown backend 'nothing'"):
        load_backend("nothing", False)


def test_reload_settings_puts_the_backends_own_settings_back(recording: Recording) -> None:
    recording.reload_settings()  # not loaded yet: loads
    assert recording.calls == ["load"]
    recording.reload_settings()
    assert recording.calls == ["load", "load"]
    recording.apply_switches(deterministic=True)
    recording.calls.clear()
    recording.reload_settings()
    assert recording.calls == ["load", "deterministic"]


def _pickled_modules(value: Any) -> set[str]:
    """The modules unpickling ``value`` imports (what the parent reads a worker's hello with)."""
    import io
    import pickle

    seen: set[str] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            seen.add(module)
            return super().find_class(module, name)

    Recorder(io.BytesIO(pickle.dumps(value))).load()
    return seen


def test_a_workers_hello_holds_plain_values_that_import_no_framework_where_it_is_read(recording: Recording) -> None:
    """torch.__version__ is a TorchVersion, a str subclass: sent as it is, reading the hello
    imported all of torch in the parent (about a second of CPU per run, per pytest-xdist worker)."""

    class Version(str):
        pass

    recording._fingerprint = lambda: {"recording.version": Version("2.0")}  # type: ignore[method-assign]
    _, hello = load_backend("recording", False)
    assert type(hello["fingerprint"]["recording.version"]) is str
    assert _pickled_modules(hello) <= {"builtins"}
    if importlib.util.find_spec("torch") is not None:
        _, hello = load_backend("torch", False)
        assert hello["fingerprint"]["torch.version"] and _pickled_modules(hello) <= {"builtins"}
