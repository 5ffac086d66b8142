"""Read and write bundles: the record of one run in one environment.

A bundle is a directory::

    manifest.json            written last, by one merge; readers read only this
    arrays/<sha256>.bin      raw little-endian C-order bytes, named by the sha256 of those bytes
    parts/<name>.json        what each writer (backend worker, xdist worker) contributes before the merge

Arrays are referred to from JSON by an *array ref*::

    {"format": "raw", "dtype": "bfloat16", "shape": [4, 3], "sha256": "<64 hex>",
     "file": "arrays/<64 hex>.bin", "nbytes": 24}

String arrays add ``"numpy_dtype": "<U8"`` (or ``"|S8"``), the exact fixed-width numpy dtype, since
the detharness dtype name ``str`` does not say the width. The manifest's envelope is a JSON object
with ``"tool": "detharness"`` and an integer ``"schema"``; everything else in it is the runner's.

Trust: a bundle is data from elsewhere (a CI artifact). Reading it never unpickles anything (only
``raw`` arrays of an allowlisted dtype are read, with ``numpy.frombuffer``), never follows a path
outside the bundle, and checks every array's size and sha256 before handing it out. Every way a
bundle can be unusable is a :class:`~detharness.errors.BundleError` with one line that names the
bundle and the problem; the CLI turns it into exit 2. The manifest is parsed with limits (integer
literals, nesting depth, no NaN, no lone surrogates: :func:`detharness.manifest.parse_json`), and a
run record's manifest is checked field by field before use (:mod:`detharness.manifest`). Reading
costs time in proportion to the bundle's size: each distinct array file is hashed once, however
many refs name it, and :meth:`Bundle.array` keeps recently verified bytes for refs that repeat.

Writes are atomic (temp file in the same folder, fsync, rename), so a reader or a merge never sees a
half-written file, and concurrent writers of the same array (same content, same name) are safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import posixpath
import re
import stat
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from detharness._io import atomic_write_bytes, atomic_write_text, fsync_dir, json_dumps
from detharness.dtypes import ALL_DTYPES, dtype_name, numpy_dtype
from detharness.errors import BundleError, DtypeError
from detharness.manifest import ManifestError, parse_json

#: 2 adds, on each variant, ``traceback`` and ``log`` (stdout, stderr, warnings, truncated) and the
#: reserved ``intermediates``, ``cache`` and ``shard``; on each result every field, ``null`` where
#: it does not apply (``traceback``, and the reserved ``accuracy``, ``decision``, ``shift``,
#: ``first_divergence``). Schema 1 manifests are migrated on read.
SCHEMA = 2
TOOL = "detharness"
MANIFEST_NAME = "manifest.json"
ARRAYS_DIR = "arrays"
PARTS_DIR = "parts"
RAW_FORMAT = "raw"


def _schema_1_to_2(manifest: dict[str, Any]) -> dict[str, Any]:
    """Schema 1 had no traceback, log or reserved keys on variants: add them, empty."""
    variants = manifest.get("variants")
    if isinstance(variants, dict):
        for entry in variants.values():
            if isinstance(entry, dict):
                entry.setdefault("traceback", None)
                entry.setdefault("log", {"stdout": "", "stderr": "", "warnings": [], "truncated": False})
                for key in ("intermediates", "cache", "shard"):
                    entry.setdefault(key, None)
    return {**manifest, "schema": 2}


# Upgrades for manifests of older schemas: _MIGRATIONS[n] turns a schema-n manifest into a
# schema-(n + 1) one, and Bundle.open chains them up to SCHEMA.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _schema_1_to_2}

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# Fixed-width numpy strings, little-endian UTF-32 or bytes; nothing else of kind U/S is accepted.
_STRING_NUMPY_DTYPE = re.compile(r"(<U|\|S)([1-9][0-9]{0,6})")
_PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_DIMS = 64  # numpy's own limit
# numpy refuses an array whose nonzero sides times its itemsize overflow an intp, even an empty one.
_MAX_ARRAY_BYTES = 2**62
_HASH_CHUNK = 1 << 20
# Bundle.array keeps the verified bytes of recently read arrays, up to this many bytes in all, so a
# bundle that refers to one array 20,000 times reads and hashes it once.
_READ_CACHE_BYTES = 256 << 20


# ---------------------------------------------------------------------------------------------
# Array refs


def is_array_ref(obj: Any) -> bool:
    """Whether ``obj`` is shaped like an array ref: a dict with ``format``, ``sha256`` and ``file``."""
    return isinstance(obj, Mapping) and "format" in obj and "sha256" in obj and "file" in obj


def iter_array_refs(obj: Any) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every array ref in ``obj`` at any depth, in document order, with its location.

    The location is a slash-separated path of keys and list indices (``variants/3/outputs/y``),
    for messages. Iterative, so a deeply nested manifest cannot exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        location, node = stack.pop()
        if is_array_ref(node):
            yield location or "(top level)", node
        elif isinstance(node, Mapping):
            stack.extend(
                (f"{location}/{key}" if location else str(key), value) for key, value in reversed(list(node.items()))
            )
        elif isinstance(node, list):
            stack.extend(
                (f"{location}/{index}" if location else str(index), value)
                for index, value in reversed(list(enumerate(node)))
            )


@dataclasses.dataclass(frozen=True)
class _ArrayFile:
    """An array ref that passed the structural and path checks: what to read and what to expect."""

    relative: str  # as the ref wrote it, for messages
    real_path: str  # resolved, inside the bundle
    dtype_name: str
    numpy_dtype: np.dtype[Any]  # the stored (little-endian) dtype
    shape: tuple[int, ...]
    nbytes: int
    sha256: str


def _storage_dtype(array: np.ndarray) -> tuple[str, np.dtype[Any]]:
    """The detharness dtype name of ``array`` and the little-endian dtype its bytes are stored in."""
    if array.dtype.kind == "O":
        raise DtypeError(
            "object arrays cannot be stored in a bundle: they would need pickle; "
            "convert to a numeric, bool or fixed-width string dtype first"
        )
    try:
        name = dtype_name(array.dtype)
    except DtypeError as error:
        raise DtypeError(f"cannot store a {array.dtype} array in a bundle: {error}") from None
    if name == "str":
        if array.dtype.kind == "U":
            return name, np.dtype(f"<U{max(array.dtype.itemsize // 4, 1)}")
        return name, np.dtype(f"S{max(array.dtype.itemsize, 1)}")
    if name == "bfloat16":
        # ml_dtypes' bfloat16 has no byte-order variants; its bytes travel as a uint16 view.
        return name, np.dtype("<u2")
    return name, numpy_dtype(name).newbyteorder("<")


def _encode(array: np.ndarray, name: str, storage: np.dtype[Any]) -> bytes:
    if name == "bfloat16":
        native = np.asarray(array, dtype=numpy_dtype("bfloat16"), order="C")
        return np.asarray(native.view(np.uint16), dtype=storage, order="C").tobytes()
    # Same dtype apart from byte order, so this only reorders bytes and memory, never casts values.
    return np.asarray(array, dtype=storage, order="C").tobytes()


def _decode(data: bytes, stored: _ArrayFile) -> np.ndarray:
    array = np.frombuffer(data, dtype=stored.numpy_dtype).reshape(stored.shape)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if stored.dtype_name == "bfloat16":
        array = array.view(numpy_dtype("bfloat16"))
    array.flags.writeable = False
    return array


def encode_array(array: Any) -> tuple[dict[str, Any], bytes]:
    """The array ref a bundle would hold for ``array``, and the bytes it would store; writes nothing.

    Also what compares an in-memory array with a stored one by hash: equal refs, equal content.
    """
    array = np.asarray(array)
    name, storage = _storage_dtype(array)
    data = _encode(array, name, storage)
    digest = hashlib.sha256(data).hexdigest()
    ref: dict[str, Any] = {
        "format": RAW_FORMAT,
        "dtype": name,
        "shape": [int(side) for side in array.shape],
        "sha256": digest,
        "file": f"{ARRAYS_DIR}/{digest}.bin",
        "nbytes": len(data),
    }
    if name == "str":
        ref["numpy_dtype"] = storage.str
    return ref, data


# ---------------------------------------------------------------------------------------------
# Writing


def _make_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    # mkdir first and judge after: another writer may create the same folder at the same moment.
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise _refuse(directory, "exists and is not a directory") from None
    fsync_dir(directory.parent)


class BundleWriter:
    """Writes arrays, parts and the manifest of the bundle at ``path`` (created if missing).

    Several writers, in several processes, may write into one bundle at once: each writes its own
    parts, and arrays are content-addressed, so two writers of the same array write the same bytes
    to the same name. One merge then reads the parts and writes the manifest, last.

    ``part_name`` names this writer's part (``gw0``, ``torch``) for :meth:`write_part` calls that
    pass ``name=None``.
    """

    def __init__(self, path: str | os.PathLike[str], *, part_name: str | None = None) -> None:
        self.path = Path(path)
        self.part_name = _check_part_name(self.path, part_name) if part_name is not None else None
        _make_dir(self.path)
        _make_dir(self.path / ARRAYS_DIR)
        _make_dir(self.path / PARTS_DIR)
        self._arrays_unsynced = False

    def put_array(self, array: Any) -> dict[str, Any]:
        """Store ``array`` (once: equal bytes are not written again) and return its array ref.

        Each file is fsynced; the arrays folder is fsynced once, before the first part or manifest
        written after it can refer to the file (a folder fsync per array was half of writing a
        bundle of many small arrays)."""
        ref, data = encode_array(array)
        target = self.path / ref["file"]
        if not _is_file_of_size(target, len(data)):
            atomic_write_bytes(target, data, sync_folder=False)
            self._arrays_unsynced = True
        return ref

    def _sync_arrays(self) -> None:
        if self._arrays_unsynced:
            fsync_dir(self.path / ARRAYS_DIR)
            self._arrays_unsynced = False

    def write_part(self, name: str | None, data: Mapping[str, Any]) -> Path:
        """Write ``parts/<name>.json`` atomically (``name=None``: this writer's ``part_name``)."""
        if name is None:
            if self.part_name is None:
                raise _refuse(self.path, "write_part needs a name (no part_name was given)")
            name = self.part_name
        name = _check_part_name(self.path, name)
        if not isinstance(data, Mapping):
            raise TypeError(f"a part is a JSON object, got {type(data).__name__}")
        target = self.path / PARTS_DIR / f"{name}.json"
        self._sync_arrays()
        atomic_write_text(target, json_dumps(data))
        return target

    def read_parts(self) -> list[dict[str, Any]]:
        """Every part written so far, in order of part name, for the merge."""
        parts_dir = self.path / PARTS_DIR
        names = sorted(
            entry for entry in os.listdir(parts_dir) if entry.endswith(".json") and not entry.startswith(".")
        )
        parts: list[dict[str, Any]] = []
        for entry in names:
            try:
                part = json.loads((parts_dir / entry).read_bytes().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
                raise _refuse(self.path, f"part {entry!r} is not valid JSON: {_one_line(str(error))}") from None
            if not isinstance(part, dict):
                raise _refuse(self.path, f"part {entry!r} is not a JSON object")
            parts.append(part)
        return parts

    def write_manifest(self, manifest: Mapping[str, Any]) -> Path:
        """Write ``manifest.json`` atomically, with ``tool`` and ``schema`` added where absent.

        Every array ref in it must point at a stored array of the right size, so a merge bug shows
        here and not as a refused bundle in someone else's CI job.
        """
        if not isinstance(manifest, Mapping):
            raise TypeError(f"a manifest is a JSON object, got {type(manifest).__name__}")
        tool = manifest.get("tool", TOOL)
        if tool != TOOL:
            raise _refuse(self.path, f"manifest tool must be {TOOL!r}, got {_show(tool)}")
        schema = manifest.get("schema", SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool):
            raise _refuse(self.path, f"manifest schema must be an integer, got {_show(schema)}")
        body = {"tool": TOOL, "schema": schema, **{k: v for k, v in manifest.items() if k not in ("tool", "schema")}}
        text = json_dumps(body, indent=1)
        real_root = os.path.realpath(self.path)
        for location, ref in iter_array_refs(body):
            stored = _check_ref(self.path, real_root, location, ref)
            _check_size(self.path, location, stored)
        target = self.path / MANIFEST_NAME
        self._sync_arrays()
        atomic_write_text(target, text)
        return target


def _check_part_name(bundle_path: Path, name: str) -> str:
    if not isinstance(name, str) or not _PART_NAME.fullmatch(name):
        raise _refuse(
            bundle_path,
            f"part name {_show(name)} must be letters, digits, '.', '_' or '-' "
            "(at most 128, not starting with a punctuation mark)",
        )
    return name


def _is_file_of_size(path: Path, size: int) -> bool:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(info.st_mode) and info.st_size == size


# ---------------------------------------------------------------------------------------------
# Reading


class Bundle:
    """A bundle opened for reading: its manifest (migrated to :data:`SCHEMA`) and its arrays."""

    def __init__(self, path: Path, manifest: dict[str, Any], real_root: str) -> None:
        self.path = path
        self.manifest = manifest
        self._real_root = real_root
        # sha256 -> the bytes read and hashed, most recently used last (see _READ_CACHE_BYTES).
        self._read_cache: dict[str, bytes] = {}
        self._read_cache_bytes = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Bundle:
        """Open the bundle at ``path``; with ``verify``, check every array before returning.

        Verifying up front means a bad bundle is refused before a run or a compare writes anything.
        Raises :class:`BundleError` for a missing, foreign, newer, unsafe or corrupt bundle.
        """
        bundle_path = Path(path)
        if not bundle_path.exists():
            raise _refuse(bundle_path, "no such directory")
        if not bundle_path.is_dir():
            raise _refuse(bundle_path, "not a directory (a bundle is a directory holding manifest.json)")
        real_root = os.path.realpath(bundle_path)
        manifest_path = bundle_path / MANIFEST_NAME
        if not os.path.lexists(manifest_path):
            raise _refuse(bundle_path, f"no {MANIFEST_NAME} (not a bundle, or the run that wrote it did not finish)")
        if not _is_inside(real_root, os.path.realpath(manifest_path)):
            raise _refuse(bundle_path, f"{MANIFEST_NAME} leaves the bundle through a symlink")
        if not os.path.isfile(manifest_path):
            raise _refuse(bundle_path, f"{MANIFEST_NAME} is not a regular file")
        manifest = _migrate(bundle_path, _load_manifest(bundle_path, manifest_path))
        bundle = cls(bundle_path, manifest, real_root)
        if verify:
            bundle.verify()
        return bundle

    def verify(self) -> None:
        """Check every array ref: its fields, its path, its file's size and sha256.

        Each distinct file is hashed once, however many refs name it: the cost is that of the
        manifest plus that of the distinct arrays, not of the refs times the arrays.
        """
        hashed: dict[str, tuple[int, str]] = {}  # real path -> (size, sha256) as read
        for location, ref in iter_array_refs(self.manifest):
            stored = _check_ref(self.path, self._real_root, location, ref)
            _check_size(self.path, location, stored)
            if stored.real_path not in hashed:
                hashed[stored.real_path] = _hash_file(self.path, location, stored)
            size, digest = hashed[stored.real_path]
            _check_content(self.path, location, stored, size, digest)

    def array(self, ref: Mapping[str, Any]) -> np.ndarray:
        """The read-only array that ``ref`` stands for, checked against the ref as it is read.

        The bytes returned are the bytes hashed here, so a file changed after :meth:`open`
        verified it is still caught.
        """
        location = "array"
        stored = _check_ref(self.path, self._real_root, location, ref)
        data = self._read_cache.pop(stored.sha256, None)
        if data is None:
            _check_size(self.path, location, stored)
            try:
                with open(stored.real_path, "rb") as handle:
                    data = handle.read(stored.nbytes + 1)
            except OSError as error:
                raise _refuse(self.path, f"{location}: array file {stored.relative!r} cannot be read: "
                                         f"{error.strerror or error}") from None
            _check_content(self.path, location, stored, len(data), hashlib.sha256(data).hexdigest())
            self._read_cache_bytes += len(data)
        self._read_cache[stored.sha256] = data  # most recently used last
        while self._read_cache_bytes > _READ_CACHE_BYTES and len(self._read_cache) > 1:
            oldest = next(iter(self._read_cache))
            self._read_cache_bytes -= len(self._read_cache.pop(oldest))
        # The cached bytes are the ones hashed; equal sha256 and size mean equal content.
        _check_length(self.path, location, stored, len(data))
        return _decode(data, stored)

    def __repr__(self) -> str:
        return f"Bundle({os.fspath(self.path)!r}, schema={self.manifest.get('schema')})"


def _load_manifest(bundle_path: Path, manifest_path: Path) -> dict[str, Any]:
    try:
        text = manifest_path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(bundle_path, f"{MANIFEST_NAME} is not UTF-8 text") from None
    except OSError as error:
        raise _refuse(bundle_path, f"{MANIFEST_NAME} cannot be read: {error.strerror}") from None
    try:
        manifest = parse_json(text)
    except json.JSONDecodeError as error:
        raise _refuse(
            bundle_path, f"{MANIFEST_NAME} is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})"
        ) from None
    except ManifestError as error:
        raise _refuse(bundle_path, f"{MANIFEST_NAME}: {error}") from None
    except (ValueError, RecursionError, MemoryError) as error:  # any other limit of the parser
        raise _refuse(bundle_path, f"{MANIFEST_NAME} cannot be read: {type(error).__name__}: {error}") from None
    if not isinstance(manifest, dict):
        raise _refuse(bundle_path, f"{MANIFEST_NAME} is not a JSON object")
    if "tool" not in manifest:
        raise _refuse(bundle_path, f'not a detharness bundle: {MANIFEST_NAME} has no "tool": "{TOOL}"')
    if manifest["tool"] != TOOL:
        raise _refuse(bundle_path, f"not a detharness bundle: {MANIFEST_NAME} was written by {_show(manifest['tool'])}")
    if "schema" not in manifest:
        raise _refuse(bundle_path, f"{MANIFEST_NAME} has no schema")
    schema = manifest["schema"]
    if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
        raise _refuse(bundle_path, f"{MANIFEST_NAME} schema must be a positive integer, got {_show(schema)}")
    return manifest


def _migrate(bundle_path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    schema: int = manifest["schema"]
    if schema > SCHEMA:
        raise _refuse(
            bundle_path,
            f"schema {schema} is newer than this detharness reads (schema {SCHEMA} and older): "
            f"upgrade detharness to a version that reads schema {schema}",
        )
    while schema < SCHEMA:
        migration = _MIGRATIONS.get(schema)
        if migration is None:
            raise _refuse(
                bundle_path, f"schema {schema} is too old: this detharness cannot migrate it to schema {SCHEMA}"
            )
        manifest = migration(manifest)
        # A migration that forgets to bump the schema would loop forever or skip a step.
        if manifest.get("schema") != schema + 1:
            raise AssertionError(f"migration from schema {schema} must produce schema {schema + 1}")
        schema += 1
    return manifest


def _check_ref(bundle_path: Path, real_root: str, location: str, ref: Any) -> _ArrayFile:
    """The fields and path of one array ref, checked without reading its file."""

    def refuse(problem: str) -> BundleError:
        return _refuse(bundle_path, f"{location}: {problem}")

    if not isinstance(ref, Mapping):
        raise refuse(f"an array ref is a JSON object, got {type(ref).__name__}")
    fmt = ref.get("format")
    if fmt != RAW_FORMAT:
        # Checked first: nothing else about a foreign format is worth looking at.
        raise refuse(
            f"array format {_show(fmt)} refused: bundles never hold pickled data (only {RAW_FORMAT!r} arrays are read)"
        )
    name = ref.get("dtype")
    if name == "object":
        raise refuse("dtype 'object' refused: object arrays would need pickle, and bundles never hold pickled data")
    if name == "str":
        numpy_name = ref.get("numpy_dtype")
        if not isinstance(numpy_name, str) or not _STRING_NUMPY_DTYPE.fullmatch(numpy_name):
            raise refuse(f"a str array needs numpy_dtype like '<U8' or '|S8', got {_show(numpy_name)}")
        stored_dtype = np.dtype(numpy_name)
    elif name == "bfloat16":
        stored_dtype = np.dtype("<u2")
    elif isinstance(name, str) and name in ALL_DTYPES:
        stored_dtype = numpy_dtype(name).newbyteorder("<")
    else:
        raise refuse(f"unknown dtype {_show(name)}")
    shape = ref.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(isinstance(side, int) and not isinstance(side, bool) and side >= 0 for side in shape)
    ):
        raise refuse(f"shape must be a list of at most {_MAX_DIMS} non-negative integers, got {_show(shape)}")
    if math.prod(max(side, 1) for side in shape) * stored_dtype.itemsize >= _MAX_ARRAY_BYTES:
        raise refuse(f"shape {_show(shape)} is too large for an array of {name} (even an empty one)")
    expected_nbytes = math.prod(shape) * stored_dtype.itemsize
    nbytes = ref.get("nbytes", expected_nbytes)
    if nbytes != expected_nbytes or isinstance(nbytes, bool):
        raise refuse(f"nbytes {_show(nbytes)} does not match shape {shape} of {name} ({expected_nbytes} bytes)")
    digest = ref.get("sha256")
    if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
        raise refuse(f"sha256 must be 64 lowercase hex digits, got {_show(digest)}")
    relative = _check_relative_path(refuse, ref.get("file"), digest)
    real_path = os.path.realpath(os.path.join(real_root, ARRAYS_DIR, f"{digest}.bin"))
    if not _is_inside(real_root, real_path):
        raise refuse(f"array path {relative!r} leaves the bundle through a symlink")
    return _ArrayFile(relative, real_path, name, stored_dtype, tuple(shape), expected_nbytes, digest)


def _check_relative_path(refuse: Callable[[str], BundleError], file: Any, digest: str) -> str:
    if not isinstance(file, str):
        raise refuse(f"file must be a string, got {_show(file)}")
    # Judge the path as both POSIX and Windows would: a bundle written on one is read on the other.
    slashed = file.replace("\\", "/")
    if slashed.startswith("/") or PureWindowsPath(file).drive or PureWindowsPath(file).is_absolute():
        raise refuse(f"array path {file!r} is absolute; paths in a bundle are relative to it")
    if ".." in slashed.split("/"):
        raise refuse(f"array path {file!r} leaves the bundle")
    expected = f"{ARRAYS_DIR}/{digest}.bin"
    if posixpath.normpath(slashed) != expected:
        raise refuse(f"array path {file!r} is not {expected!r}, the name its sha256 gives")
    return file


def _check_size(bundle_path: Path, location: str, stored: _ArrayFile) -> None:
    try:
        info = os.stat(stored.real_path)
    except FileNotFoundError:
        raise _refuse(bundle_path, f"{location}: array file {stored.relative!r} is missing") from None
    except OSError as error:  # a symlink loop, arrays/ being a file, no permission
        raise _refuse(
            bundle_path, f"{location}: array file {stored.relative!r} cannot be read: {error.strerror or error}"
        ) from None
    if not stat.S_ISREG(info.st_mode):
        raise _refuse(bundle_path, f"{location}: array file {stored.relative!r} is not a regular file")
    _check_length(bundle_path, location, stored, info.st_size)


def _hash_file(bundle_path: Path, location: str, stored: _ArrayFile) -> tuple[int, str]:
    """The size and sha256 of an array file, read at most one byte past its expected size."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(stored.real_path, "rb") as handle:
            while size <= stored.nbytes and (chunk := handle.read(min(_HASH_CHUNK, stored.nbytes + 1 - size))):
                digest.update(chunk)
                size += len(chunk)
    except OSError as error:
        raise _refuse(
            bundle_path, f"{location}: array file {stored.relative!r} cannot be read: {error.strerror or error}"
        ) from None
    return size, digest.hexdigest()


def _check_length(bundle_path: Path, location: str, stored: _ArrayFile, size: int) -> None:
    if size < stored.nbytes:
        raise _refuse(
            bundle_path,
            f"{location}: array file {stored.relative!r} is truncated: expected {stored.nbytes} bytes, found {size}",
        )
    if size > stored.nbytes:
        raise _refuse(
            bundle_path,
            f"{location}: array file {stored.relative!r} is too long: expected {stored.nbytes} bytes, found {size}",
        )


def _check_content(bundle_path: Path, location: str, stored: _ArrayFile, size: int, digest: str) -> None:
    _check_length(bundle_path, location, stored, size)  # again: the file may have changed since its stat
    if digest != stored.sha256:
        raise _refuse(
            bundle_path, f"{location}: array file {stored.relative!r} has sha256 {digest}: its content changed"
        )


def _is_inside(real_root: str, real_path: str) -> bool:
    return real_path != real_root and os.path.commonpath([real_root, real_path]) == real_root


def _one_line(text: str) -> str:
    """``text`` with control characters escaped, so a message stays one line whatever a bundle holds."""
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def _show(value: Any, limit: int = 80) -> str:
    """A short, one-line repr of a value taken from a bundle, for messages."""
    text = _one_line(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refuse(bundle_path: Path, problem: str) -> BundleError:
    return BundleError(_one_line(f"bundle {os.fspath(bundle_path)}: {problem}"))
