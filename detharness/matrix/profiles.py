"""Profiles files: the TOML that declares a matrix's environments (variables, pins, emulation).

See :mod:`detharness.matrix` for the file's shape; every problem is one :class:`ProfileError` line
naming the file (exit 2).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detharness.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport (a dependency there)
    import tomli as tomllib

DEFAULT_PROFILE_TIMEOUT = 3600.0
MATRIX_KEYS = ("description", "baseline", "cases", "keyword", "tags", "backends", "device", "timeout",
               "profile_timeout", "overlays")
PROFILE_KEYS = ("description", "env", "unset", "pins", "emulate", "cpu", "keyword", "timeout", "profile_timeout")
# Profile names become folder names under --out and are shown in report columns.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_RESERVED_SUFFIXES = (".log", ".md", ".json", ".txt")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CPU_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# An exact pin, as pip's requirement syntax spells it: the only form that makes an overlay reproducible.
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*==\s*(?P<version>[A-Za-z0-9.+!_-]+)$")


class ProfileError(UsageError):
    """A profiles file or pins file that cannot be used: one line, exit 2."""


@dataclass(frozen=True)
class Pin:
    name: str
    version: str

    @property
    def requirement(self) -> str:
        return f"{self.name}=={self.version}"

    @property
    def fingerprint_key(self) -> str:
        """Where the environment fingerprint records this package's version (``ml_dtypes.version``)."""
        return re.sub(r"[-_.]+", "_", self.name).lower() + ".version"


@dataclass
class Profile:
    name: str
    description: str = ""
    env: dict[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()
    pins: tuple[Pin, ...] = ()
    pins_files: tuple[str, ...] = ()
    #: An architecture to emulate (``aarch64``) and the emulated CPU model (QEMU's name).
    emulate: str | None = None
    cpu: str | None = None
    #: This profile's own -k (the cases worth emulating); a command-line -k narrows it further.
    keyword: str | None = None
    timeout: float | None = None
    profile_timeout: float | None = None

    def describe(self) -> str:
        """``ATEN_CPU_CAPABILITY=default``, ``numpy==2.2.6``: what this profile changes, in one line."""
        parts = [f"emulated {self.emulate} (QEMU, cpu {self.cpu})"] if self.emulate else []
        parts += [f"{k}={v}" for k, v in self.env.items()] + [f"-{name}" for name in self.unset]
        if self.emulate and self.pins_files:
            parts.append(f"wheels {', '.join(self.pins_files)}")
        else:
            parts += [pin.requirement for pin in self.pins]
        return " ".join(parts) or "(as installed)"


@dataclass
class MatrixSpec:
    path: str
    profiles: list[Profile]
    baseline: str
    description: str = ""
    cases: list[str] = field(default_factory=list)
    keyword: str | None = None
    tags: list[str] = field(default_factory=list)
    backends: list[str] = field(default_factory=list)
    device: str = "all"
    timeout: float | None = None
    profile_timeout: float = DEFAULT_PROFILE_TIMEOUT
    overlays: str | None = None

    def ordered(self) -> list[Profile]:
        """The baseline first (its bundle provides every other profile's inputs), then file order."""
        return sorted(self.profiles, key=lambda p: p.name != self.baseline)

    def select(self, names: Sequence[str]) -> MatrixSpec:
        """Only the named profiles (``--profile``), in file order; the baseline stays if named or not."""
        if not names:
            return self
        known = {p.name for p in self.profiles}
        for name in names:
            if name not in known:
                raise ProfileError(f"{self.path}: no profile {name!r}; profiles: {', '.join(sorted(known))}")
        wanted = set(names) | {self.baseline}
        return MatrixSpec(**{**self.__dict__, "profiles": [p for p in self.profiles if p.name in wanted]})


# -- parsing ----------------------------------------------------------------------------------------


def load_profiles(path: str | os.PathLike[str]) -> MatrixSpec:
    """Read and check a profiles file; any problem is one :class:`ProfileError` line naming the file."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{where}: cannot read: {exc}") from None
    return parse_profiles(text, where=where, base=Path(path).resolve().parent)


def parse_profiles(text: str, *, where: str = "<profiles>", base: Path | None = None) -> MatrixSpec:
    """Parse a profiles file's text. Relative paths in it (pins, cases, overlays) are from ``base``."""
    base = base or Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(data) - {"matrix", "profiles"})
    if unknown:
        raise ProfileError(f"{where}: unknown table [{unknown[0]}]; a profiles file has [matrix] and [profiles.NAME]")
    settings = _table(data.get("matrix", {}), f"{where}: [matrix]")
    _no_unknown_keys(settings, MATRIX_KEYS, f"{where}: [matrix]")
    raw_profiles = _table(data.get("profiles", {}), f"{where}: [profiles]")
    if not raw_profiles:
        raise ProfileError(f"{where}: has no [profiles.NAME] tables")
    profiles = [_profile(name, body, where, base) for name, body in raw_profiles.items()]
    baseline = settings.get("baseline", profiles[0].name)
    if not isinstance(baseline, str) or baseline not in raw_profiles:
        raise ProfileError(f"{where}: [matrix] baseline {baseline!r} is not a profile; profiles: "
                           f"{', '.join(raw_profiles)}")
    device = settings.get("device", "all")
    if device not in ("cpu", "cuda", "all"):
        raise ProfileError(f"{where}: [matrix] device {device!r}: choose cpu, cuda or all")
    keyword = settings.get("keyword")
    if keyword is not None and (not isinstance(keyword, str) or not keyword.strip()):
        raise ProfileError(f"{where}: [matrix] keyword must be a non-empty string (a -k expression)")
    overlays = settings.get("overlays")
    if overlays is not None and not isinstance(overlays, str):
        raise ProfileError(f"{where}: [matrix] overlays must be a folder path (a string)")
    return MatrixSpec(
        path=where, profiles=profiles, baseline=baseline,
        description=_string(settings.get("description", ""), f"{where}: [matrix] description"),
        cases=[str(base / p) for p in _strings(settings.get("cases", []), f"{where}: [matrix] cases")],
        keyword=keyword,
        tags=_strings(settings.get("tags", []), f"{where}: [matrix] tags"),
        backends=_strings(settings.get("backends", []), f"{where}: [matrix] backends"),
        device=device,
        timeout=_seconds(settings.get("timeout"), f"{where}: [matrix] timeout"),
        profile_timeout=_seconds(settings.get("profile_timeout", DEFAULT_PROFILE_TIMEOUT),
                                 f"{where}: [matrix] profile_timeout") or DEFAULT_PROFILE_TIMEOUT,
        overlays=str(base / overlays) if overlays else None,
    )


def _table(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(f"{what} must be a table, got {type(value).__name__}")
    return value


def _no_unknown_keys(table: Mapping[str, Any], allowed: Sequence[str], what: str) -> None:
    for key in table:
        if key not in allowed:
            raise ProfileError(f"{what}: unknown key {key!r}; known keys: {', '.join(allowed)}")


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProfileError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _strings(value: Any, what: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ProfileError(f"{what} must be a string or a list of strings")
    return list(value)


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ProfileError(f"{what} must be a positive number of seconds, got {value!r}")
    return float(value)


def _profile(name: str, body: Any, where: str, base: Path) -> Profile:
    what = f"{where}: [profiles.{name}]"
    if not _NAME.match(name) or name.endswith(_RESERVED_SUFFIXES):
        raise ProfileError(f"{what}: a profile name is 1-64 letters, digits, '.', '_' or '-', starting with a "
                           f"letter or digit, and not ending in {', '.join(_RESERVED_SUFFIXES)} (it names a folder)")
    body = _table(body, what)
    for key, value in body.items():
        looks_dotted = isinstance(value, dict) and (key[:1].isdigit() or (value and set(value) <= set(PROFILE_KEYS)))
        if key not in PROFILE_KEYS and looks_dotted:
            # [profiles.numpy-2.2] is the table "numpy-2" holding a table "2": TOML splits on dots
            raise ProfileError(f"{what}: unknown key {key!r}; a profile name with a dot must be quoted: "
                               f"[profiles.\"{name}.{key}\"]")
    _no_unknown_keys(body, PROFILE_KEYS, what)
    env_table = _table(body.get("env", {}), f"{what} env")
    env: dict[str, str] = {}
    for variable, value in env_table.items():
        if not _VARIABLE.match(variable):
            raise ProfileError(f"{what}: env: {variable!r} is not a variable name")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ProfileError(f"{what}: env {variable} must be a string or a number, got "
                               f"{type(value).__name__} (write \"1\" or \"0\" for a flag)")
        env[variable] = str(value)
    unset = _strings(body.get("unset", []), f"{what} unset")
    for variable in unset:
        if not _VARIABLE.match(variable):
            raise ProfileError(f"{what}: unset: {variable!r} is not a variable name")
        if variable in env:
            raise ProfileError(f"{what}: {variable} is both set (env) and unset")
    pins_files = _strings(body.get("pins", []), f"{what} pins")
    pins: dict[str, Pin] = {}
    for file in pins_files:
        for pin in parse_pins(base / file, shown=file):
            key = _normalize(pin.name)
            if key in pins and pins[key] != pin:
                raise ProfileError(f"{what}: {pin.name} is pinned twice ({pins[key].version} and {pin.version})")
            pins[key] = pin
    emulate = body.get("emulate")
    cpu = body.get("cpu")
    if emulate is not None:
        from detharness.matrix import emulation

        if not isinstance(emulate, str) or emulate not in emulation.ARCHES:
            raise ProfileError(f"{what}: emulate {emulate!r}: choose from {', '.join(emulation.ARCHES)}")
        if cpu is None:
            cpu = emulation.ARCHES[emulate].default_cpu
    if cpu is not None:
        if emulate is None:
            raise ProfileError(f"{what}: cpu {cpu!r} is only for an emulated profile (add emulate = \"aarch64\")")
        if not isinstance(cpu, str) or not _CPU_MODEL.match(cpu):
            raise ProfileError(f"{what}: cpu {cpu!r} is not a QEMU CPU model name (qemu-aarch64-static -cpu help)")
    keyword = body.get("keyword")
    if keyword is not None and (not isinstance(keyword, str) or not keyword.strip()):
        raise ProfileError(f"{what}: keyword must be a non-empty string (a -k expression)")
    return Profile(name=name, description=_string(body.get("description", ""), f"{what} description"), env=env,
                   unset=tuple(unset), pins=tuple(pins.values()), pins_files=tuple(pins_files),
                   emulate=emulate, cpu=cpu, keyword=keyword,
                   timeout=_seconds(body.get("timeout"), f"{what} timeout"),
                   profile_timeout=_seconds(body.get("profile_timeout"), f"{what} profile_timeout"))


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(path: str | os.PathLike[str], *, shown: str | None = None) -> list[Pin]:
    """Exact pins from a requirements-style file: ``name==version`` lines, ``#`` comments, blank lines.

    Ranges, URLs and pip options are refused: an overlay is reused only while its pins are exactly
    what was installed, and pip would otherwise reach for whatever is newest that day.
    """
    shown = shown or str(path)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ProfileError(f"pins file {shown}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"pins file {shown}: cannot read: {exc}") from None
    pins = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        match = _PIN.match(text)
        if match is None:
            raise ProfileError(f"pins file {shown}, line {number}: {text!r} is not an exact pin (write name==version)")
        pins.append(Pin(match["name"], match["version"]))
    if not pins:
        raise ProfileError(f"pins file {shown}: pins nothing")
    return pins

