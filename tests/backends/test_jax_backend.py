"""The jax backend: transfers, jit and eager, float64 on, and the XLA_FLAGS order."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from detharness.backends import VariantSpec, get_backend
from detharness.backends.jax_backend import JaxBackend
from detharness.dtypes import ALL_DTYPES, numpy_dtype
from detharness.errors import BackendError

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


@pytest.fixture(scope="module")
def backend() -> Iterator[JaxBackend]:
    # Loading turns on jax_enable_x64 for the whole process: put it back for other test modules.
    before = bool(jax.config.jax_enable_x64)
    b = JaxBackend()
    b.apply_switches(deterministic=False)
    yield b
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip_is_bit_exact(backend: JaxBackend, name: str, sample: Callable[..., np.ndarray]) -> None:
    array = sample(name)
    native = backend.to_native(array, "cpu")
    assert isinstance(native, jax.Array)
    assert native.dtype == array.dtype  # float64 stays float64, uint64 stays uint64: x64 is on
    back = backend.to_numpy(native)
    assert back.dtype == array.dtype
    assert back.tobytes() == array.tobytes()


def test_every_bfloat16_bit_pattern_survives(backend: JaxBackend) -> None:
    bits = np.arange(2**16, dtype=np.uint16)
    back = backend.to_numpy(backend.to_native(bits.view(numpy_dtype("bfloat16"))))
    assert np.array_equal(back.view(np.uint16), bits)


def softmax(x: Any) -> dict[str, Any]:
    e = jnp.exp(x - x.max(-1, keepdims=True))
    return {"y": e / e.sum(-1, keepdims=True)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jit_and_eager_of_a_function(backend: JaxBackend, dtype: str) -> None:
    x_np = np.random.default_rng(0).standard_normal((4, 16)).astype(dtype)
    x = backend.to_native(x_np)
    outs = {}
    for mode in ("jit", "eager"):
        call = backend.prepare(softmax, VariantSpec("cpu", dtype, mode), [x])
        out, _ = backend.run(call, [x], device="cpu", seed=0)
        outs[mode] = backend.outputs_to_numpy(out)["y"]
        assert outs[mode].dtype == np.dtype(dtype)
        assert backend.run_info()["jax.mode"] == mode
    e = np.exp(x_np - x_np.max(-1, keepdims=True))
    np.testing.assert_allclose(outs["jit"], e / e.sum(-1, keepdims=True), rtol=1e-5 if dtype == "float32" else 1e-12)
    np.testing.assert_allclose(outs["jit"], outs["eager"], rtol=1e-5)


def test_jit_takes_params_as_arguments(backend: JaxBackend) -> None:
    def dense(x: Any, params: dict[str, Any]) -> Any:
        return x @ params["w"]

    w = backend.to_native(np.eye(3, dtype="float32") * 2)
    x = backend.to_native(np.ones((2, 3), dtype="float32"))
    call = backend.prepare(functools.partial(dense, params={"w": w}), VariantSpec("cpu", "float32", "jit"), [x])
    out, _ = backend.run(call, [x], device="cpu", seed=0)
    assert backend.outputs_to_numpy(out)["y"].tolist() == [[2.0, 2.0, 2.0]] * 2
    assert backend.run_info()["jax.compile_seconds"] >= 0


def test_builder_returns_a_closure(backend: JaxBackend) -> None:
    def build(params: dict[str, Any]) -> Callable[..., Any]:
        return lambda x: (x + params["b"], x * params["b"])

    b = backend.to_native(np.array([1.0, 2.0]))
    x = backend.to_native(np.array([3.0, 4.0]))
    call = backend.prepare(build({"b": b}), VariantSpec("cpu", "float64", "jit", is_module=True), [x])
    out = backend.outputs_to_numpy(call(x))
    assert {k: v.tolist() for k, v in out.items()} == {"y0": [4.0, 6.0], "y1": [3.0, 8.0]}


def test_fingerprint_and_switches(backend: JaxBackend) -> None:
    fp = backend.fingerprint()
    assert fp["jax.version"] == jax.__version__
    assert fp["jax.backend"] == "cpu"
    assert fp["jax.devices"] == ["cpu"] * len(jax.devices())
    assert fp["jax.x64"] is True
    assert "jaxlib.version" in fp
    assert json.loads(json.dumps(fp)) == fp
    switches = backend.switches()
    assert switches["jax.enable_x64"] is True
    assert get_backend("jax").supports(VariantSpec("cpu", "bfloat16", "jit")) == (True, "")


def test_deterministic_switches_before_load(in_subprocess: Callable[..., Any]) -> None:
    found = in_subprocess(
        """
        import json, os
        from detharness.backends import VariantSpec, get_backend
        switches = get_backend("jax").apply_switches(deterministic=True)
        print(json.dumps({"switches": switches, "flags": os.environ["XLA_FLAGS"]}))
        """,
        env={"XLA_FLAGS": "--xla_cpu_enable_fast_math=false --xla_gpu_deterministic_ops=false"},
    )
    assert found["flags"] == "--xla_cpu_enable_fast_math=false --xla_gpu_deterministic_ops=true"
    assert found["switches"] == {
        "jax.enable_x64": True,
        "jax.default_matmul_precision": "highest",
        "jax.xla_gpu_deterministic_ops": True,
        "jax.threefry_partitionable": True,
    }


def test_deterministic_after_xla_started_is_refused(in_subprocess: Callable[..., Any]) -> None:
    found = in_subprocess(
        """
        import json
        import jax
        jax.devices()
        from detharness.backends import VariantSpec, get_backend
        try:
            get_backend("jax").apply_switches(deterministic=True)
        except Exception as exc:
            print(json.dumps([type(exc).__name__, str(exc)]))
        """,
        unset=("XLA_FLAGS",),
    )
    assert found == [
        "BackendError",
        (
            "jax's XLA backend already started without --xla_gpu_deterministic_ops; "
            "call apply_switches(deterministic=True) before anything uses jax"
        ),
    ]


def test_not_deterministic_after_load_is_fine(backend: JaxBackend) -> None:
    # Nothing to set, so the order does not matter; the record still says what is in force.
    assert backend.apply_switches(deterministic=False)["jax.enable_x64"] is True
    if "--xla_gpu_deterministic_ops=true" in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("this process's XLA started with the flag already")
    with pytest.raises(BackendError):
        # This process's XLA started without the flag (the module fixture loaded jax).
        backend.apply_switches(deterministic=True)


def test_reload_settings_turns_x64_back_on(backend: JaxBackend) -> None:
    # What a test sharing the process may do after the backend loaded (the pytest plugin's case).
    jax.config.update("jax_enable_x64", False)
    backend.reload_settings()
    assert jax.config.jax_enable_x64 is True
    assert backend.to_native(np.ones(2)).dtype == np.float64
