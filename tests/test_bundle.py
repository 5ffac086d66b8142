"""Tests for detharness.bundle: lossless round trips, dedup, concurrent writers, and refusing bad bundles."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import multiprocessing
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detharness import bundle as bundle_module
from detharness._io import atomic_write_text, json_dumps, to_jsonable
from detharness.bundle import SCHEMA, Bundle, BundleWriter, iter_array_refs
from detharness.dtypes import ALL_DTYPES, numpy_dtype
from detharness.errors import BundleError, DtypeError

# --- helpers -----------------------------------------------------------------------------------


def sample_array(name: str) -> np.ndarray:
    """A small 2-D array of dtype ``name`` with the awkward values that dtype can hold."""
    dtype = numpy_dtype(name)
    if name == "bool":
        return np.array([[True, False, True], [False, False, True]])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.array([[info.min, -1 if info.min else 0, 0], [1, 7, info.max]], dtype=dtype)
    if dtype.kind == "c":
        return np.array([[1 + 2j, complex(np.inf, -0.0), complex(np.nan, 1)], [0, -3.5j, 1e-30]], dtype=dtype)
    # floats, bfloat16 included: NaN, both infinities, -0 and a subnormal-ish tiny value
    values = np.array([[np.nan, np.inf, -np.inf], [-0.0, 1.0 / 3.0, 1e-40]], dtype=np.float64)
    return values.astype(dtype)


def bits(array: np.ndarray) -> bytes:
    """The bytes of ``array`` in C order and native byte order: equality that NaN cannot fool."""
    return np.ascontiguousarray(array).tobytes()


def snapshot(directory: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``directory`` (symlinks not followed) with its size, mtime and content hash."""
    entries: dict[str, tuple[Any, ...]] = {}
    for root, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            full = Path(root, name)
            info = os.lstat(full)
            digest = hashlib.sha256(full.read_bytes()).hexdigest() if full.is_file() and not full.is_symlink() else None
            entries[str(full.relative_to(directory))] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return entries


def write_bundle(path: Path, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """A valid bundle at ``path`` whose manifest holds ``{"outputs": {name: ref}}``; returns the manifest."""
    writer = BundleWriter(path)
    if arrays is None:
        arrays = {"y": np.arange(8, dtype=np.float32)}
    manifest = {"outputs": {name: writer.put_array(array) for name, array in arrays.items()}}
    writer.write_manifest(manifest)
    written: dict[str, Any] = json.loads((path / "manifest.json").read_text())
    return written


def rewrite_manifest(path: Path, manifest: Any) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


def assert_refused(path: Path, message: str, *, watch: Path | None = None) -> None:
    """Opening ``path`` raises BundleError with exactly ``message``, and nothing under ``watch`` changes."""
    watch = watch or path.parent
    before = snapshot(watch)
    with pytest.raises(BundleError) as raised:
        Bundle.open(path)
    assert str(raised.value) == message
    assert "\n" not in str(raised.value)
    assert snapshot(watch) == before


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    return tmp_path / "bundle"


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_DTYPES)
def test_round_trip_every_dtype(bundle_dir: Path, name: str) -> None:
    array = sample_array(name)
    writer = BundleWriter(bundle_dir)
    ref = writer.put_array(array)
    assert ref == {
        "format": "raw",
        "dtype": name,
        "shape": [2, 3],
        "sha256": hashlib.sha256(bits(array)).hexdigest(),
        "file": f"arrays/{ref['sha256']}.bin",
        "nbytes": array.nbytes,
    }
    writer.write_manifest({"outputs": {"y": ref}})
    loaded = Bundle.open(bundle_dir).array(ref)
    assert loaded.dtype == numpy_dtype(name)
    assert loaded.shape == (2, 3)
    assert bits(loaded) == bits(array)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2)], ids=["0-d", "empty", "empty-3d"])
@pytest.mark.parametrize("name", ["float32", "bfloat16", "bool"])
def test_round_trip_0d_and_empty(bundle_dir: Path, shape: tuple[int, ...], name: str) -> None:
    array = np.ones(shape, dtype=numpy_dtype(name))
    writer = BundleWriter(bundle_dir)
    ref = writer.put_array(array)
    writer.write_manifest({"y": ref})
    loaded = Bundle.open(bundle_dir).array(ref)
    assert loaded.shape == shape and loaded.dtype == array.dtype
    assert bits(loaded) == bits(array)


def test_bfloat16_and_float16_keep_every_bit_pattern(bundle_dir: Path) -> None:
    writer = BundleWriter(bundle_dir)
    every_pattern = np.arange(1 << 16, dtype=np.uint16)
    refs = {name: writer.put_array(every_pattern.view(numpy_dtype(name))) for name in ("bfloat16", "float16")}
    writer.write_manifest(refs)
    bundle = Bundle.open(bundle_dir)
    for name, ref in refs.items():
        loaded = bundle.array(ref)
        assert loaded.dtype == numpy_dtype(name)
        np.testing.assert_array_equal(loaded.view(np.uint16), every_pattern)


def test_non_contiguous_input_is_stored_in_c_order(bundle_dir: Path) -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    writer = BundleWriter(bundle_dir)
    for array in (base[::2, 1::2], base.T, np.asfortranarray(base)):
        ref = writer.put_array(array)
        assert ref["sha256"] == hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()
        writer.write_manifest({"y": ref})
        np.testing.assert_array_equal(Bundle.open(bundle_dir).array(ref), array)


@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8", ">i2", ">u4", ">i8", ">c8", ">c16"])
def test_big_endian_input_is_stored_little_endian(bundle_dir: Path, dtype: str) -> None:
    big = np.array([[1.5, -2.0], [3.25, 100.0]]).astype(dtype)
    little = big.astype(np.dtype(dtype).newbyteorder("<"))
    writer = BundleWriter(bundle_dir)
    ref = writer.put_array(big)
    assert ref == writer.put_array(little)
    assert (bundle_dir / ref["file"]).read_bytes() == little.tobytes()
    writer.write_manifest({"y": ref})
    loaded = Bundle.open(bundle_dir).array(ref)
    assert loaded.dtype.isnative
    np.testing.assert_array_equal(loaded, big)


@pytest.mark.parametrize(
    "array",
    [np.array(["", "a", "héllo", "𝄞 clef"]), np.array([b"", b"\x00\xffab", b"xyz"]), np.array([["ab"], ["c"]])],
    ids=["unicode", "bytes", "2d"],
)
def test_round_trip_strings_with_their_exact_numpy_dtype(bundle_dir: Path, array: np.ndarray) -> None:
    writer = BundleWriter(bundle_dir)
    ref = writer.put_array(array)
    assert ref["dtype"] == "str"
    expected_numpy_dtype = array.dtype.newbyteorder("<").str if array.dtype.kind == "U" else array.dtype.str
    assert ref["numpy_dtype"] == expected_numpy_dtype
    writer.write_manifest({"y": ref})
    loaded = Bundle.open(bundle_dir).array(ref)
    assert loaded.dtype == array.dtype
    np.testing.assert_array_equal(loaded, array)


def test_loaded_arrays_are_read_only(bundle_dir: Path) -> None:
    write_bundle(bundle_dir)
    bundle = Bundle.open(bundle_dir)
    loaded = bundle.array(bundle.manifest["outputs"]["y"])
    with pytest.raises(ValueError, match="read-only"):
        loaded[0] = 1


_ROUND_TRIP_DTYPES = [name for name in ALL_DTYPES] + ["<U3", "S5"]


@st.composite
def stored_arrays(draw: st.DrawFn) -> np.ndarray:
    name = draw(st.sampled_from(_ROUND_TRIP_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    if name in ("<U3", "S5"):
        array = draw(hnp.arrays(np.dtype(name), shape))
    elif name == "bool":
        array = draw(hnp.arrays(np.bool_, shape))
    else:
        # Arbitrary bytes: every NaN payload, subnormal and signed zero a dtype can hold.
        dtype = numpy_dtype(name)
        count = int(np.prod(shape))
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
        array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    layout = draw(st.sampled_from(["c", "fortran", "big-endian"]))
    if layout == "fortran":
        array = np.asfortranarray(array)
    elif layout == "big-endian" and name != "bfloat16" and array.dtype.itemsize > 1 and array.dtype.kind != "S":
        array = array.astype(array.dtype.newbyteorder(">"))
    return array


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored_arrays())
def test_write_read_round_trip_property(array: np.ndarray) -> None:
    with tempfile.TemporaryDirectory() as directory:
        writer = BundleWriter(directory)
        ref = writer.put_array(array)
        writer.write_manifest({"y": ref})
        loaded = Bundle.open(directory).array(ref)
    native = array.astype(array.dtype.newbyteorder("="))
    assert loaded.dtype == native.dtype
    assert loaded.shape == array.shape
    assert bits(loaded) == bits(native)


# --- writing -----------------------------------------------------------------------------------


def test_equal_arrays_are_stored_once_and_not_rewritten(bundle_dir: Path) -> None:
    writer = BundleWriter(bundle_dir)
    first = writer.put_array(np.arange(10, dtype=np.int32))
    stored = bundle_dir / first["file"]
    before = os.stat(stored)
    second = writer.put_array(np.arange(10, dtype=np.int32)[::-1][::-1])
    assert second == first
    after = os.stat(stored)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    # the same bytes as another dtype share the file; the refs differ in dtype only
    as_float = writer.put_array(np.arange(10, dtype=np.int32).view(np.float32))
    assert as_float["file"] == first["file"] and as_float["dtype"] == "float32"
    assert os.listdir(bundle_dir / "arrays") == [stored.name]


def test_object_arrays_are_refused_on_write(bundle_dir: Path) -> None:
    writer = BundleWriter(bundle_dir)
    with pytest.raises(DtypeError) as raised:
        writer.put_array(np.array([{"a": 1}, None], dtype=object))
    assert str(raised.value) == (
        "object arrays cannot be stored in a bundle: they would need pickle; "
        "convert to a numeric, bool or fixed-width string dtype first"
    )
    assert os.listdir(bundle_dir / "arrays") == []


def test_unsupported_dtypes_are_refused_on_write(bundle_dir: Path) -> None:
    with pytest.raises(DtypeError, match=r"^cannot store a datetime64\[s\] array in a bundle: "):
        BundleWriter(bundle_dir).put_array(np.array(["2024-01-01"], dtype="datetime64[s]"))


def test_manifest_gets_the_envelope_and_the_json_rule(bundle_dir: Path) -> None:
    writer = BundleWriter(bundle_dir)
    writer.write_manifest({"created": "2024-01-01T00:00:00Z", "max_ulp": np.float32(np.inf), "n": np.int64(3)})
    text = (bundle_dir / "manifest.json").read_text()
    assert json.loads(text) == {
        "tool": "detharness",
        "schema": SCHEMA,
        "created": "2024-01-01T00:00:00Z",
        "max_ulp": "inf",
        "n": 3,
    }
    assert Bundle.open(bundle_dir).manifest["schema"] == SCHEMA


def test_manifest_with_a_ref_to_a_missing_array_is_not_written(bundle_dir: Path, tmp_path: Path) -> None:
    ref = BundleWriter(tmp_path / "elsewhere").put_array(np.zeros(3))
    writer = BundleWriter(bundle_dir)
    with pytest.raises(BundleError) as raised:
        writer.write_manifest({"inputs": {"x": ref}})
    assert str(raised.value) == f"bundle {bundle_dir}: inputs/x: array file {ref['file']!r} is missing"
    assert not (bundle_dir / "manifest.json").exists()


def test_foreign_tool_in_manifest_is_refused_on_write(bundle_dir: Path) -> None:
    with pytest.raises(BundleError) as raised:
        BundleWriter(bundle_dir).write_manifest({"tool": "other"})
    assert str(raised.value) == f"bundle {bundle_dir}: manifest tool must be 'detharness', got 'other'"


def test_parts_are_written_and_read_back_in_name_order(bundle_dir: Path) -> None:
    worker = BundleWriter(bundle_dir, part_name="gw1")
    worker.write_part(None, {"who": "gw1", "loss": float("nan")})
    BundleWriter(bundle_dir).write_part("gw0", {"who": "gw0"})
    (bundle_dir / "parts" / ".gw2.json.0123.tmp").write_text("{half")  # a crashed writer's temp file
    assert BundleWriter(bundle_dir).read_parts() == [{"who": "gw0"}, {"who": "gw1", "loss": "nan"}]


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", "x" * 129])
def test_part_names_cannot_leave_parts(bundle_dir: Path, name: str) -> None:
    with pytest.raises(BundleError, match="must be letters, digits"):
        BundleWriter(bundle_dir).write_part(name, {})


def test_no_temp_files_are_left_behind(bundle_dir: Path) -> None:
    write_bundle(bundle_dir, {"a": np.ones(3), "b": np.zeros(2)})
    leftovers = [name for name in snapshot(bundle_dir) if name.endswith(".tmp")]
    assert leftovers == []


def _write_from_process(path: str, worker: int, count: int, barrier: Any) -> None:
    writer = BundleWriter(path, part_name=f"w{worker}")
    barrier.wait()  # start together, so the writes really overlap
    for index in range(count):
        own = writer.put_array(np.full(64, worker * 1000 + index, dtype=np.float64))
        shared = writer.put_array(np.arange(512, dtype=np.int32) + index)  # every worker writes these
        writer.write_part(f"w{worker}-{index:03d}", {"worker": worker, "index": index, "own": own, "shared": shared})


def test_concurrent_writers_lose_nothing(bundle_dir: Path) -> None:
    workers, count = 2, 25
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    processes = [
        context.Process(target=_write_from_process, args=(str(bundle_dir), worker, count, barrier))
        for worker in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    merger = BundleWriter(bundle_dir)
    parts = merger.read_parts()
    assert sorted((part["worker"], part["index"]) for part in parts) == [
        (worker, index) for worker in range(workers) for index in range(count)
    ]
    merger.write_manifest({"variants": parts})
    bundle = Bundle.open(bundle_dir)
    for part in bundle.manifest["variants"]:
        np.testing.assert_array_equal(bundle.array(part["own"]), np.full(64, part["worker"] * 1000 + part["index"]))
        np.testing.assert_array_equal(bundle.array(part["shared"]), np.arange(512, dtype=np.int32) + part["index"])
    assert len(os.listdir(bundle_dir / "arrays")) == workers * count + count
    assert [name for name in snapshot(bundle_dir) if name.endswith(".tmp")] == []


# --- refusing bad bundles ----------------------------------------------------------------------


def test_missing_path_is_refused(bundle_dir: Path) -> None:
    assert_refused(bundle_dir, f"bundle {bundle_dir}: no such directory")


def test_a_file_is_not_a_bundle(tmp_path: Path) -> None:
    path = tmp_path / "bundle.json"
    path.write_text("{}")
    assert_refused(path, f"bundle {path}: not a directory (a bundle is a directory holding manifest.json)")


def test_missing_manifest_is_refused(bundle_dir: Path) -> None:
    BundleWriter(bundle_dir).put_array(np.ones(2))
    assert_refused(
        bundle_dir, f"bundle {bundle_dir}: no manifest.json (not a bundle, or the run that wrote it did not finish)"
    )


def test_invalid_json_is_refused(bundle_dir: Path) -> None:
    bundle_dir.mkdir()
    (bundle_dir / "manifest.json").write_text('{"tool": "detharness",\n  "schema": }')
    assert_refused(
        bundle_dir, f"bundle {bundle_dir}: manifest.json is not valid JSON (Expecting value at line 2 column 13)"
    )


def test_manifest_that_is_not_an_object_is_refused(bundle_dir: Path) -> None:
    bundle_dir.mkdir()
    rewrite_manifest(bundle_dir, [1, 2])
    assert_refused(bundle_dir, f"bundle {bundle_dir}: manifest.json is not a JSON object")


def test_foreign_json_is_refused(bundle_dir: Path) -> None:
    bundle_dir.mkdir()
    rewrite_manifest(bundle_dir, {"schema": 1, "name": "my-model", "files": ["weights.bin"]})
    assert_refused(
        bundle_dir, f'bundle {bundle_dir}: not a detharness bundle: manifest.json has no "tool": "detharness"'
    )


def test_another_tools_manifest_is_refused(bundle_dir: Path) -> None:
    bundle_dir.mkdir()
    rewrite_manifest(bundle_dir, {"tool": "polygraphy\nrun", "schema": 1})
    assert_refused(
        bundle_dir, f"bundle {bundle_dir}: not a detharness bundle: manifest.json was written by 'polygraphy\\nrun'"
    )


def test_manifest_without_schema_is_refused(bundle_dir: Path) -> None:
    bundle_dir.mkdir()
    rewrite_manifest(bundle_dir, {"tool": "detharness"})
    assert_refused(bundle_dir, f"bundle {bundle_dir}: manifest.json has no schema")


@pytest.mark.parametrize("schema", ["1", True, 0, 1.0])
def test_schema_that_is_not_a_positive_integer_is_refused(bundle_dir: Path, schema: Any) -> None:
    bundle_dir.mkdir()
    rewrite_manifest(bundle_dir, {"tool": "detharness", "schema": schema})
    assert_refused(bundle_dir, f"bundle {bundle_dir}: manifest.json schema must be a positive integer, got {schema!r}")


def test_schema_newer_than_the_code_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    rewrite_manifest(bundle_dir, {**manifest, "schema": SCHEMA + 1})
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: schema {SCHEMA + 1} is newer than this detharness reads (schema {SCHEMA} and older): "
        f"upgrade detharness to a version that reads schema {SCHEMA + 1}",
    )


def test_older_schemas_are_migrated(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend this code reads schema 3 and schema 1 bundles named their outputs "results".
    def from_1(manifest: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in manifest.items() if k != "results"}, "schema": 2, "outputs": manifest["results"]}

    def from_2(manifest: dict[str, Any]) -> dict[str, Any]:
        return {**manifest, "schema": 3, "verdicts": []}

    old = write_bundle(bundle_dir)
    rewrite_manifest(bundle_dir, {"tool": "detharness", "schema": 1, "results": old["outputs"]})
    monkeypatch.setattr(bundle_module, "SCHEMA", 3)
    monkeypatch.setattr(bundle_module, "_MIGRATIONS", {1: from_1, 2: from_2})
    bundle = Bundle.open(bundle_dir)
    assert bundle.manifest == {"tool": "detharness", "schema": 3, "outputs": old["outputs"], "verdicts": []}
    np.testing.assert_array_equal(bundle.array(bundle.manifest["outputs"]["y"]), np.arange(8, dtype=np.float32))


def test_schema_without_a_migration_is_refused(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_bundle(bundle_dir)  # at today's SCHEMA, from which no migration leads on yet
    monkeypatch.setattr(bundle_module, "SCHEMA", SCHEMA + 1)
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: schema {SCHEMA} is too old: this detharness cannot migrate it to schema {SCHEMA + 1}",
    )


def test_truncated_array_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    stored = bundle_dir / ref["file"]
    stored.write_bytes(stored.read_bytes()[:20])
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: outputs/y: array file {ref['file']!r} is truncated: expected 32 bytes, found 20",
    )


def test_array_with_extra_bytes_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    with open(bundle_dir / ref["file"], "ab") as stored:
        stored.write(b"\0")
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: outputs/y: array file {ref['file']!r} is too long: expected 32 bytes, found 33",
    )


def test_edited_array_content_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    edited = np.arange(8, dtype=np.float32)
    edited[3] = 3.0000002  # one ULP: same size, different bytes
    (bundle_dir / ref["file"]).write_bytes(edited.tobytes())
    actual = hashlib.sha256(edited.tobytes()).hexdigest()
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: outputs/y: array file {ref['file']!r} has sha256 {actual}: its content changed",
    )


def test_edited_hash_in_the_manifest_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    other = hashlib.sha256(b"something else").hexdigest()
    ref["sha256"] = other
    rewrite_manifest(bundle_dir, manifest)
    assert_refused(
        bundle_dir,
        f"bundle {bundle_dir}: outputs/y: array path {ref['file']!r} is not 'arrays/{other}.bin', "
        "the name its sha256 gives",
    )


def test_missing_array_file_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    (bundle_dir / ref["file"]).unlink()
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: array file {ref['file']!r} is missing")


@pytest.mark.parametrize(
    ("file", "problem"),
    [
        ("../x", "array path '../x' leaves the bundle"),
        ("arrays/../../outside.bin", "array path 'arrays/../../outside.bin' leaves the bundle"),
        ("..\\x", "array path '..\\\\x' leaves the bundle"),
        ("/etc/passwd", "array path '/etc/passwd' is absolute; paths in a bundle are relative to it"),
        ("C:\\Windows\\x.bin", "array path 'C:\\\\Windows\\\\x.bin' is absolute; paths in a bundle are relative to it"),
        (
            "\\\\server\\share\\x",
            "array path '\\\\\\\\server\\\\share\\\\x' is absolute; paths in a bundle are relative to it",
        ),
    ],
    ids=["dotdot", "nested-dotdot", "backslash-dotdot", "absolute", "windows-drive", "unc"],
)
def test_array_path_leaving_the_bundle_is_refused(bundle_dir: Path, file: str, problem: str) -> None:
    manifest = write_bundle(bundle_dir)
    manifest["outputs"]["y"]["file"] = file
    rewrite_manifest(bundle_dir, manifest)
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: {problem}")


def test_array_symlink_to_outside_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    stored = bundle_dir / ref["file"]
    outside = tmp_path / "outside.bin"
    outside.write_bytes(stored.read_bytes())  # even the right bytes are not read from outside
    stored.unlink()
    stored.symlink_to(outside)
    assert_refused(
        bundle_dir, f"bundle {bundle_dir}: outputs/y: array path {ref['file']!r} leaves the bundle through a symlink"
    )


def test_arrays_folder_symlinked_to_outside_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    (bundle_dir / "arrays").rename(tmp_path / "arrays-outside")
    (bundle_dir / "arrays").symlink_to(tmp_path / "arrays-outside", target_is_directory=True)
    assert_refused(
        bundle_dir, f"bundle {bundle_dir}: outputs/y: array path {ref['file']!r} leaves the bundle through a symlink"
    )


def test_manifest_symlink_to_outside_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    manifest = write_bundle(bundle_dir)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps(manifest))
    (bundle_dir / "manifest.json").unlink()
    (bundle_dir / "manifest.json").symlink_to(outside)
    assert_refused(bundle_dir, f"bundle {bundle_dir}: manifest.json leaves the bundle through a symlink")


def test_symlink_inside_the_bundle_is_followed(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    stored = bundle_dir / manifest["outputs"]["y"]["file"]
    (bundle_dir / "elsewhere.bin").write_bytes(stored.read_bytes())
    stored.unlink()
    stored.symlink_to(bundle_dir / "elsewhere.bin")
    Bundle.open(bundle_dir)


class _CreatesSentinelWhenUnpickled:
    """Unpickling this calls ``open(path, "w")``: a reader that unpickles leaves a file behind."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.mark.parametrize("fmt", ["pickle", "npy", "raw"])
def test_pickled_array_is_refused_and_never_unpickled(bundle_dir: Path, tmp_path: Path, fmt: str) -> None:
    sentinel = tmp_path / "unpickled"
    payload_array = np.array([_CreatesSentinelWhenUnpickled(sentinel)], dtype=object)
    payload_path = tmp_path / "payload.npy"
    if fmt == "pickle":
        payload = pickle.dumps(payload_array)
    else:
        np.save(payload_path, payload_array, allow_pickle=True)
        payload = payload_path.read_bytes()
        payload_path.unlink()
    digest = hashlib.sha256(payload).hexdigest()
    write_bundle(bundle_dir)
    (bundle_dir / "arrays" / f"{digest}.bin").write_bytes(payload)
    ref = {
        "format": fmt,
        "dtype": "object",
        "shape": [1],
        "sha256": digest,
        "file": f"arrays/{digest}.bin",
        "nbytes": len(payload),
    }
    rewrite_manifest(bundle_dir, {"tool": "detharness", "schema": SCHEMA, "outputs": {"y": ref}})

    if fmt == "raw":
        problem = "dtype 'object' refused: object arrays would need pickle, and bundles never hold pickled data"
    else:
        problem = f"array format {fmt!r} refused: bundles never hold pickled data (only 'raw' arrays are read)"
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: {problem}")
    bundle = Bundle.open(bundle_dir, verify=False)
    with pytest.raises(BundleError):
        bundle.array(ref)
    assert not sentinel.exists()

    # The control: the payload really does act when unpickled, so the test above could fail.
    if fmt == "pickle":
        pickle.loads(payload)
    else:
        payload_path.write_bytes(payload)
        np.load(payload_path, allow_pickle=True)
    assert sentinel.exists()


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"dtype": "float128"}, "unknown dtype 'float128'"),
        ({"dtype": "str"}, "a str array needs numpy_dtype like '<U8' or '|S8', got None"),
        ({"dtype": "str", "numpy_dtype": "O"}, "a str array needs numpy_dtype like '<U8' or '|S8', got 'O'"),
        ({"shape": [-1]}, "shape must be a list of at most 64 non-negative integers, got [-1]"),
        ({"shape": "8"}, "shape must be a list of at most 64 non-negative integers, got '8'"),
        ({"shape": [2, 4.0]}, "shape must be a list of at most 64 non-negative integers, got [2, 4.0]"),
        ({"nbytes": 31}, "nbytes 31 does not match shape [8] of float32 (32 bytes)"),
        ({"sha256": "ABC"}, "sha256 must be 64 lowercase hex digits, got 'ABC'"),
        ({"file": None}, "file must be a string, got None"),
        ({"dtype": "float64"}, "nbytes 32 does not match shape [8] of float64 (64 bytes)"),
    ],
    ids=lambda value: str(value)[:30],
)
def test_malformed_refs_are_refused(bundle_dir: Path, change: dict[str, Any], problem: str) -> None:
    manifest = write_bundle(bundle_dir)
    manifest["outputs"]["y"].update(change)
    rewrite_manifest(bundle_dir, manifest)
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: {problem}")


def test_verify_false_defers_the_checks_to_array(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir, {"good": np.ones(4), "bad": np.zeros(4)})
    bad = manifest["outputs"]["bad"]
    stored = bundle_dir / bad["file"]
    stored.write_bytes(stored.read_bytes()[:8])
    bundle = Bundle.open(bundle_dir, verify=False)
    np.testing.assert_array_equal(bundle.array(manifest["outputs"]["good"]), np.ones(4))
    with pytest.raises(BundleError) as raised:
        bundle.array(bad)
    assert (
        str(raised.value)
        == f"bundle {bundle_dir}: array: array file {bad['file']!r} is truncated: expected 32 bytes, found 8"
    )


def test_array_catches_a_file_changed_after_open(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    bundle = Bundle.open(bundle_dir)
    (bundle_dir / ref["file"]).write_bytes(np.zeros(8, dtype=np.float32).tobytes())
    with pytest.raises(BundleError, match=r"its content changed$"):
        bundle.array(ref)


def test_array_refs_are_found_at_any_depth() -> None:
    ref = {"format": "raw", "sha256": "0" * 64, "file": "arrays/x.bin"}
    manifest = {"a": [{"b": ref}, 3, {"c": {"d": ref}}], "e": ref, "f": {"format": "md", "file": "report.md"}}
    assert [location for location, _ in iter_array_refs(manifest)] == ["a/0/b", "a/2/c/d", "e"]


# --- JSON ------------------------------------------------------------------------------------


class _Status(enum.Enum):
    CLOSE = "close"


@dataclasses.dataclass
class _Stats:
    max_ulp: float
    worst_index: tuple[int, ...]


def test_to_jsonable_follows_the_json_rule() -> None:
    value = {
        "inf": float("inf"),
        "ninf": np.float32(-np.inf),
        "nan": np.float64("nan"),
        "bf16": ml_dtypes.bfloat16(1.5),
        "f16": np.float16(0.5),
        "int": np.int64(7),
        "uint": np.uint8(255),
        "bool": np.bool_(True),
        "complex": np.complex64(1 - 2j),
        "array": np.array([1.0, np.nan]),
        "tags": {"b", "a"},
        "status": _Status.CLOSE,
        "stats": _Stats(float("inf"), (1, 2)),
        3: "int key",
    }
    assert to_jsonable(value) == {
        "inf": "inf",
        "ninf": "-inf",
        "nan": "nan",
        "bf16": 1.5,
        "f16": 0.5,
        "int": 7,
        "uint": 255,
        "bool": True,
        "complex": [1.0, -2.0],
        "array": [1.0, "nan"],
        "tags": ["a", "b"],
        "status": "close",
        "stats": {"max_ulp": "inf", "worst_index": [1, 2]},
        "3": "int key",
    }
    text = json_dumps(value, indent=2)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["nan"] == "nan"


def test_to_jsonable_refuses_what_json_cannot_hold() -> None:
    with pytest.raises(TypeError, match="cannot write a object as JSON"):
        to_jsonable(object())
    with pytest.raises(TypeError, match="JSON object keys must be strings, got tuple"):
        to_jsonable({(1, 2): 3})


def test_atomic_write_replaces_whole_files_and_cleans_up_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.md"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second ✓")
    assert target.read_text(encoding="utf-8") == "second ✓"

    def fail(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(target, "third")
    assert target.read_text(encoding="utf-8") == "second ✓"
    assert os.listdir(tmp_path) == ["report.md"]


def test_writer_refuses_a_file_where_the_bundle_should_be(tmp_path: Path) -> None:
    path = tmp_path / "bundle"
    path.write_text("not a folder")
    with pytest.raises(BundleError) as raised:
        BundleWriter(path)
    assert str(raised.value) == f"bundle {path}: exists and is not a directory"


# --- hostile bundles: no input ends in anything but a BundleError ---------------------------------


@pytest.mark.parametrize(
    ("literal", "problem"),
    [
        ("9" * 5000, "manifest.json: an integer literal of 5000 characters (at most 40 are read)"),
        ("-" + "1" * 41, "manifest.json: an integer literal of 42 characters (at most 40 are read)"),
        ("NaN", "manifest.json: NaN is not JSON (detharness writes non-finite numbers as strings)"),
        ("1e999", "manifest.json: the number 1e999 is out of range for a float"),
        ("[" * 900 + "]" * 900, "manifest.json: nested more than 64 levels deep"),
        ("[" * 100_000 + "]" * 100_000, "manifest.json: nested more than 64 levels deep"),
    ],
    ids=["int-5000-digits", "int-42-chars", "nan", "float-overflow", "nested-900", "nested-100000"],
)
def test_json_the_parser_would_choke_on_is_refused(bundle_dir: Path, literal: str, problem: str) -> None:
    write_bundle(bundle_dir)
    text = (bundle_dir / "manifest.json").read_text()
    (bundle_dir / "manifest.json").write_text(text[:-1] + f', "extra": {literal}}}')
    assert_refused(bundle_dir, f"bundle {bundle_dir}: {problem}")


@pytest.mark.parametrize(
    "shape", [[0, 2**63], [2**64, 0], [0, 2**62, 4], [2**31, 2**31, 0, 2]], ids=["2^63", "2^64", "2^62x4", "2^31x2^31"]
)
def test_empty_array_of_an_impossible_shape_is_refused(bundle_dir: Path, shape: list[int]) -> None:
    manifest = write_bundle(bundle_dir, {"y": np.zeros(0, dtype=np.float32)})
    manifest["outputs"]["y"]["shape"] = shape
    rewrite_manifest(bundle_dir, manifest)
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: shape {shape} is too large for an array of float32 "
                               "(even an empty one)")


def test_largest_empty_shape_numpy_takes_is_read(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir, {"y": np.zeros(0, dtype=np.float32)})
    manifest["outputs"]["y"]["shape"] = [0, 2**40, 2**20 - 1]
    rewrite_manifest(bundle_dir, manifest)
    assert Bundle.open(bundle_dir).array(manifest["outputs"]["y"]).shape == (0, 2**40, 2**20 - 1)


def test_arrays_folder_that_is_a_file_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    (bundle_dir / "arrays" / f"{manifest['outputs']['y']['sha256']}.bin").unlink()
    (bundle_dir / "arrays").rmdir()
    (bundle_dir / "arrays").write_text("not a folder")
    assert_refused(bundle_dir, f"bundle {bundle_dir}: outputs/y: array file {manifest['outputs']['y']['file']!r} "
                               "cannot be read: Not a directory")


@pytest.mark.parametrize("where", ["arrays", "file"])
def test_symlink_loops_are_refused(bundle_dir: Path, where: str) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    if where == "arrays":
        (bundle_dir / ref["file"]).unlink()
        (bundle_dir / "arrays").rmdir()
        os.symlink("arrays", bundle_dir / "arrays")
    else:
        (bundle_dir / ref["file"]).unlink()
        os.symlink(f"{ref['sha256']}.bin", bundle_dir / ref["file"])
    with pytest.raises(BundleError) as raised:
        Bundle.open(bundle_dir)
    assert str(raised.value).startswith(f"bundle {bundle_dir}: outputs/y: ")
    assert "\n" not in str(raised.value)
    with pytest.raises(BundleError):
        Bundle.open(bundle_dir, verify=False).array(ref)


def test_each_distinct_array_is_hashed_once(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 refs to one 1 MiB array: one hash on open, one read for all of them after."""
    manifest = write_bundle(bundle_dir, {"y": np.zeros(1 << 18, dtype=np.float32)})
    ref = manifest["outputs"]["y"]
    manifest["outputs"] = {f"y{index}": dict(ref) for index in range(20_000)}
    rewrite_manifest(bundle_dir, manifest)
    hashed: list[str] = []
    real_hash_file = bundle_module._hash_file
    monkeypatch.setattr(bundle_module, "_hash_file", lambda *args: hashed.append(args[1]) or real_hash_file(*args))
    bundle = Bundle.open(bundle_dir)
    assert hashed == ["outputs/y0"]
    reads = 0
    real_sha256 = hashlib.sha256

    def counting_sha256(*args: Any) -> Any:
        nonlocal reads
        reads += 1
        return real_sha256(*args)

    monkeypatch.setattr(bundle_module.hashlib, "sha256", counting_sha256)
    for one in manifest["outputs"].values():
        assert bundle.array(one).nbytes == 1 << 20
    assert reads == 1
    monkeypatch.setattr(bundle_module.hashlib, "sha256", real_sha256)


def test_a_ref_naming_cached_bytes_with_another_size_is_refused(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    bundle = Bundle.open(bundle_dir)
    bundle.array(ref)
    with pytest.raises(BundleError, match="is too long: expected 16 bytes, found 32"):
        bundle.array({**ref, "shape": [4], "nbytes": 16})


def test_array_file_that_grew_after_open_is_refused_without_reading_it_all(bundle_dir: Path) -> None:
    manifest = write_bundle(bundle_dir)
    ref = manifest["outputs"]["y"]
    bundle = Bundle.open(bundle_dir)
    with open(bundle_dir / ref["file"], "ab") as handle:
        handle.write(b"\0" * (1 << 20))
    with pytest.raises(BundleError, match="is too long: expected 32 bytes"):
        bundle.array(ref)


def test_the_arrays_folder_is_synced_once_before_a_manifest_or_part_refers_to_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each array file is fsynced as it is written; the arrays folder once, and before the first
    manifest or part that names the files, never after it."""
    import detharness._io as io_module

    events: list[str] = []
    real_sync, real_write = bundle_module.fsync_dir, io_module.atomic_write_bytes
    monkeypatch.setattr(bundle_module, "fsync_dir", lambda folder: (events.append(f"sync {folder.name}"),
                                                                    real_sync(folder))[1])
    monkeypatch.setattr(io_module, "atomic_write_bytes",
                        lambda path, data, **kw: (events.append(f"write {Path(path).name}"),
                                                  real_write(path, data, **kw))[1])
    writer = BundleWriter(tmp_path / "b")
    events.clear()
    refs = [writer.put_array(np.arange(n, dtype=np.float32)) for n in (3, 4, 5)]
    assert events == [] and all((tmp_path / "b" / ref["file"]).exists() for ref in refs)
    writer.write_manifest({"arrays": refs})
    assert events == ["sync arrays", "write manifest.json"]
    events.clear()
    writer.put_array(np.arange(6, dtype=np.float32))
    writer.write_part("p1", {"x": 1})
    writer.write_part("p2", {"x": 2})
    assert events == ["sync arrays", "write p1.json", "write p2.json"]
    assert Bundle.open(tmp_path / "b").manifest["arrays"] == refs
