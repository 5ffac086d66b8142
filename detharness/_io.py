"""JSON encoding, atomic writes and terminal-safe text: what every file and line detharness writes
(bundles, reports, errors) goes through.

At the bottom of the package: it imports nothing of detharness, so records, backends and reports
can all use it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "json_dumps", "terminal_safe", "to_jsonable"]


def to_jsonable(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """``obj`` as plain JSON types: what ``json.dumps(..., allow_nan=False)`` accepts.

    Non-finite floats become the strings ``"inf"``, ``"-inf"`` and ``"nan"`` (JSON has no such
    numbers); numpy scalars become Python numbers, arrays lists, complex numbers ``[real, imag]``,
    tuples lists, sets sorted lists, enums their value, dataclasses dicts, paths strings, and a str
    subclass (torch's ``TorchVersion``) a plain str: pickled across a pipe, the subclass would make
    the reading process import its framework. Anything else is a TypeError, or what ``default``
    makes of it (``default=str`` for free-form records).
    """
    if obj is None or type(obj) in (bool, str):
        return obj
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (complex, np.complexfloating)):
        return [_float_to_json(obj.real), _float_to_json(obj.imag)]
    if isinstance(obj, (float, np.floating)):
        return _float_to_json(obj)
    if isinstance(obj, np.generic):
        # ml_dtypes scalars (bfloat16, float8) are np.generic but not np.floating
        return to_jsonable(obj.item(), default)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), default)
    if isinstance(obj, Mapping):
        return {_json_key(key): to_jsonable(value, default) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(item, default) for item in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(item, default) for item in obj), key=lambda item: (type(item).__name__, str(item)))
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value, default)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable({field.name: getattr(obj, field.name) for field in dataclasses.fields(obj)}, default)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if default is not None:
        return to_jsonable(default(obj))
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON")


def json_dumps(obj: Any, *, indent: int | None = None) -> str:
    """JSON text for ``obj`` after :func:`to_jsonable`; never emits NaN or Infinity literals."""
    return json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def _float_to_json(value: Any) -> float | str:
    number = float(value)
    if math.isnan(number):
        return "nan"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return number


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
        return str(int(key))
    raise TypeError(f"JSON object keys must be strings, got {type(key).__name__} {key!r}")


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (reports use it too); see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, sync_folder: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    A temp file in the same folder (a rename is atomic only within one file system), written,
    flushed and fsynced, then renamed over ``path``, then the folder fsynced so the rename survives
    a crash. The folder must exist. ``sync_folder=False`` leaves the folder's fsync to the caller,
    who writes many files into one folder and syncs it once before anything refers to them.
    """
    target = Path(path)
    temp = target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    descriptor = os.open(temp, flags, 0o644)  # 0o644 minus the umask, unlike mkstemp's 0o600
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    if sync_folder:
        fsync_dir(target.parent)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable, where the platform allows it."""
    if os.name == "nt":
        return  # Windows cannot open a directory for fsync; NTFS journals the rename itself
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems (network mounts) refuse fsync on directories
    finally:
        os.close(descriptor)


# -- text for a terminal ---------------------------------------------------------------------

# C0 controls but tab and newline, DEL, C1 controls (0x80-0x9f: a terminal may read 0x9b as CSI),
# the bidirectional marks, embeddings, overrides and isolates, and the Unicode line and paragraph
# separators (line breaks to some viewers, not to others).
_UNSAFE = "\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_UNSAFE_MULTILINE = re.compile(f"[{_UNSAFE}]")
_UNSAFE_ONE_LINE = re.compile(f"[\t\n{_UNSAFE}]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: object, *, multiline: bool = False) -> str:
    """``text`` with nothing a terminal would act on: control characters (escape sequences start
    with one), C1 controls and bidi overrides are written as visible escapes (``\\x1b``, ``\\u202e``).

    One line unless ``multiline``: a newline or tab is shown as ``\\n`` or ``\\t``. With
    ``multiline`` the text keeps its newlines (a ``\\r\\n`` line end counts as one) and tabs.
    Backslashes are left alone, so the function is idempotent and a Windows path reads as itself.
    """
    text = str(text)
    if multiline:
        return _UNSAFE_MULTILINE.sub(_escape, text.replace("\r\n", "\n"))
    return _UNSAFE_ONE_LINE.sub(_escape, text)
