"""``detharness matrix``: the same cases under several environment profiles, then an N-way compare.

A profiles file (TOML, see ``ci/profiles.toml``) declares what changes between runs on one machine:

    [matrix]
    baseline = "baseline"            # optional; default: the first profile
    keyword = "softmax and torch"    # optional -k; cases, tags, backends, device, timeout too

    [profiles.baseline]

    [profiles.aten-default]
    env = { ATEN_CPU_CAPABILITY = "default" }

    [profiles.numpy-2.2]
    pins = "pins/numpy-2.2.txt"      # exact pins, installed into an overlay

Each profile runs ``python -m detharness run`` in its own process, with its variables set and, for
pins, an overlay first on ``PYTHONPATH``: the pinned packages installed with ``pip install --no-deps
--target`` into a folder of their own, so a version profile needs no virtual environment of its
own and leaves the installed one alone. Overlays live in a cache, keyed by a hash of the pins and
the interpreter, and are reused while their stamp matches. Every profile after the first replays the
first one's inputs (``--inputs-from``), so a numpy version that draws other random numbers does not
pass for a numerical change.

A profile that fails to set up (pip cannot install a pin) or to run is reported with the reason and
the rest go on; the bundles that exist are compared with :mod:`detharness.attribution`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detharness.emulation import Prepared, Unavailable
from detharness.errors import DetHarnessError, UsageError
from detharness.results import Outcome, Status

if TYPE_CHECKING:
    from detharness.emulation import Arch
    from detharness.record import RunRecord

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 reads TOML with the tomli backport (a dependency there)
    import tomli as tomllib

STAMP = ".detharness-overlay.json"
DEFAULT_PROFILE_TIMEOUT = 3600.0
DEFAULT_VARIANT_TIMEOUT = 600.0  # detharness run's --timeout
#: How much longer an emulated profile may take, per variant and in all, unless it says its own
#: timeout: emulation runs whole programs about 13x slower, matrix products up to 450x.
EMULATION_SLOWDOWN = 10
PIP_TIMEOUT = 1800.0
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
        from detharness import emulation

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


# -- overlays ---------------------------------------------------------------------------------------


class SetupError(Exception):
    """A profile that could not be set up (its overlay failed to install): reported, the rest go on."""


def default_overlay_cache() -> Path:
    """``$DETHARNESS_CACHE_DIR/overlays``, else the XDG cache folder (``~/.cache/detharness/overlays``)."""
    root = os.environ.get("DETHARNESS_CACHE_DIR")
    if root:
        return Path(root) / "overlays"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "detharness" / "overlays"


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
    cache.mkdir(parents=True, exist_ok=True)
    temp = cache / f".tmp-{digest}-{os.getpid()}"
    shutil.rmtree(temp, ignore_errors=True)
    command = [python, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--quiet", "--target", str(temp),
               *(target.pip_target_args() if target is not None else []), *key["pins"]]
    log(f"installing {' '.join(key['pins'])} into {final}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=PIP_TIMEOUT)
    except subprocess.TimeoutExpired:
        shutil.rmtree(temp, ignore_errors=True)
        raise SetupError(f"pip install {' '.join(key['pins'])} took longer than {PIP_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        shutil.rmtree(temp, ignore_errors=True)
        raise SetupError(f"pip install {' '.join(key['pins'])} failed (exit {done.returncode}): "
                         f"{_last_line(done.stderr, prefer=('ERROR:',)) or _last_line(done.stdout)}")
    if target is not None:
        from detharness.emulation.sysroot import compile_tree

        log(f"compiling the {target.name} wheels' bytecode")
        try:
            compile_tree(temp, python=python)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
    (temp / STAMP).write_text(json.dumps({**key, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2) + "\n")
    if _stamp_matches(final, key):  # another matrix built it meanwhile; theirs is as good
        shutil.rmtree(temp, ignore_errors=True)
        return final, True
    shutil.rmtree(final, ignore_errors=True)  # a stale or broken folder of that name
    os.replace(temp, final)
    return final, False


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


# -- running ----------------------------------------------------------------------------------------


@dataclass
class ProfileOutcome:
    """What happened to one profile: ``ok``, ``errors`` (it ran and wrote its bundle, but some of its
    variants or checks errored: ``errors`` counts them), ``setup failed`` or ``run failed``, and why."""

    name: str
    changes: str
    status: str = "ok"
    reason: str = ""
    errors: int = 0
    bundle: str | None = None
    log: str | None = None
    exit_code: int | None = None
    seconds: float = 0.0
    overlay: str | None = None
    overlay_reused: bool | None = None
    environment_id: str | None = None
    torch_cpu_capability: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: ``aarch64 qemu-7.2.22 cpu=neoverse-n1`` for an emulated profile (``machine.emulated``).
    emulated: str | None = None
    command: str = ""
    # The bundle as read back after the run (every array's hash checked): the report compares this
    # one rather than reading and hashing the bundle a second time.
    record: RunRecord | None = field(default=None, repr=False, compare=False)

    @property
    def ran(self) -> bool:
        """Whether the profile wrote a bundle that can be compared (``ok`` or ``errors``)."""
        return self.status in RAN_STATUSES

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "record"}


#: The statuses of a profile whose run wrote a readable bundle.
RAN_STATUSES: tuple[str, ...] = ("ok", "errors")


def _run_errors(outcome: ProfileOutcome, record: RunRecord) -> None:
    """A run that wrote its bundle but had errors is ``errors``, never ``ok``: say how many and the first."""
    from detharness.report._format import headline

    failed = [r for r in record.verdicts if r.status == Status.ERROR]
    if failed:
        count, first = len(failed), f"{failed[0].variant}: {headline(failed[0].message) or 'error'}"
    else:  # a bundle without the run's verdicts: its variants say it
        broken = [v for v in record.variants.values() if v.status == Outcome.ERROR]
        count = len(broken)
        first = f"{broken[0].id}: {headline(broken[0].error) or 'error'}" if broken else ""
    if not count:
        return
    outcome.errors = count
    outcome.status = "errors"
    outcome.reason = (f"its run had {count} error{'s' if count != 1 else ''} (exit {outcome.exit_code}); "
                      f"first: {first} (see {outcome.log})")


def profile_environment(profile: Profile, overlay: Path | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables a profile's process runs with: ours, minus ``unset``, plus ``env``, overlay first."""
    env = dict(os.environ if base is None else base)
    for variable in profile.unset:
        env.pop(variable, None)
    env.update(profile.env)
    if overlay is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(overlay), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_command(spec: MatrixSpec, bundle: Path, *, keyword: str | None, inputs_from: Path | None,
                python: str = sys.executable, profile: Profile | None = None) -> list[str]:
    """The ``detharness run`` command line of one profile.

    A profile's own ``keyword`` narrows the matrix's (or the command line's) ``-k``; its ``timeout``
    replaces the matrix's. An emulated profile names the built-in cases' folder when the matrix
    names none: the emulated interpreter cannot see where the host installed them.
    """
    command = [python, "-m", "detharness", "run", "--out", str(bundle), "--device", spec.device]
    cases = spec.cases
    if not cases and profile is not None and profile.emulate:
        from detharness.cases import builtin_cases_path

        cases = [str(builtin_cases_path())]
    for path in cases:
        command += ["--cases", path]
    expressions = [k for k in (profile.keyword if profile else None, keyword or spec.keyword) if k]
    if expressions:
        command += ["-k", expressions[0] if len(expressions) == 1 else " and ".join(f"({k})" for k in expressions)]
    for tag in spec.tags:
        command += ["--tag", tag]
    for backend in spec.backends:
        command += ["--backend", backend]
    timeout = profile.timeout if profile is not None and profile.timeout is not None else spec.timeout
    if profile is not None and profile.emulate and profile.timeout is None:
        timeout = (timeout or DEFAULT_VARIANT_TIMEOUT) * EMULATION_SLOWDOWN
    if timeout is not None:
        command += ["--timeout", f"{timeout:g}"]
    if inputs_from is not None:
        command += ["--inputs-from", str(inputs_from)]
    return command


def _check_outcome(outcome: ProfileOutcome, profile: Profile, environment: Mapping[str, Any]) -> None:
    """Record what really ran, and fail a profile whose pins or emulation did not take effect."""
    if profile.emulate and (environment.get("machine.arch") != profile.emulate
                            or environment.get("machine.emulated") != outcome.emulated):
        outcome.status = "run failed"
        outcome.reason = (f"the run was not emulated as asked: machine.arch={environment.get('machine.arch')}, "
                          f"machine.emulated={environment.get('machine.emulated')}")
        return
    outcome.torch_cpu_capability = environment.get("torch.cpu_capability")
    asked = profile.env.get("ATEN_CPU_CAPABILITY")
    used = outcome.torch_cpu_capability
    if asked and used and asked.lower() != str(used).lower():
        # torch takes an unknown or unsupported level silently and runs another one
        outcome.notes.append(f"ATEN_CPU_CAPABILITY={asked} asked for; torch ran {used}")
    wrong = []
    for pin in profile.pins:
        if pin.fingerprint_key not in environment:
            continue  # not a package the fingerprint records: nothing to check against
        recorded = environment.get(pin.fingerprint_key)
        outcome.versions[pin.name] = recorded
        same = recorded == pin.version or ("+" not in pin.version and str(recorded).split("+", 1)[0] == pin.version)
        if not same:
            wrong.append(f"{pin.name} {recorded} ran, {pin.version} pinned")
    if wrong:
        outcome.status = "run failed"
        outcome.reason = "the overlay did not take effect: " + "; ".join(wrong)


def run_matrix(spec: MatrixSpec, out: str | os.PathLike[str], *, keyword: str | None = None,
               overlays: str | os.PathLike[str] | None = None, python: str = sys.executable,
               progress: Callable[[str], None] = lambda _: None, intermediates: bool = False) -> list[ProfileOutcome]:
    """Set up and run every profile, the baseline first; a failed one is recorded and the rest go on.

    Bundles go to ``OUT/<profile>``, each run's output to ``OUT/<profile>.log``. Runs are sequential:
    thread-count profiles need the machine's cores to themselves, and timings stay comparable.
    """
    from detharness import record as record_mod

    out_dir = Path(out)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UsageError(f"--out {out}: not an empty folder; choose a new one")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = Path(overlays) if overlays else Path(spec.overlays) if spec.overlays else default_overlay_cache()
    profiles = spec.ordered()
    outcomes: list[ProfileOutcome] = []
    inputs_from: Path | None = None
    for index, profile in enumerate(profiles, 1):
        start = time.perf_counter()
        outcome = ProfileOutcome(name=profile.name, changes=profile.describe())
        outcomes.append(outcome)
        tag = f"[{index}/{len(profiles)}] {profile.name}"
        log = functools.partial(_tagged, progress, tag)
        overlay: Path | None = None
        emulated: Prepared | None = None
        try:
            if profile.emulate:
                emulated, overlay, reused = _prepare_emulated(profile, cache, python=python, log=log)
                outcome.emulated = emulated.label
            elif profile.pins:
                overlay, reused = ensure_overlay(profile.pins, cache, python=python, log=log)
        except SetupError as exc:
            outcome.status, outcome.reason = "setup failed", str(exc)
        except Unavailable as exc:
            outcome.status, outcome.reason = "skipped", str(exc)
        if outcome.status != "ok":
            outcome.seconds = round(time.perf_counter() - start, 1)
            progress(f"{tag}: {outcome.status}: {outcome.reason}")
            continue
        if overlay is not None:
            outcome.overlay, outcome.overlay_reused = shown_path(overlay), reused
        bundle = out_dir / profile.name
        log_path = out_dir / f"{profile.name}.log"
        command = run_command(spec, bundle, keyword=keyword, inputs_from=inputs_from, python=python, profile=profile)
        if emulated is not None:  # the launcher starts the emulated interpreter with the same arguments
            assert overlay is not None
            command[0] = str(emulated.launcher)
            environment = emulation_environment(emulated, overlay, profile.env, profile.unset)
            outcome.notes += emulated.notes
            words = ["env", *[f"-u {v}" for v in emulated.unset if v in os.environ],
                     *[f"{k}={shown_path(v) if k != 'DETHARNESS_EMULATED' else v}" for k, v in
                       {**emulated.env, "PYTHONPATH": f"{overlay}{os.pathsep}{emulated.env['PYTHONPATH']}",
                        **profile.env}.items()]]
            outcome.command = " ".join([*words, shlex.quote(shown_path(emulated.launcher)),
                                        *(shlex.quote(part) for part in command[1:])])
        else:
            environment = profile_environment(profile, overlay)
            outcome.command = " ".join(shlex.quote(part) for part in [*_env_words(profile, overlay), "detharness",
                                                                       *command[3:]])
        if intermediates:  # every profile records its layers; with --inputs-from, their shadows too
            command.append("--intermediates")
            outcome.command += " --intermediates"
        outcome.log = shown_path(log_path)
        profile_timeout = profile.profile_timeout or spec.profile_timeout * (EMULATION_SLOWDOWN if profile.emulate else 1)
        progress(f"{tag}: running with {profile.describe()}")
        try:
            with open(log_path, "w", encoding="utf-8") as log_file:
                done = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, check=False,
                                      env=environment, timeout=profile_timeout)
            outcome.exit_code = done.returncode
        except subprocess.TimeoutExpired:
            outcome.status = "run failed"
            outcome.reason = f"took longer than {profile_timeout:.0f}s (see {outcome.log})"
        outcome.seconds = round(time.perf_counter() - start, 1)
        if outcome.status == "ok":
            if outcome.exit_code not in (0, 1) or not (bundle / "manifest.json").exists():
                outcome.status = "run failed"
                last = _last_line(log_path.read_text(encoding="utf-8", errors="replace"), prefer=("detharness: error:",))
                outcome.reason = f"detharness run exited {outcome.exit_code}: {last} (see {outcome.log})"
            else:
                try:
                    record = record_mod.load(bundle)
                except DetHarnessError as exc:  # a bundle this profile wrote but cannot be read back
                    outcome.status, outcome.reason = "run failed", f"its bundle cannot be read: {exc}"
                else:
                    outcome.bundle, outcome.record = str(bundle), record
                    outcome.environment_id = record.environment_id
                    _check_outcome(outcome, profile, record.environment)
                    if outcome.status == "ok":
                        _run_errors(outcome, record)
        if outcome.ran and inputs_from is None:
            inputs_from = bundle  # the first profile that ran provides everyone's inputs
        note = f" ({'; '.join(outcome.notes)})" if outcome.notes else ""
        progress(f"{tag}: {outcome.status}{': ' + outcome.reason if outcome.reason else ''} in {outcome.seconds:.1f}s{note}")
    return outcomes


def _prepare_emulated(profile: Profile, cache: Path, *, python: str,
                      log: Callable[[str], None]) -> tuple[Prepared, Path, bool]:
    """An emulated profile's interpreter and its wheels: detharness's own requirements at this
    machine's versions, unless the profile pins them, and the profile's pins."""
    from detharness import emulation

    assert profile.emulate is not None
    emulation.check_available(profile.emulate)  # no download for a profile that cannot run here
    pins = {_normalize(name): Pin(name, version)
            for name, version in emulation.host_versions(emulation.RUNTIME_REQUIREMENTS).items()}
    pins.update({_normalize(pin.name): pin for pin in profile.pins})
    target = emulation.arch(profile.emulate)
    site, reused = ensure_overlay(list(pins.values()), cache, python=python, log=log, target=target)
    prepared = emulation.prepare(profile.emulate, profile.cpu, cache / "emulation", log=log, python=python)
    return prepared, site, reused


def emulation_environment(prepared: Prepared, site: Path, env: Mapping[str, str], unset: Sequence[str]) -> dict[str, str]:
    from detharness import emulation

    return emulation.environment(prepared, site, env, unset)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a report shows it: relative to here, or from ``~``, so published reports name no home folder."""
    full = os.path.abspath(path)
    for root, prefix in ((os.getcwd(), ""), (os.path.expanduser("~"), "~/")):
        if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
            return prefix + os.path.relpath(full, root) if full != root else (prefix or ".")
    return str(path)


def _env_words(profile: Profile, overlay: Path | None) -> list[str]:
    """``env -u X A=1 PYTHONPATH=...`` for the reproduce line of a profile."""
    words = ["env"] if profile.env or profile.unset or overlay is not None else []
    for variable in profile.unset:
        words += ["-u", variable]
    words += [f"{k}={v}" for k, v in profile.env.items()]
    if overlay is not None:
        words.append(f"PYTHONPATH={shown_path(overlay)}")
    return words


def _tagged(progress: Callable[[str], None], tag: str, line: str) -> None:
    progress(f"{tag}: {line}")


def array_source(outcomes: Sequence[ProfileOutcome]) -> Any:
    """Where the HTML report finds the arrays of the matrix's results: each profile's bundle, by name."""
    from detharness import record as record_mod
    from detharness.report import ArraySource

    records = {o.name: o.record if o.record is not None else record_mod.load(o.bundle)
               for o in outcomes if o.ran and o.bundle}
    return ArraySource(records)


def matrix_report(spec: MatrixSpec, outcomes: Sequence[ProfileOutcome], *,
                  seconds: float | None = None) -> dict[str, Any]:
    """Compare every bundle that was written against the baseline's (or the first that ran).

    A profile that failed adds one ``error`` result (check ``matrix``), so it shows in the summary
    and fails the exit code like any other error. A profile whose run had errors (status
    ``errors``) is compared like one that is ``ok``: its errors are ``error`` results of the
    comparison, whatever the other side did; with no other bundle to compare it with, it adds one
    ``matrix`` error itself.
    """
    from detharness import attribution, checks
    from detharness import record as record_mod
    from detharness import report as report_mod
    from detharness.results import Result

    ran = [o for o in outcomes if o.ran and o.bundle]
    results: list[Result] = []
    extra: dict[str, Any] = {"profiles_file": spec.path, "profiles": [o.to_json() for o in outcomes],
                             "bundles": [o.bundle for o in ran]}
    environments: dict[str, Any] = {}
    if ran:
        records = [o.record if o.record is not None else record_mod.load(o.bundle) for o in ran if o.bundle]
        environments = {r.environment_id: r.environment for r in records}
        if len(records) > 1:
            compared, nway = attribution.compare_bundles(records, [o.name for o in ran], all_pairs=True)
            results += compared
            extra.update(nway)
    for o in outcomes:
        if o.status == "errors" and len(ran) < 2:
            # Nothing to compare it with: its errors would show nowhere else.
            results.append(checks.new_result("matrix", "", f"profile {o.name}", Status.ERROR,
                                              f"profile {o.name} ({o.changes}): {o.status}: {o.reason}"))
        elif o.status == "skipped":  # cannot run on this machine (no emulator): said, not failed
            results.append(checks.new_result("matrix", "", f"profile {o.name}", Status.SKIPPED,
                                              f"profile {o.name} ({o.changes}): skipped: {o.reason}"))
        elif not o.ran:
            results.append(checks.new_result("matrix", "", f"profile {o.name}", Status.ERROR,
                                              f"profile {o.name} ({o.changes}): {o.status}: {o.reason}"))
    return report_mod.build(results, environments, title=f"detharness matrix ({Path(spec.path).name})",
                            seconds=seconds, extra=extra)
