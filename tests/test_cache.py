"""The persistent cache of prepared artefacts: keys, verification, LRU, and the runs that use it."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from detharness import cache
from detharness import record as record_mod
from detharness.cli import main
from tests.conftest import write_cases

LINEAR_CASES = """
    from detharness import case

    c = case("tiny/linear", inputs=lambda rng: {"x": rng.standard_normal((2, 4)).astype("float32")})


    @c.impl("torch", backend="torch", module=True, dtypes=("float32",), devices=("cpu",), modes=("eager", "onnx"))
    def _(params):
        import torch

        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)
"""

JAX_CASES = """
    from detharness import case

    c = case("tiny/jaxsum", inputs=lambda rng: {"x": rng.standard_normal((3, 4)).astype("float32")})


    @c.impl("jax", backend="jax", dtypes=("float32",), devices=("cpu",), modes=("jit",))
    def _(x):
        return {"y": (x * 2.0).sum(axis=0)}
"""


NUMPY_CASES = """
    from detharness import case

    c = case("tiny/scale", inputs=lambda rng: {"x": rng.standard_normal(4)})


    @c.impl("numpy", backend="numpy")
    def _(x):
        return {"y": x * 2.0}
"""


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv("DETHARNESS_CACHE_DIR", str(folder))
    monkeypatch.delenv(cache.NO_CACHE_VARIABLE, raising=False)
    monkeypatch.delenv(cache.MAX_BYTES_VARIABLE, raising=False)
    return folder


def _entry_file(kind: str, key: str) -> Path:
    return cache.folder() / "exports" / kind / key


# -- the store ------------------------------------------------------------------------------------


def test_folder_follows_the_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache.folder() == tmp_path / "cache"
    monkeypatch.delenv("DETHARNESS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.folder() == tmp_path / "xdg" / "detharness"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache.folder() == Path(os.path.expanduser("~")) / ".cache" / "detharness"


def test_key_is_canonical() -> None:
    assert cache.key({"a": 1, "b": [1, 2]}) == cache.key({"b": [1, 2], "a": 1})
    assert cache.key({"a": 1}) != cache.key({"a": 2})
    assert len(cache.key({})) == 64


def test_put_get_and_a_corrupt_or_foreign_entry_is_a_miss() -> None:
    k = cache.key({"x": 1})
    assert cache.get("onnx_export", k) is None
    cache.put("onnx_export", k, b"exported bytes")
    assert cache.get("onnx_export", k) == b"exported bytes"
    path = _entry_file("onnx_export", k)
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01  # one flipped bit of the content
    path.write_bytes(bytes(blob))
    assert cache.get("onnx_export", k) is None
    assert not path.exists()  # removed, never trusted
    # A valid entry copied under another key is foreign: its header names its own key.
    cache.put("onnx_export", k, b"exported bytes")
    other = cache.key({"x": 2})
    _entry_file("onnx_export", other).write_bytes(path.read_bytes())
    assert cache.get("onnx_export", other) is None
    # Cut short, or not ours at all.
    path.write_bytes(b"DHC")
    assert cache.get("onnx_export", k) is None
    with pytest.raises(ValueError):
        cache.get("onnx_export", "../../etc/passwd")


def test_lru_eviction_under_a_tiny_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = [cache.key({"n": n}) for n in range(4)]
    entry_size = 8 + 64 + 32 + 100
    monkeypatch.setenv(cache.MAX_BYTES_VARIABLE, str(3 * entry_size))
    for n, k in enumerate(keys[:3]):
        cache.put("onnx_export", k, bytes([n]) * 100)
        os.utime(_entry_file("onnx_export", k), (1000.0 + n, 1000.0 + n))
    assert cache.get("onnx_export", keys[0]) is not None  # used last: the others are older now
    cache.put("onnx_export", keys[3], b"\xff" * 100)
    present = [cache.get("onnx_export", k) is not None for k in keys]
    assert present == [True, False, True, True]
    assert cache.info()["entries"] == 3


def test_info_and_clear_on_the_command_line() -> None:
    cache.put("onnx_export", cache.key({"n": 1}), b"x" * 10)
    out = io.StringIO()
    assert main(["cache", "info", "--json"], out=out) == 0
    found = json.loads(out.getvalue())
    assert found["entries"] == 1 and found["folder"] == str(cache.folder()) and found["bytes"] > 10
    out = io.StringIO()
    assert main(["cache", "info"], out=out) == 0
    assert str(cache.folder()) in out.getvalue() and "entries: 1" in out.getvalue()
    assert main(["cache", "clear"], out=io.StringIO()) == 0
    assert cache.info()["entries"] == 0


@given(count=st.integers(min_value=1, max_value=10**6),
       unit=st.sampled_from(["", "B", "k", "kB", "K", "M", "MB", "G", "GB", "T", "Ki", "KiB", "Mi", "MiB", "gi", "GiB",
                             "Ti", "TiB"]),
       space=st.sampled_from(["", " "]))
def test_a_size_is_bytes_or_a_number_with_a_decimal_or_binary_unit(count: int, unit: str, space: str) -> None:
    letter, base = unit[:1].lower(), 1024 if unit[1:2].lower() == "i" else 1000
    scale = 1 if letter in ("", "b") else base ** ("kmgt".index(letter) + 1)
    assert cache.parse_size(f"{count}{space}{unit}") == count * scale


@pytest.mark.parametrize("text", ["abc", "2X", "-5", "0", "0.1", "1e9", "2 G B", "GiB", "1,000", "½G"])
def test_a_size_cap_it_cannot_read_is_refused_with_one_line_before_anything_runs(text: str, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError):
        cache.parse_size(text)
    monkeypatch.setenv(cache.MAX_BYTES_VARIABLE, text)
    cases = write_cases(tmp_path / "cases", NUMPY_CASES)
    for argv in (["run", "--cases", str(cases), "--out", str(tmp_path / "out")], ["cache", "info"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(argv, out=io.StringIO()) == 2
        lines = err.getvalue().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"detharness: error: {cache.MAX_BYTES_VARIABLE}: "), lines
    assert not (tmp_path / "out").exists()


def test_an_unreadable_cap_does_not_matter_with_the_cache_off_nor_to_clear_it(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.MAX_BYTES_VARIABLE, " ")
    assert cache.max_bytes() == cache.DEFAULT_MAX_BYTES  # blank: the default
    cache.put("onnx_export", cache.key({"n": 1}), b"x")
    monkeypatch.setenv(cache.MAX_BYTES_VARIABLE, "2X")
    cases = write_cases(tmp_path / "cases", NUMPY_CASES)
    assert main(["run", "--cases", str(cases), "--out", str(tmp_path / "off"), "--no-cache"], out=io.StringIO()) == 0
    assert main(["cache", "clear"], out=io.StringIO()) == 0
    monkeypatch.delenv(cache.MAX_BYTES_VARIABLE)
    assert cache.info()["entries"] == 0


def test_the_size_cap_takes_a_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cache.MAX_BYTES_VARIABLE, "1.5GiB")
    assert cache.max_bytes() == 3 * 2**29
    out = io.StringIO()
    assert main(["cache", "info"], out=out) == 0
    assert "of 1.5 GiB" in out.getvalue()


# -- the key of an ONNX export ------------------------------------------------------------------


def _export_key(module: Any, **kwargs: Any) -> str:
    import torch

    from detharness.backends.torch_backend import TorchBackend

    backend = TorchBackend()
    return cache.key(backend.onnx_export_key(module, (torch.zeros(2, 4),), "dynamo", **kwargs))


def test_export_key_follows_parameters_attributes_opset_and_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    base = _export_key(module)
    assert _export_key(module) == base
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=true")  # a torch export cannot see it
    assert _export_key(module) == base
    assert _export_key(module, opset=17) != base
    with torch.no_grad():
        module[0].weight[0, 0] += 1e-6
    changed = _export_key(module)
    assert changed != base
    module[1].eps = 1e-3  # a plain attribute a builder may set
    assert _export_key(module) != changed
    current = _export_key(module)
    other = "DEFAULT" if torch.backends.cpu.get_cpu_capability() != "DEFAULT" else "AVX2"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: other)
    assert _export_key(module) != current


def test_export_key_follows_the_module_class_source_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "user_model.py"
    text = "import torch\n\nclass Scaled(torch.nn.Module):\n    def forward(self, x):\n        return x * {}\n"
    keys = []
    for factor in (2, 3):
        source.write_text(text.format(factor))
        os.utime(source, (time.time() + factor, time.time() + factor))
        spec = importlib.util.spec_from_file_location(f"user_model_{factor}", source)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, module)
        spec.loader.exec_module(module)
        keys.append(_export_key(module.Scaled()))
    assert keys[0] != keys[1]


# -- runs -----------------------------------------------------------------------------------------


def _run_in_process(cases: Path, out: Path, *extra: str) -> record_mod.RunRecord:
    assert main(["run", "--cases", str(cases), "--in-process", "--out", str(out), *extra], out=io.StringIO()) == 0
    return record_mod.load(out)


ONNX_ID = "tiny/linear[torch:cpu:float32:onnx]"


def test_cached_uncached_and_corrupt_runs_give_identical_bundles(tmp_path: Path) -> None:
    cases = write_cases(tmp_path / "cases", LINEAR_CASES)
    first = _run_in_process(cases, tmp_path / "first")
    second = _run_in_process(cases, tmp_path / "second")
    assert first.variants[ONNX_ID].cache == {"onnx_export": "miss"}
    assert second.variants[ONNX_ID].cache == {"onnx_export": "hit"}
    assert "cache" not in second.variants[ONNX_ID].info
    assert first.environment_id == second.environment_id
    # A flipped byte: rebuilt (a miss), and stored again valid.
    (entry,) = (cache.folder() / "exports" / "onnx_export").iterdir()
    blob = bytearray(entry.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    entry.write_bytes(bytes(blob))
    rebuilt = _run_in_process(cases, tmp_path / "rebuilt")
    assert rebuilt.variants[ONNX_ID].cache == {"onnx_export": "miss"}
    assert cache.get("onnx_export", entry.name) is not None
    uncached = _run_in_process(cases, tmp_path / "uncached", "--no-cache")
    assert uncached.variants[ONNX_ID].cache == {"onnx_export": "off"}
    assert uncached.environment_id == second.environment_id
    for other in (first, rebuilt, uncached):
        for vid, v in second.variants.items():
            assert other.variants[vid].status == v.status
            assert set(other.variants[vid].outputs) == set(v.outputs)
            for name, array in v.outputs.items():
                assert other.variants[vid].outputs[name].tobytes() == array.tobytes()
    out = io.StringIO()
    main(["compare", str(tmp_path / "uncached"), str(tmp_path / "second"), "--format", "json"], out=out)
    results = json.loads(out.getvalue())["results"]
    assert results and all(r["status"] == "identical" for r in results)


def test_a_folder_that_cannot_keep_the_exports_costs_the_reuse_and_says_so(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("DETHARNESS_CACHE_DIR", str(blocker / "cache"))
    assert cache.unwritable() == f"{blocker} is not a folder"
    cases = write_cases(tmp_path / "cases", LINEAR_CASES)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        record = _run_in_process(cases, tmp_path / "out")  # the run is whole: exit 0, every variant ok
    assert record.variants[ONNX_ID].cache == {"onnx_export": "miss"}
    assert all(v.status == "ok" for v in record.variants.values() if ":cpu:" in v.id)
    warnings = [line for line in err.getvalue().splitlines() if "warning" in line]
    assert warnings == [f"detharness run: warning: 1 ONNX export(s) were not kept in the cache: {blocker} is not a "
                        "folder (DETHARNESS_CACHE_DIR chooses the folder)"]
    out = io.StringIO()
    assert main(["cache", "info"], out=out) == 0
    assert f"(cannot be written: {blocker} is not a folder)" in out.getvalue().splitlines()[0]
    monkeypatch.setenv("DETHARNESS_CACHE_DIR", str(tmp_path / "not-made-yet" / "cache"))
    assert cache.unwritable() is None  # made when the first entry is put


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    full = {**os.environ, **(env or {})}
    full.pop("CI", None)
    return subprocess.Popen([sys.executable, "-m", "detharness", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)


def _finish(proc: subprocess.Popen[str]) -> None:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stdout + stderr


def test_cpu_capability_misses_and_jax_compiles_go_into_the_cache(tmp_path: Path) -> None:
    import torch

    cases = write_cases(tmp_path / "cases", LINEAR_CASES)
    jax_cases = write_cases(tmp_path / "jax_cases", JAX_CASES)
    have_jax = importlib.util.find_spec("jax") is not None
    first = _cli("run", "--cases", str(cases), "--out", str(tmp_path / "first"))
    jax_runs = []
    if have_jax:
        jax_runs = [_cli("run", "--cases", str(jax_cases), "--out", str(tmp_path / "jax_on")),
                    _cli("run", "--cases", str(jax_cases), "--out", str(tmp_path / "jax_off"), "--no-cache")]
    _finish(first)
    # The same run again would hit (test_cached_uncached_and_corrupt_runs_give_identical_bundles
    # shows it); under another CPU capability the export it finds is not its own.
    generic = _cli("run", "--cases", str(cases), "--out", str(tmp_path / "generic"),
                   env={"ATEN_CPU_CAPABILITY": "default"})
    for proc in (generic, *jax_runs):
        _finish(proc)
    assert record_mod.load(tmp_path / "first").variants[ONNX_ID].cache == {"onnx_export": "miss"}
    generic_record = record_mod.load(tmp_path / "generic")
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        assert generic_record.environment["torch.cpu_capability"] == "DEFAULT"
        assert generic_record.variants[ONNX_ID].cache == {"onnx_export": "miss"}
    if have_jax:
        jid = "tiny/jaxsum[jax:cpu:float32:jit]"
        assert record_mod.load(tmp_path / "jax_on").variants[jid].cache == {"jax_compile": "on"}
        assert record_mod.load(tmp_path / "jax_off").variants[jid].cache == {"jax_compile": "off"}
        assert cache.info()["jax"]["files"] > 0  # a tiny program is kept too (min compile time 0)
