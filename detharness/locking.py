"""One writer per bundle folder: a lock file, and the checks on a folder before a bundle goes there.

``detharness run --out DIR`` holds ``DIR/.detharness.lock`` (pid, host, start time) from before it
runs anything until its bundle is written, so a second ``run --out DIR`` started meanwhile refuses
with one line that names the holder instead of silently replacing the first one's bundle. The lock
is created with ``O_CREAT | O_EXCL``; a lock left by a process that no longer exists on this host is
taken over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import socket
from pathlib import Path
from types import TracebackType

from detharness.bundle import MANIFEST_NAME
from detharness.errors import UsageError

LOCK_NAME = ".detharness.lock"
#: What an interrupted bundle write can leave in a folder (besides the lock): the folder is still
#: one a new bundle may be written into.
_WRITER_LEFTOVERS = frozenset({"arrays", "parts", LOCK_NAME})


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _describe(holder: dict[str, object]) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {holder.get('started', '?')}"


class BundleLock:
    """The lock of the bundle folder ``path`` (created if missing); a context manager.

    ``what`` names the option in messages (``--out``). :meth:`acquire` raises
    :class:`~detharness.errors.UsageError` (exit 2) when another live process holds it.
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "--out") -> None:
        self.path = Path(path)
        self.what = what
        self.created_folder = False
        self.held: list[Path] = []

    @property
    def file(self) -> Path:
        return self.path / LOCK_NAME

    def _content(self) -> str:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started})

    def _create(self, file: Path) -> bool:
        try:
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, self._content().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        self.held.append(file)
        return True

    def acquire(self) -> BundleLock:
        if not self.path.exists():
            try:
                self.path.mkdir(parents=True)
                self.created_folder = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise UsageError(f"{self.what} {self.path}: cannot create the folder ({exc.strerror})") from None
        if not self.path.is_dir():
            raise UsageError(f"{self.what} {self.path}: exists and is not a folder")
        for _attempt in range(3):
            try:
                if self._create(self.file):
                    return self
            except OSError as exc:
                raise UsageError(f"{self.what} {self.path}: cannot write a lock file there ({exc.strerror})") from None
            holder = self.holder()
            if holder is None:
                continue  # released (or half-written) meanwhile: try again
            if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
                    and not _pid_alive(int(holder["pid"])):  # type: ignore[call-overload]
                with contextlib.suppress(FileNotFoundError):
                    self.file.unlink()  # a dead writer's lock on this host: take it over
                continue
            raise UsageError(f"{self.what} {self.path}: another detharness run is writing this bundle "
                             f"({_describe(holder)}); wait for it or choose another folder")
        raise UsageError(f"{self.what} {self.path}: cannot take the lock {self.file}; remove it if no run is writing")

    def holder(self) -> dict[str, object] | None:
        """Who holds the lock, as its file says; ``None`` when there is none or it cannot be read."""
        try:
            data = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def also_hold(self, folder: Path) -> None:
        """Write this lock into ``folder`` too (a bundle about to be renamed into :attr:`path`)."""
        self._create(folder / LOCK_NAME)

    def release(self) -> None:
        for file in self.held:
            with contextlib.suppress(FileNotFoundError):
                file.unlink()
        self.held.clear()
        if self.created_folder:
            # A folder this lock made and nothing was written into (an error before the bundle).
            with contextlib.suppress(OSError):
                self.path.rmdir()

    def __enter__(self) -> BundleLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def is_bundle(path: Path) -> bool:
    return (path / MANIFEST_NAME).is_file()


def check_out_folder(path: str | os.PathLike[str], *, replace: bool, what: str = "--out") -> None:
    """Refuse (exit 2) a ``--out`` that a new bundle must not go into.

    Allowed: a missing folder, an empty one (or one holding only what an interrupted write leaves),
    and, with ``replace``, a folder holding a bundle. Anything else (a file, a folder of other
    things, ``--out .``) is refused.
    """
    folder = Path(path)
    if not folder.exists():
        return
    if not folder.is_dir():
        raise UsageError(f"{what} {folder}: exists and is not a folder")
    if is_bundle(folder):
        if not replace:
            raise UsageError(f"{what} {folder}: a bundle is already there; choose a new folder or pass --replace")
        return
    entries = set(os.listdir(folder))
    if entries - _WRITER_LEFTOVERS:
        raise UsageError(f"{what} {folder}: not empty and not a bundle; choose a new or empty folder")


def staging_folder(path: Path) -> Path:
    """A new, empty sibling of ``path`` to write a replacing bundle into."""
    parent = path.absolute().parent
    staging = parent / f".{path.absolute().name}.new-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    return staging


def swap_in(staging: Path, path: Path) -> None:
    """Put the complete bundle ``staging`` at ``path``, removing what ``path`` held (a bundle)."""
    if path.exists():
        old = path.absolute().parent / f".{path.absolute().name}.old-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
        os.rename(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, path)
