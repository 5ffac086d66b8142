"""Where does it start: layers recorded with run --intermediates, stored in bundles, bisected with
detharness bisect (between two bundles and between two variants of one case), with real torch and
ONNX Runtime on a small deep model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, write_cases

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

# Six Linear+ReLU blocks; NUDGE=i moves one weight of block i up by one ULP. The weight it moves is
# 1.0 (the others ~0.17), so one ULP of it (1.2e-7) shows in that layer's output.
DEEP = """
    import os

    import numpy as np

    from detharness import case

    def _params(rng):
        out = {}
        for i in range(6):
            w = (rng.standard_normal((32, 32)) / 6).astype("float32")
            w[0, 0] = 1.0
            out[f"w{i}"] = w
        return out

    c = case("deep/stack", inputs=lambda rng: {"x": rng.standard_normal((16, 32)).astype("float32")},
             params=_params, tolerance="scaled(1e-5)")

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x, params):
        for i in range(6):
            x = np.maximum(x @ params[f"w{i}"].T, 0)
        return {"y": x}

    @c.impl("torch", backend="torch", module=True, dtypes=("float32",), devices=("cpu",), modes=("eager", "onnx"))
    def _(params):
        import torch

        blocks = []
        for i in range(6):
            lin = torch.nn.Linear(32, 32, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.asarray(params[f"w{i}"], dtype=np.float32)))
                if os.environ.get("NUDGE") == str(i):
                    lin.weight[0, 0] = torch.nextafter(lin.weight[0, 0], torch.tensor(float("inf")))
            blocks += [lin, torch.nn.ReLU()]
        return torch.nn.Sequential(*blocks)
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A baseline and a candidate whose block 2 (module '4') has one weight 1 ULP up; the
    candidate replays the baseline's inputs, so its layers are also re-run on the baseline's."""
    folder = tmp_path_factory.mktemp("bisect")
    cases = write_cases(folder, DEEP)
    a, b = folder / "A", folder / "B"
    done = run_cli("run", "--cases", str(cases), "--out", str(a), "--intermediates", "--in-process", cwd=folder)
    assert done.returncode == 0, done.stderr
    done = run_cli("run", "--cases", str(cases), "--out", str(b), "--intermediates", "--inputs-from", str(a),
                   "--in-process", env={"NUDGE": "2"}, cwd=folder)
    assert done.returncode == 0, done.stderr
    return cases, a, b


def _bisect(*args: str, cwd: Path) -> tuple[int, dict[str, Any]]:
    done = run_cli("bisect", *args, "--format", "json", cwd=cwd)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_bisect_names_the_layer_whose_weight_moved_and_the_error_it_introduced(bundles: tuple[Path, Path, Path]
                                                                              ) -> None:
    cases, a, b = bundles
    # One run gives both: the text on stdout and the JSON report (each bisect re-runs the layers).
    done = run_cli("bisect", str(a), str(b), "--report", str(cases.parent / "bisect.json"), cwd=cases.parent)
    code, report, text = done.returncode, json.loads((cases.parent / "bisect.json").read_text()), done.stdout
    by_variant = {r["variant"]: r for r in report["results"]}
    eager = by_variant["deep/stack[torch:cpu:float32:eager]"]["first_divergence"]
    assert eager["layer"] == "4" and eager["layer_index"] == 4  # named_modules(): the third Linear
    assert eager["max_ulp"] > 0 and eager["status"] == "close"
    # Shadow mode: re-run on the baseline's input to it, the layer makes the error itself.
    assert eager["introduced_scaled"] not in (None, 0) and eager["inherited_scaled"] == 0
    assert [row["status"] for row in eager["curve"][:4]] == ["identical"] * 4
    # The ONNX export's layers carry the torch module names: the same layer is named.
    assert by_variant["deep/stack[torch:cpu:float32:onnx]"]["first_divergence"]["layer"] == "4"
    assert code == 0, done.stderr
    assert "deep/stack[torch:cpu:float32:eager]: first differs at '4' (layer 5 of 12)" in text
    assert ", introduced " in text and ", inherited 0;" in text


def test_layers_are_stored_content_addressed_and_named_in_the_manifest(bundles: tuple[Path, Path, Path]) -> None:
    _, a, _ = bundles
    manifest = json.loads((a / "manifest.json").read_text())
    layers = manifest["variants"]["deep/stack[torch:cpu:float32:eager]"]["intermediates"]["layers"]
    assert [entry["name"] for entry in layers] == [str(i) for i in range(12)]
    assert set(layers[0]) >= {"name", "index", "dtype", "shape", "sha256", "array"}
    assert layers[0]["shape"] == [16, 32] and layers[0]["dtype"] == "float32"
    files = {entry["array"]["file"] for entry in layers}
    assert all((a / f).exists() for f in files)
    # A layer's input is the previous layer's output: stored once.
    inputs = manifest["variants"]["deep/stack[torch:cpu:float32:eager]"]["intermediates"]["inputs"]
    assert inputs["1|0"]["sha256"] == layers[0]["sha256"]
    numpy_variant = manifest["variants"]["deep/stack[numpy:cpu:float64:eager]"]
    assert numpy_variant["intermediates"] is None  # a plain function has no layers


def test_bisect_between_two_variants_of_one_case_runs_them_here(bundles: tuple[Path, Path, Path]) -> None:
    cases, _, _ = bundles
    code, report = _bisect("--cases", str(cases), "--variant", "deep/stack[torch:cpu:float32:onnx]",
                           "--against", "deep/stack[torch:cpu:float32:eager]", cwd=cases.parent)
    assert code == 0 and report["results"][0]["candidate"] == "deep/stack[torch:cpu:float32:onnx]"
    assert report["bisected"] == {"deep/stack[torch:cpu:float32:onnx]": 12}


@pytest.mark.parametrize(("args", "message"), [
    (["only-one"], "bisect: give two bundles, BASELINE CANDIDATE"),
    (["--variant", "a/b[x:cpu:float32:eager]"], "bisect: give BASELINE CANDIDATE bundles, or --variant ID --against ID"),
    (["--variant", "a/b[x:cpu:float32:eager]", "--against", "c/d[x:cpu:float32:eager]"],
     "bisect: --variant and --against must be variants of one case"),
])
def test_bad_bisect_usage_is_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    done = run_cli("bisect", *args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(f"detharness: error: {message}"), done.stderr
    assert done.stderr.count("\n") == 1


def test_bundles_without_layers_are_refused(tmp_path: Path) -> None:
    cases = write_cases(tmp_path, DEEP)
    plain = tmp_path / "plain"
    assert run_cli("run", "--cases", str(cases), "--out", str(plain), "-k", "numpy", "--in-process").returncode == 0
    done = run_cli("bisect", str(plain), str(plain), cwd=tmp_path)
    assert done.returncode == 2
    assert "no variant has recorded layers in both bundles (run them with --intermediates)" in done.stderr


JAX_SCOPED = """
    import numpy as np

    from detharness import case

    c = case("jx/two_blocks", inputs=lambda rng: {"x": rng.standard_normal((8, 16)).astype("float32")},
             params=lambda rng: {"w": (rng.standard_normal((16, 16)) / 4).astype("float32")}, intermediates=True)

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x, params):
        return {"y": np.tanh(np.tanh(x @ params["w"]) @ params["w"])}

    @c.impl("jax", backend="jax", module=True, dtypes=("float32",), devices=("cpu",))
    def _(params):
        import jax
        import jax.numpy as jnp

        def model(x):
            with jax.named_scope("block0"):
                h = jnp.tanh(x @ params["w"])
            with jax.named_scope("block1"):
                return jnp.tanh(h @ params["w"])

        return model
"""


def test_a_case_asks_for_its_layers_and_jax_names_them_by_scope(tmp_path: Path) -> None:
    pytest.importorskip("jax")
    cases = write_cases(tmp_path, JAX_SCOPED)
    out = tmp_path / "J"
    done = run_cli("run", "--cases", str(cases), "--out", str(out), "--in-process", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    entry = json.loads((out / "manifest.json").read_text())["variants"]["jx/two_blocks[jax:cpu:float32:jit]"]
    names = [layer["name"] for layer in entry["intermediates"]["layers"]]
    assert names == ["block0", "block1"]
    info = entry["intermediates"]["info"]
    assert info["kind"] == "jax"
    # Op by op, jax may round otherwise than jit: the capture says which it was, never silently.
    assert info["approximate"] is not None
    assert info["approximate"] == any("approximate" in note for note in info["notes"])
