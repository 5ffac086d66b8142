"""Overlays: a profile's exact pins installed with ``pip install --no-deps --target`` into a cached
folder put first on ``PYTHONPATH``, reused while its stamp matches (for an emulated profile, the
wheels of the emulated platform)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detharness.matrix.profiles import Pin

if TYPE_CHECKING:
    from detharness.matrix.emulation import Arch

STAMP = ".detharness-overlay.json"
PIP_TIMEOUT = 1800.0


class SetupError(Exception):
    """A profile that could not be set up (its overlay failed to install): reported, the rest go on."""


def default_overlay_cache() -> Path:
    """``overlays`` in detharness's cache folder (:func:`detharness.cache.folder`:
    ``$DETHARNESS_CACHE_DIR``, else ``$XDG_CACHE_HOME/detharness``, else ``~/.cache/detharness``)."""
    from detharness import cache

    return cache.folder() / "overlays"


def overlay_key(pins: Sequence[Pin], python: str = sys.executable, target: Arch | None = None) -> dict[str, Any]:
    """What an overlay was built for: its pins, and the interpreter and platform its wheels fit."""
    if target is not None:  # wheels for an emulated interpreter: Debian's CPython 3.11 on that machine
        return {"pins": sorted(p.requirement for p in pins), "python": f"cpython-311 {target.name}"}
    info = subprocess.run([python, "-c", "import sys, platform; print(sys.implementation.cache_tag, platform.machine())"],
                          capture_output=True, text=True, check=False, timeout=60)
    tag = info.stdout.strip() if info.returncode == 0 else f"{platform.python_implementation()} {platform.machine()}"
    return {"pins": sorted(p.requirement for p in pins), "python": tag}


def ensure_overlay(pins: Sequence[Pin], cache: Path, *, python: str = sys.executable,
                   log: Callable[[str], None] = lambda _: None, target: Arch | None = None) -> tuple[Path, bool]:
    """The overlay folder for ``pins``, installed now or reused; returns (folder, reused).

    The install goes into a temporary folder that is renamed into place only after pip succeeded and
    the stamp is written, so a half-installed overlay (pip killed, disk full) is never reused.
    ``--only-binary`` keeps pip from compiling numpy from source when a wheel is missing.

    With ``target`` (an emulated architecture), the host's pip installs that platform's wheels, and
    the host writes their bytecode: the emulated interpreter does not write any (the host's
    ``PYTHONDONTWRITEBYTECODE`` reaches it) and would compile every module it imports, emulated.
    """
    key = overlay_key(pins, python, target)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    final = cache / digest
    if _stamp_matches(final, key):
        return final, True
    log(f"installing {' '.join(key['pins'])} into {final}")
    with building(final) as temp:
        command = [python, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-input",
                   "--disable-pip-version-check", "--quiet", "--target", str(temp),
                   *(target.pip_target_args() if target is not None else []), *key["pins"]]
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise SetupError(f"pip install {' '.join(key['pins'])} took longer than {PIP_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            raise SetupError(f"pip install {' '.join(key['pins'])} failed (exit {done.returncode}): "
                             f"{_last_line(done.stderr, prefer=('ERROR:',)) or _last_line(done.stdout)}")
        if target is not None:
            from detharness.matrix.emulation.sysroot import compile_tree

            log(f"compiling the {target.name} wheels' bytecode")
            compile_tree(temp, python=python)
        (temp / STAMP).write_text(json.dumps({**key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
        # another matrix may have built it meanwhile; theirs is as good
        reused = publish(temp, final, lambda: _stamp_matches(final, key))
    return final, reused


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """A new, empty temporary folder beside ``final`` to build it in; removed if the build fails.

    With :func:`publish`, a folder of the cache is only ever seen complete: a half-built one (a run
    killed, a full disk) is never used, and two runs building the same folder both succeed.
    """
    temp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    try:
        yield temp
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def publish(temp: Path, final: Path, built: Callable[[], bool]) -> bool:
    """Rename the complete ``temp`` to ``final``; where another run finished ``final`` meanwhile
    (``built()``), keep theirs (a matrix may be running under it) and return True. A stale or
    broken ``final`` is replaced."""
    if built():
        shutil.rmtree(temp, ignore_errors=True)
        return True
    shutil.rmtree(final, ignore_errors=True)
    os.replace(temp, final)
    return False


def _stamp_matches(folder: Path, key: Mapping[str, Any]) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("pins") == key["pins"] and stamp.get("python") == key["python"]


def _last_line(text: str, prefer: tuple[str, ...] = ()) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(prefer) and prefer:
            return line
    return lines[-1] if lines else ""
