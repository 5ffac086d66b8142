"""A persistent cache of prepared artefacts (ONNX exports), and where jax keeps its compiles.

The folder is ``$DETHARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/detharness``, else
``~/.cache/detharness``. detharness's own entries live under ``exports/<kind>/<key>``; jax's
persistent compilation cache is pointed at ``jax/`` (jax manages that folder itself).

An entry's key (:func:`key`) is the sha256 of a canonical JSON of everything that can change the
artefact. Each entry file holds a header (a magic, its own key and the sha256 of the content) and
the content: :func:`get` checks all three, and an entry that fails (cut short, flipped bits, a file
of someone else's) is removed and reported as a miss, never used. :func:`put` writes atomically (a
temp file renamed into place), so two runs may share the cache; after a put the least recently used
entries are evicted until the entries fit ``$DETHARNESS_CACHE_MAX_BYTES`` (default 2 GiB). A hit
touches its entry's modification time, which is the "last used" stamp (atime is often not kept).

The cache is on unless turned off: ``--no-cache`` (``run`` and ``matrix``) sets
``DETHARNESS_NO_CACHE=1`` for the run and its workers; :func:`enabled_as` sets it for this process.
Whether a variant used it is recorded in its ``cache`` field; it never changes a result.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import sysconfig
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from detharness._io import atomic_write_bytes, to_jsonable
from detharness.errors import UsageError

#: Set to 1 (``--no-cache``) to turn the cache off for a run and the workers it starts.
NO_CACHE_VARIABLE = "DETHARNESS_NO_CACHE"
MAX_BYTES_VARIABLE = "DETHARNESS_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3

_MAGIC = b"DHCACHE1"
_HEADER = len(_MAGIC) + 64 + 32  # magic, the key (hex), the content's sha256 (raw)
_KINDS_FOLDER = "exports"
_JAX_FOLDER = "jax"  # jax's own cache, one subfolder per architecture (jax_folder)

# None: follow DETHARNESS_NO_CACHE; True/False: set for this process by enabled_as().
_override: bool | None = None


def folder() -> Path:
    """The cache folder (not created here)."""
    root = os.environ.get("DETHARNESS_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "detharness"


def unwritable() -> str | None:
    """Why entries cannot be written in :func:`folder` (it, or the nearest of its parents that exists,
    is a file or is not writable), or None. A put that fails costs the reuse, never the run: this is
    what says so."""
    path = folder()
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def jax_folder() -> Path:
    """Where jax's persistent compilation cache goes: one folder per architecture, so an emulated
    aarch64 profile and the x86 host never share compiled programs (jax's key may not say which)."""
    import platform

    return folder() / _JAX_FOLDER / (platform.machine().lower() or "unknown")


def enabled() -> bool:
    """Whether the cache is on for this process."""
    if _override is not None:
        return _override
    return os.environ.get(NO_CACHE_VARIABLE, "").strip().lower() in ("", "0", "false", "no")


@contextlib.contextmanager
def enabled_as(flag: bool) -> Iterator[None]:
    """The cache on (True) or off (False) for this process while the block runs."""
    global _override
    previous = _override
    _override = flag
    try:
        yield
    finally:
        _override = previous


class CacheSettingError(UsageError):
    """A cache setting (``$DETHARNESS_CACHE_MAX_BYTES``) that cannot be understood: one line, exit 2."""


_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(i)?)?b?", re.IGNORECASE)
_SIZE_UNITS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """A size in bytes from ``text``: a number of bytes, or a number with a unit, ``k``, ``M``,
    ``G``, ``T`` (powers of 1000) or ``Ki``, ``Mi``, ``Gi``, ``Ti`` (powers of 1024), each with or
    without a trailing ``B`` (``2G``, ``1.5GiB``, ``500MB``). Raises ValueError for anything else,
    and for a size under one byte."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a size: give bytes, or a number with k, M, G, T (or Ki, Mi, Gi, Ti)")
    number, unit, binary = match.groups()
    scale = (1024 if binary else 1000) ** _SIZE_UNITS[unit.lower()] if unit else 1
    size = int(float(number) * scale)
    if size < 1:
        raise ValueError(f"{text!r} is under one byte")
    return size


def max_bytes() -> int:
    """The cap on detharness's own entries: ``$DETHARNESS_CACHE_MAX_BYTES`` (:func:`parse_size`),
    else 2 GiB. Raises :class:`CacheSettingError` for a value it cannot read: a cap that is quietly
    replaced by the default, or a negative one that evicts everything, would not be what was asked."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as exc:
        raise CacheSettingError(f"{MAX_BYTES_VARIABLE}: {exc} (e.g. 2G or 500MiB; to turn the cache off, "
                                f"--no-cache or {NO_CACHE_VARIABLE}=1)") from None


def key(parts: Mapping[str, Any]) -> str:
    """sha256 (hex) of a canonical JSON of ``parts``: keys sorted, no whitespace, non-JSON as str."""
    text = json.dumps(to_jsonable(dict(parts), default=str), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_name(kind: str, entry: str) -> None:
    if not kind or not kind.replace("_", "").isalnum():
        raise ValueError(f"cache kind {kind!r}: letters, digits and _ only")
    if len(entry) != 64 or any(c not in "0123456789abcdef" for c in entry):
        raise ValueError(f"cache key {entry!r}: 64 lowercase hex digits (cache.key())")


def _path(kind: str, entry: str) -> Path:
    _check_name(kind, entry)
    return folder() / _KINDS_FOLDER / kind / entry


def get(kind: str, entry: str) -> bytes | None:
    """The content stored under ``(kind, entry)``; None for a miss (absent, or corrupt and removed)."""
    path = _path(kind, entry)
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    data = blob[_HEADER:]
    ok = (len(blob) >= _HEADER and blob[:len(_MAGIC)] == _MAGIC
          and blob[len(_MAGIC):len(_MAGIC) + 64] == entry.encode("ascii")
          and blob[len(_MAGIC) + 64:_HEADER] == hashlib.sha256(data).digest())
    if not ok:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)  # last used: what eviction orders by
    return data


def put(kind: str, entry: str, data: bytes) -> None:
    """Store ``data`` under ``(kind, entry)`` atomically, then evict the least recently used entries
    beyond the size cap (never the one just written)."""
    path = _path(kind, entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _MAGIC + entry.encode("ascii") + hashlib.sha256(data).digest() + data)
    _evict(max_bytes(), keep=path)


def _entries() -> list[tuple[float, int, Path]]:
    """(last used, size, path) of every entry; temp files of writes in flight are left out."""
    found = []
    root = folder() / _KINDS_FOLDER
    if not root.is_dir():
        return []
    for kind in root.iterdir():
        if not kind.is_dir():
            continue
        for path in kind.iterdir():
            if path.name.startswith("."):
                continue
            with contextlib.suppress(OSError):
                stat = path.stat()
                found.append((stat.st_mtime, stat.st_size, path))
    return found


def _evict(cap: int, keep: Path | None = None) -> None:
    entries = sorted(_entries(), key=lambda e: (e[0], str(e[2])))
    total = sum(size for _, size, _ in entries)
    for _, size, path in entries:
        if total <= cap:
            break
        if path == keep:
            continue
        with contextlib.suppress(OSError):
            path.unlink()
        total -= size


def _folder_bytes(path: Path) -> tuple[int, int]:
    files = size = 0
    if path.is_dir():
        for item in path.rglob("*"):
            with contextlib.suppress(OSError):
                if item.is_file():
                    files += 1
                    size += item.stat().st_size
    return files, size


def info() -> dict[str, Any]:
    """The folder, detharness's entries and their bytes (per kind too), the size cap, and jax's folder."""
    return {**_usage(), "max_bytes": max_bytes()}


def _usage() -> dict[str, Any]:
    kinds: dict[str, dict[str, int]] = {}
    for _, size, path in _entries():
        counts = kinds.setdefault(path.parent.name, {"entries": 0, "bytes": 0})
        counts["entries"] += 1
        counts["bytes"] += size
    jax_root = folder() / _JAX_FOLDER
    jax_files, jax_bytes = _folder_bytes(jax_root)
    return {"folder": str(folder()), "enabled": enabled(), "unwritable": unwritable(),
            "entries": sum(k["entries"] for k in kinds.values()), "bytes": sum(k["bytes"] for k in kinds.values()),
            "kinds": dict(sorted(kinds.items())), "jax": {"folder": str(jax_root), "files": jax_files, "bytes": jax_bytes}}


def clear() -> dict[str, Any]:
    """Remove every entry and jax's compiles (the matrix's version overlays are left alone);
    returns what there was before (:func:`info` without the size cap, so that a cap it cannot read
    does not stand in the way of emptying the folder)."""
    before = _usage()
    for path in (folder() / _KINDS_FOLDER, folder() / _JAX_FOLDER):
        shutil.rmtree(path, ignore_errors=True)
    return before


# -- what goes into keys ------------------------------------------------------------------------

_LIBRARY_ROOTS: tuple[str, ...] | None = None
_FILE_HASHES: dict[str, tuple[int, int, str]] = {}


def _library_roots() -> tuple[str, ...]:
    global _LIBRARY_ROOTS
    if _LIBRARY_ROOTS is None:
        paths = sysconfig.get_paths()
        roots = {os.path.realpath(paths[name]) for name in ("stdlib", "platstdlib", "purelib", "platlib") if name in paths}
        _LIBRARY_ROOTS = tuple(sorted(r.rstrip(os.sep) + os.sep for r in roots))
    return _LIBRARY_ROOTS


@functools.cache
def _resolved(path: str) -> tuple[str, bool]:
    """``path``'s real path, and whether that is installed code. Remembered per path for the
    process: a key walks every loaded module (2000 of them once torch is imported), and resolving
    each one's links again for every export was 0.1 s of each cached export's lookup."""
    real = os.path.realpath(path)
    return real, real.startswith(_library_roots())


def is_library_file(path: str) -> bool:
    """Whether ``path`` is installed code (the standard library or site-packages): its package's
    version stands for it in a key, instead of its bytes."""
    return _resolved(path)[1]


def file_digest(path: str) -> str:
    """sha256 of a file's bytes (remembered while its size and modification time stay); "missing"
    when it cannot be read."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError:
        return "missing"
    known = _FILE_HASHES.get(real)
    if known is not None and known[:2] == (stat.st_mtime_ns, stat.st_size):
        return known[2]
    try:
        digest = hashlib.sha256(Path(real).read_bytes()).hexdigest()
    except OSError:
        return "missing"
    _FILE_HASHES[real] = (stat.st_mtime_ns, stat.st_size, digest)
    return digest


def user_source_files(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """sha256 of every source file of user code loaded in this process (case files, what they
    include and import), plus ``extra`` files: everything a builder may call. Installed packages
    are left out (their versions go in the keys)."""
    import sys

    files = {os.path.realpath(f) for f in extra or ()}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py"):
            real, library = _resolved(path)
            if not library:
                files.add(real)
    package = os.path.realpath(os.path.dirname(__file__)) + os.sep
    return {f: file_digest(f) for f in sorted(files) if not f.startswith(package)}
