"""Running a matrix: each profile's ``detharness run`` in its own process (emulated where asked), its
outcome checked against what it asked for, then every bundle compared with attribution."""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detharness.errors import DetHarnessError, UsageError
from detharness.matrix.emulation import Prepared, Unavailable
from detharness.matrix.emulation import environment as emulated_environment
from detharness.matrix.overlays import SetupError, _last_line, default_overlay_cache, ensure_overlay
from detharness.matrix.profiles import MatrixSpec, Pin, Profile, _normalize
from detharness.results import Outcome, Status

if TYPE_CHECKING:
    from detharness.record import RunRecord

DEFAULT_VARIANT_TIMEOUT = 600.0  # detharness run's --timeout
#: How much longer an emulated profile may take, per variant and in all, unless it says its own
#: timeout: emulation runs whole programs about 13x slower, matrix products up to 450x.
EMULATION_SLOWDOWN = 10


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

    def bundle_record(self) -> RunRecord:
        """The profile's bundle: as read back after its run, else read now (an outcome built from JSON)."""
        from detharness import record as record_mod

        assert self.bundle is not None
        return self.record if self.record is not None else record_mod.load(self.bundle)


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
               progress: Callable[[str], None] = lambda _: None, intermediates: bool = False,
               no_cache: bool = False) -> list[ProfileOutcome]:
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
            environment = emulated_environment(emulated, overlay, profile.env, profile.unset)
            outcome.notes += emulated.notes
            removed = [v for v in emulated.unset if v in os.environ and v not in profile.env] + list(profile.unset)
            outcome.command = reproduce_line(
                {**emulated.env, "PYTHONPATH": environment["PYTHONPATH"], **profile.env}, removed, command)
        else:
            environment = profile_environment(profile, overlay)
            outcome.command = reproduce_line({**profile.env, **({"PYTHONPATH": str(overlay)} if overlay else {})},
                                             profile.unset, ["detharness", *command[3:]])
        if intermediates:  # every profile records its layers; with --inputs-from, their shadows too
            command.append("--intermediates")
            outcome.command += " --intermediates"
        if no_cache:  # every profile exports and compiles afresh, and its reproduce line says so
            command.append("--no-cache")
            outcome.command += " --no-cache"
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
    from detharness.matrix import emulation

    assert profile.emulate is not None
    emulator = emulation.check_available(profile.emulate)  # no download for a profile that cannot run here
    pins = {_normalize(name): Pin(name, version)
            for name, version in emulation.host_versions(emulation.RUNTIME_REQUIREMENTS).items()}
    pins.update({_normalize(pin.name): pin for pin in profile.pins})
    target = emulation.arch(profile.emulate)
    site, reused = ensure_overlay(list(pins.values()), cache, python=python, log=log, target=target)
    prepared = emulation.prepare(profile.emulate, profile.cpu, cache / "emulation", log=log, python=python,
                                 emulator=emulator)
    return prepared, site, reused


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a report shows it: relative to here, or from ``~``, so published reports name no home folder."""
    full = os.path.abspath(path)
    for root, prefix in ((os.getcwd(), ""), (os.path.expanduser("~"), "~/")):
        if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
            return prefix + os.path.relpath(full, root) if full != root else (prefix or ".")
    return str(path)


def reproduce_line(variables: Mapping[str, str], unset: Sequence[str], command: Sequence[str]) -> str:
    """``env -u X A=1 PYTHONPATH="$HOME/..." detharness run ...``: a profile's command as a shell line
    that runs as it stands, showing paths as reports do (from ``$HOME``, never the home folder)."""
    words = ["env"] if variables or unset else []
    for variable in unset:
        words += ["-u", variable]
    words += [f"{name}={_shell_word(_shown(value))}" for name, value in variables.items()]
    return " ".join([*words, *(_shell_word(_shown(part)) for part in command)])


def _shown(value: str) -> str:
    """A value made of absolute paths (a path list too) with each path as :func:`shown_path` shows it."""
    parts = value.split(os.pathsep)
    if all(os.path.isabs(part) for part in parts):
        return os.pathsep.join(shown_path(part) for part in parts)
    return value


def _shell_word(text: str) -> str:
    """One shell word; a path from ``~`` becomes ``"$HOME/..."``, which expands wherever it stands
    (a quoted ``~`` does not, and a bare one does not after ``=`` in an argument)."""
    parts = text.split(os.pathsep)
    if any(part.startswith("~/") for part in parts) and not any(c in text for c in '"$`\\!'):
        return '"' + os.pathsep.join("$HOME/" + p[2:] if p.startswith("~/") else p for p in parts) + '"'
    return shlex.quote(text)


def _tagged(progress: Callable[[str], None], tag: str, line: str) -> None:
    progress(f"{tag}: {line}")


def array_source(outcomes: Sequence[ProfileOutcome]) -> Any:
    """Where the HTML report finds the arrays of the matrix's results: each profile's bundle, by name."""
    from detharness.report import ArraySource

    return ArraySource({o.name: o.bundle_record() for o in outcomes if o.ran and o.bundle})


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
    from detharness import report as report_mod
    from detharness.results import Result

    ran = [o for o in outcomes if o.ran and o.bundle]
    results: list[Result] = []
    extra: dict[str, Any] = {"profiles_file": spec.path, "profiles": [o.to_json() for o in outcomes],
                             "bundles": [o.bundle for o in ran]}
    environments: dict[str, Any] = {}
    if ran:
        records = [o.bundle_record() for o in ran]
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
