"""pytest plugin: case files are test files; each check of each declared variant is one item.

``--dh-cases PATH`` (repeatable; it replaces the ``dh_cases`` ini key of a project's pytest
configuration) says where case files are. Those paths are added to what pytest collects when no
path is named on the command line (``pytest --dh-cases cases`` collects ``testpaths`` and the
cases), and a case file is collected like any test file, through ``pytest_collect_file``: Python
files under a case path (not ``__init__.py``, nothing under a ``_`` or ``.`` name, as
:func:`detharness.cases.case_files`), and the ``model.onnx`` of an ONNX backend-test folder. A run
that collects no case file (``pytest tests/test_x.py``) imports no case and makes no item.

Items are named ``CHECK:VARIANT`` and sit under the file that defined their case
(:attr:`Case.location`), so node ids read
``cases/models/mlp.py::backend:models/mlp[torch:cpu:float32:eager]`` and run alone when passed
back to pytest. Which items exist is derived from the checks (:data:`detharness.checks.CHECKS`):
one per check that applies to the variant, given ``--dh-repeat`` (repeat items) and
``--dh-baseline`` (environment items). An item runs its variant and what its check needs
(references, CPU twins), each once per process, in isolated worker processes per backend
(:class:`detharness.runner.Executor`: a crashing case costs its own items, not the test process
or an xdist worker; ``--dh-in-process`` runs them in the test process for debugging).

Outcomes: identical or close pass; skipped skips with the reason (and fails, for a CUDA variant,
under ``--dh-require-cuda``); missing skips; known is xfail; everything else fails, showing the
status, the message, the user's traceback and the command lines that reproduce it. A declared
known divergence that no longer happens is XPASS (a failure under ``xfail_strict``). Markers:
``cpu``, ``cuda`` and one per backend (``pytest -m cuda`` selects GPU variants); case tags are
keywords (``-k preprocessing``).

``--dh-record DIR``: every process (each pytest-xdist worker) writes its share of a bundle as a
part; the controller merges them into ``DIR/manifest.json`` (none when nothing was recorded).
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import numpy as np

    from detharness.cases import Case, Registry, Variant
    from detharness.checks import Plan
    from detharness.record import RunRecord, VariantRecord
    from detharness.results import Result
    from detharness.runner import Executor

MARKERS = {
    "cpu": "detharness variant on the CPU",
    "cuda": "detharness variant on a CUDA GPU",
    "numpy": "detharness variant on the numpy backend",
    "torch": "detharness variant on the torch backend",
    "onnxruntime": "detharness variant on the onnxruntime backend",
    "jax": "detharness variant on the jax backend",
}
ONNX_MODEL_FILE = "model.onnx"  # detharness.onnx_testdata.MODEL_FILE, without importing it here


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("detharness", "numerical determinism cases (detharness)")
    group.addoption("--dh-cases", action="append", default=[], metavar="PATH",
                    help="case file or folder to collect (runs its Python code); repeatable; replaces the "
                         "dh_cases ini key")
    group.addoption("--dh-require-cuda", action="store_true",
                    help="fail, instead of skip, CUDA variants that cannot run here")
    group.addoption("--dh-baseline", metavar="BUNDLE",
                    help="replay this bundle's inputs and add environment: items holding each variant against it")
    group.addoption("--dh-record", metavar="DIR", help="record the variants run into a bundle in DIR")
    group.addoption("--dh-deterministic", action="store_true", help="set every framework's determinism switches")
    group.addoption("--dh-repeat", type=int, default=1, metavar="N",
                    help="run each variant N times and add repeat: items that fail unless all N are bitwise identical")
    group.addoption("--dh-in-process", action="store_true",
                    help="run variants in the test process instead of isolated worker processes (debugging)")
    group.addoption("--dh-timeout", type=float, default=600.0, metavar="SECONDS",
                    help="a variant running longer in its worker process is an error (default 600)")
    parser.addini("dh_cases", "case files or folders to collect (runs their Python code)", type="paths", default=[])


# -- configuration -----------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> None:
    """Find the rootdir again now that this plugin's options are known.

    pytest picks its rootdir (and ini file) before it loads plugins from entry points, so the value
    of ``--dh-baseline /abs/path`` (the space form) is taken for a path to test: a path outside the
    project makes that folder the rootdir, the project's ``dh_cases`` is never read and nothing
    runs. Parsed with this plugin's options, the value is an option's; the rootdir is chosen again
    from the real paths, as pytest would have chosen it.
    """
    from _pytest.config.findpaths import determine_setup

    ns = early_config.known_args_namespace
    if not any(getattr(ns, name, None) for name in ("dh_baseline", "dh_record", "dh_cases")):
        return  # only this plugin's path options are mended
    rootpath, inipath, inicfg, ignored = determine_setup(
        inifile=ns.inifilename, override_ini=ns.override_ini, args=ns.file_or_dir,
        rootdir_cmd_arg=ns.rootdir or None, invocation_dir=early_config.invocation_params.dir)
    if rootpath == early_config.rootpath and inipath == early_config.inipath:
        return
    old_cut = {str(early_config.rootpath), str(early_config.inipath.parent) if early_config.inipath else ""}
    early_config._rootpath = rootpath
    early_config._inipath = inipath
    early_config._inicfg = inicfg
    early_config._ignored_config_files = ignored
    early_config._inicache.clear()
    early_config._parser.extra_info["rootdir"] = str(rootpath)
    early_config._parser.extra_info["inifile"] = str(inipath)
    if ns.confcutdir in old_cut:
        ns.confcutdir = str(inipath.parent if inipath is not None else rootpath)
    addopts = early_config.getini("addopts")
    if addopts:
        args[:] = [*addopts, *args]


def _case_roots(config: pytest.Config) -> list[Path]:
    given: list[str] = config.getoption("dh_cases") or []
    if given:
        base = config.invocation_params.dir
        return [Path(base, p).resolve() for p in given]
    return [Path(p).resolve() for p in config.getini("dh_cases")]


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    repeat = config.getoption("dh_repeat")
    if repeat is not None and repeat < 1:
        raise pytest.UsageError("--dh-repeat must be at least 1")
    if config.getoption("dh_timeout") is not None and config.getoption("dh_timeout") <= 0:
        raise pytest.UsageError("--dh-timeout must be positive")
    roots = _case_roots(config)
    for root in roots:
        if not root.exists():
            raise pytest.UsageError(f"--dh-cases {root}: no such file or directory")
    record_dir = _record_dir(config)
    if record_dir is not None and not hasattr(config, "workerinput"):
        _clear_stale_record(record_dir)
    if not roots:
        return
    from detharness import cache

    if cache.enabled():
        try:
            cache.max_bytes()
        except cache.CacheSettingError as exc:
            raise pytest.UsageError(str(exc)) from None
    session = _Session(config, roots)
    config.stash[_SESSION] = session
    baseline = config.getoption("dh_baseline")
    if baseline:
        from detharness.errors import DetHarnessError
        from detharness.record import load

        try:
            session.baseline = load(baseline)
        except DetHarnessError as exc:
            raise pytest.UsageError(f"--dh-baseline {baseline}: {exc}") from None
    # The case paths join the collection when pytest chooses what to collect (testpaths, or the
    # current folder); paths named on the command line are collected alone.
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        chosen = [Path(config.invocation_params.dir, a).resolve() for a in config.args]
        config.args.extend(str(r) for r in roots if not any(_is_under(r, c) for c in chosen))


def _record_dir(config: pytest.Config) -> Path | None:
    given: str | None = config.getoption("dh_record", None)
    return Path(config.invocation_params.dir, given) if given else None


def _clear_stale_record(path: Path) -> None:
    """A bundle already in ``path`` is refused, never overwritten (as ``run --out`` refuses); the
    parts an interrupted run left behind would be merged into this run's bundle, so they go."""
    from detharness.locking import is_bundle

    if is_bundle(path):
        raise pytest.UsageError(f"--dh-record {path}: a bundle is already there; choose a new folder")
    for stale in sorted((path / "parts").glob("*.json")):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def pytest_report_header(config: pytest.Config) -> str | None:
    session = config.stash.get(_SESSION, None)
    if session is None:
        return None
    where = "in the test process" if session.in_process else "in a worker process per backend"
    return f"detharness: cases from {', '.join(_shown(r) for r in session.roots)}, run {where}"


def _shown(path: Path) -> str:
    from detharness.cases import display_path

    return display_path(path)


# -- collection --------------------------------------------------------------------------------


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    session = parent.config.stash.get(_SESSION, None)
    if session is None or not session.holds_cases(file_path):
        return None
    return CaseFile.from_parent(parent, path=file_path)


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A case file named on the command line is collected by :func:`pytest_collect_file` alone.

    pytest's Python collector makes a module of any ``.py`` file named on the command line,
    whatever its name, and imports it: the case file's code would run a second time in the test
    process, and its cases would go into :data:`detharness.cases.default_registry`, outside any
    session (a second ``pytest.main`` in the process then found every case defined twice). Such a
    module is replaced by one that imports nothing, for a file that defined cases (or failed to
    import as a case file) and that pytest would not collect as a test module by its name
    (``python_files``): a ``test_*.py`` under the case paths keeps its tests.
    """
    session = parent.config.stash.get(_SESSION, None)
    if session is None or _is_test_module_name(module_path, parent.config.getini("python_files")):
        return None
    if not session.holds_cases(module_path):
        return None
    return _NoTests.from_parent(parent, path=module_path)


def _is_test_module_name(path: Path, patterns: Iterable[str]) -> bool:
    """Whether pytest collects ``path`` as a test module by name (the ``python_files`` patterns:
    a bare pattern matches the file name, one with a folder part the end of the whole path)."""
    import fnmatch

    for pattern in patterns:
        if "/" in pattern:
            if fnmatch.fnmatch(str(path), f"*{pattern}"):
                return True
        elif fnmatch.fnmatch(path.name, pattern):
            return True
    return False


class _NoTests(pytest.Module):
    """Stands where pytest's Python collector would import a case file as a test module."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        return []


class CaseFile(pytest.File):
    """A case file (or an ONNX test folder's ``model.onnx``): the items of the cases it defines."""

    def collect(self) -> Iterable[pytest.Item | pytest.Collector]:
        from detharness.checks import checks_for

        session = self.config.stash[_SESSION]
        key = self.path.resolve()
        if key in session.errors:
            raise self.CollectError(str(session.errors[key]))
        plan = session.plan()
        return [VariantItem.from_parent(self, name=f"{check}:{v.id}", check=check, variant=v)
                for c in session.owned.get(key, []) for v in c.variants() for check in checks_for(v, plan)]


class VariantItem(pytest.Item):
    """One check of one variant."""

    def __init__(self, *, check: str, variant: Variant, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.variant = variant
        self.results: list[Result] = []
        self.add_marker("cuda" if variant.device == "cuda" else "cpu")
        backend = variant.impl.backend
        if backend not in MARKERS:
            self.config.addinivalue_line("markers", f"{backend}: detharness variant on the {backend} backend")
        self.add_marker(backend)
        # -k matches the case's tags (and "roundtrip" for a round trip), as it matches names.
        self.extra_keyword_matches.update(variant.tags)

    def runtest(self) -> None:
        from detharness.checks import CHECKS
        from detharness.compare import Status
        from detharness.results import Outcome, worst

        session = self.config.stash[_SESSION]
        v = self.variant
        check = CHECKS[self.check]
        record = session.run(v)
        # What the check holds v against is run only when v itself ran: a skipped CUDA variant
        # needs no CPU twin (on a machine without a GPU, 223 device items would run their twins,
        # ONNX exports included, in whichever xdist worker they land).
        needed = [session.run(extra) for extra in check.needs(v)] if record.status == Outcome.OK else []
        self._show_log(record)
        self.results = session.judge(self.check, v)
        cuda_required = v.device == "cuda" and session.require_cuda
        if not self.results:
            if record.status == Outcome.SKIPPED:
                self._skip(record.error or "skipped", cuda_required)
            if record.status == Outcome.ERROR:
                pytest.fail(self._failure_text(f"error: {record.error}", record.traceback), pytrace=False)
            why = "; ".join(f"{n.id} {n.status}: {n.error}" for n in needed if n.status != Outcome.OK)
            self._skip(f"nothing to compare ({why or f'the {self.check} check had nothing to hold it against'})",
                       cuda_required)
        status = worst(r.status for r in self.results)
        if status.passed:
            stale = next((r.stale_known for r in self.results if r.stale_known), None)
            if stale is not None:
                # Expected to fail and passed: XPASS (a failure under xfail_strict), as pytest reports it.
                self.add_marker(pytest.mark.xfail(reason=f"declared known divergence no longer happens: {stale}"))
            return
        first = next(r for r in self.results if r.status == status)
        if status == Status.SKIPPED:
            self._skip(first.message, cuda_required)
        if status == Status.MISSING:
            pytest.skip(first.message)
        if status == Status.KNOWN:
            pytest.xfail(first.known_reason or first.message)
        pytest.fail(self._failure_text(), pytrace=False)

    def _skip(self, reason: str, cuda_required: bool) -> None:
        if cuda_required:
            pytest.fail(f"--dh-require-cuda: {self.variant.id} did not run: {reason}", pytrace=False)
        pytest.skip(reason)

    def _show_log(self, record: VariantRecord) -> None:
        """What the variant printed and warned, shown as pytest shows a test's captured output."""
        log = record.log
        if log.stdout:
            self.add_report_section("call", "stdout", log.stdout)
        if log.stderr:
            self.add_report_section("call", "stderr", log.stderr)
        if log.warnings:
            self.add_report_section("call", "warnings", "\n".join(log.warnings))

    def _failure_text(self, headline: str | None = None, traceback: str | None = None) -> str:
        lines: list[str] = []
        bad = [r for r in self.results if not r.status.passed]
        if headline is not None:
            lines.append(headline)
        for r in bad:
            where = f"output {r.output!r}: " if r.output and len(self.results) > 1 else ""
            lines.append(f"{r.status}: {where}{r.message}")
        tracebacks = [traceback] if traceback else list(dict.fromkeys(r.traceback for r in bad if r.traceback))
        lines += [t.rstrip("\n") for t in tracebacks]
        lines.append(f"case {self.variant.case.id} is defined at {self.variant.case.location}")
        reproduce = next((r.reproduce for r in bad if r.reproduce), None)
        if reproduce:
            lines.append(f"reproduce: {reproduce}")
        lines.append(f"rerun: {self.config.stash[_SESSION].rerun_command(self)}")
        return "\n".join(lines)

    def reportinfo(self) -> tuple[os.PathLike[str] | str, int | None, str]:
        location, _, line = self.variant.case.location.rpartition(":")
        here = location and line.isdigit() and _location_file(self.variant.case.location) == self.path.resolve()
        return self.path, int(line) - 1 if here else None, self.name


# -- the per-process state ---------------------------------------------------------------------


class _Session:
    """One per pytest process: the registry of every case file, the executor, the record built."""

    def __init__(self, config: pytest.Config, roots: list[Path]) -> None:
        self.config = config
        self.roots = roots
        self.repeat = int(config.getoption("dh_repeat") or 1)
        self.deterministic = bool(config.getoption("dh_deterministic"))
        self.in_process = bool(config.getoption("dh_in_process"))
        self.timeout = float(config.getoption("dh_timeout") or 600.0)
        self.require_cuda = bool(config.getoption("dh_require_cuda"))
        self.baseline: RunRecord | None = None
        #: Case file (resolved) -> the cases it defines, in registration order.
        self.owned: dict[Path, list[Case]] = {}
        #: Case file (resolved) -> why it could not be imported.
        self.errors: dict[Path, Exception] = {}
        self._registry: Registry | None = None
        self._worker_paths: list[str] = []
        self._executor: Executor | None = None
        self._record: RunRecord | None = None
        self._base_environment: dict[str, Any] | None = None
        self._arrays: dict[str, tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | Exception] = {}

    # -- discovery --

    def may_hold_cases(self, path: Path) -> bool:
        """Whether ``path`` can be a case file, from its name alone (nothing imported)."""
        if path.suffix == ".py":
            if path.name == "__init__.py":
                return False
        elif path.name != ONNX_MODEL_FILE:
            return False
        resolved = path.resolve()
        return any(_is_under(resolved, root)
                   and not any(part.startswith((".", "_")) for part in resolved.relative_to(root).parts)
                   for root in self.roots)

    def holds_cases(self, path: Path) -> bool:
        """Whether ``path`` is a case file of this session: one that defined cases, or that failed
        to import as one (its collection error is then its own). Loads the case files once."""
        if not self.may_hold_cases(path):
            return False
        self.load()
        key = path.resolve()
        return key in self.owned or key in self.errors

    def load(self) -> Registry:
        """Import every case file under the case paths into one registry, once.

        Everything, not only the files pytest collects: a file may add variants to another file's
        case (``include``), and a node id must name the same item whichever files are collected.
        A case belongs to the file that defined it; one included from outside the case paths
        belongs to the file that included it. A file that fails to import is that file's
        collection error.
        """
        if self._registry is not None:
            return self._registry
        from detharness.cases import CASE_SOURCES, Registry, case_files, load_case_file
        from detharness.errors import DetHarnessError

        registry = Registry()
        self._registry = registry
        added_by: dict[str, Path] = {}  # case id -> the top-level file (or folder) whose import added it
        collectable: set[Path] = set()
        broken_roots: set[Path] = set()

        def new_cases(since: int, by: Path) -> None:
            for c in list(registry)[since:]:
                added_by[c.id] = by

        for root in self.roots:
            if root.is_dir():
                size = len(registry)
                try:
                    claimed = any(source(root, registry) for source in CASE_SOURCES)
                except DetHarnessError as exc:
                    raise pytest.Collector.CollectError(f"detharness: --dh-cases {_shown(root)}: {exc}") from None
                new_cases(size, root)
                if claimed:
                    continue
            for file in case_files(root):
                key = file.resolve()
                collectable.add(key)
                size = len(registry)
                try:
                    load_case_file(file, registry)
                except DetHarnessError as exc:
                    self.errors[key] = exc
                    broken_roots.add(root)
                new_cases(size, key)
        for c in registry:
            defined_in = _location_file(c.location)
            own = defined_in is not None and (defined_in in collectable or defined_in.name == ONNX_MODEL_FILE)
            owner = defined_in if own and defined_in is not None else added_by.get(c.id)
            if owner is not None:
                self.owned.setdefault(owner, []).append(c)
        # Worker processes import the case paths again; a file that failed to import here would
        # stop every worker from starting, so under a root with such a file they get the files
        # that did import.
        loaded = [Path(f) for f in registry.files]
        for root in self.roots:
            if root in broken_roots:
                self._worker_paths += [str(f) for f in loaded if f.suffix == ".py" and _is_under(f, root)]
            else:
                self._worker_paths.append(str(root))
        return registry

    def plan(self) -> Plan:
        from detharness.checks import Plan

        return Plan(repeating=self.repeat > 1, baseline=self.baseline)

    # -- running --

    @property
    def executor(self) -> Executor:
        if self._executor is None:
            from detharness.runner import Executor

            self.load()
            self._executor = Executor(self._worker_paths, deterministic=self.deterministic, timeout=self.timeout,
                                      in_process=self.in_process)
        return self._executor

    @property
    def record(self) -> RunRecord:
        if self._record is None:
            from detharness.record import RunRecord

            options: dict[str, Any] = {
                "cases": [_shown(r) for r in self.roots], "deterministic": self.deterministic, "repeat": self.repeat,
                "inputs_from": self.baseline.path if self.baseline is not None else None,
                "in_process": self.in_process, "timeout": self.timeout, "pytest": True,
            }
            self._record = RunRecord(environment={}, environment_id="", options=options)
        return self._record

    def _case_arrays(self, c: Case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        from detharness.errors import DetHarnessError
        from detharness.runner import case_arrays, case_record

        if c.id not in self._arrays:
            try:
                inputs, params = case_arrays(c, self.baseline)
                self.record.cases[c.id] = case_record(c, inputs, params)
                self._arrays[c.id] = (inputs, params)
            except DetHarnessError as exc:
                self._arrays[c.id] = exc
        made = self._arrays[c.id]
        if isinstance(made, Exception):
            raise made
        return made

    def run(self, v: Variant) -> VariantRecord:
        """Run ``v`` once in this process (later calls return its record)."""
        from detharness.errors import DetHarnessError
        from detharness.results import Reply
        from detharness.runner import task_for, variant_record

        done = self.record.variants.get(v.id)
        if done is not None:
            return done
        if self._base_environment is None:
            # This process's fingerprint, taken before a framework runs here (--dh-in-process).
            from detharness import environment as env_mod

            self._base_environment = env_mod.fingerprint()
        try:
            inputs, params = self._case_arrays(v.case)
            reply = self.executor.execute(v, task_for(v, inputs, params, repeat=self.repeat))
        except DetHarnessError as exc:
            reply = Reply.failure(v.id, str(exc))
        record = variant_record(v, reply)
        self.record.variants[v.id] = record
        return record

    def judge(self, check: str, v: Variant) -> list[Result]:
        from detharness.checks import CHECKS

        self._stamp_environment()
        results = CHECKS[check].judge(self.record, [v.id], self.baseline)
        self.record.verdicts.extend(results)
        return results

    def _stamp_environment(self) -> None:
        """The record's environment: this process's, plus each backend's as its worker reported it
        (a known divergence's ``when`` conditions read it)."""
        from detharness import environment as env_mod

        if self._base_environment is None:
            self._base_environment = env_mod.fingerprint()
        merged = env_mod.merge(self._base_environment, self._executor.fingerprint if self._executor else {})
        self.record.environment = dict(sorted(merged.items()))
        self.record.environment_id = env_mod.environment_id(merged)

    def rerun_command(self, item: pytest.Item) -> str:
        from detharness.cases import shell_path

        # Shell words, each quoted as it is added: a path under $HOME is "$HOME"/..., which a
        # shell expands (a quoted '~/...' it would not).
        parts = ["pytest"]
        for root in self.roots:
            parts += ["--dh-cases", shell_path(_shown(root))]
        if self.deterministic:
            parts.append("--dh-deterministic")
        if self.repeat > 1:
            parts += ["--dh-repeat", str(self.repeat)]
        if self.baseline is not None and self.baseline.path:
            parts += ["--dh-baseline", shell_path(self.baseline.path)]
        if self.in_process:
            parts.append("--dh-in-process")
        base = item.config.invocation_params.dir
        try:
            path = item.path.relative_to(base).as_posix()
        except ValueError:
            path = str(item.path)
        return " ".join([*parts, shlex.quote(f"{path}::{item.name}")])

    # -- the end --

    def finish(self, record_dir: Path | None) -> None:
        """End the worker processes; write this process's part of the bundle, if asked to."""
        if record_dir is not None and self._record is not None and self._record.variants:
            from detharness.record import save_part

            self._stamp_environment()
            worker = getattr(self.config, "workerinput", None)
            save_part(self._record, record_dir, worker["workerid"] if worker else "main")
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.close()


def _location_file(location: str) -> Path | None:
    """The file of a case's location (``path:line``, or a path for an ONNX test)."""
    path, sep, line = location.rpartition(":")
    if not (sep and line.isdigit()):
        path = location
    if not path or path.startswith("<"):
        return None
    return Path(path).expanduser().resolve()  # display_path writes paths under $HOME as ~/...


_SESSION = pytest.StashKey[_Session]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    # A skip points at the line that raised it, here: point it at the case instead (-rs).
    if isinstance(item, VariantItem) and report.skipped and isinstance(report.longrepr, tuple):
        _path, lineno, _ = item.reportinfo()
        report.longrepr = (str(item.path), (lineno or 0) + 1, report.longrepr[2])
    return report


_EXPECTED = pytest.StashKey[set[str]]()
_NOT_RECORDED = pytest.StashKey[tuple[Path, list[str]]]()


def _expect(config: pytest.Config, variant_ids: Iterable[str]) -> None:
    """Note variants this session's items run, so a merge can say which no part recorded."""
    config.stash.setdefault(_EXPECTED, set()).update(variant_ids)


def pytest_collection_finish(session: pytest.Session) -> None:
    if _record_dir(session.config) is not None and not hasattr(session.config, "workerinput"):
        _expect(session.config, (item.variant.id for item in session.items if isinstance(item, VariantItem)))


def _variant_of_node_id(node_id: str, checks: Iterable[str]) -> str | None:
    """The variant of a ``PATH::CHECK:VARIANT`` node id (``None`` for any other test)."""
    check, sep, variant = node_id.rpartition("::")[2].partition(":")
    return variant if sep and variant and check in checks else None


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Under xdist the controller collects nothing: the workers' collected node ids say what to expect."""
    config: pytest.Config = node.config
    if _record_dir(config) is None:
        return
    from detharness.checks import CHECKS

    _expect(config, filter(None, (_variant_of_node_id(i, CHECKS) for i in ids)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    record_dir = _record_dir(config)
    state = config.stash.get(_SESSION, None)
    if state is not None:
        state.finish(record_dir)
    if record_dir is not None and not hasattr(config, "workerinput"):
        # The controller (or a run without xdist) merges once every worker has written its part.
        expected = config.stash.get(_EXPECTED, set())
        parts = record_dir / "parts"
        if parts.is_dir() and any(parts.glob("*.json")):
            from detharness.record import merge_parts

            missing = merge_parts(record_dir, expected=expected)
        else:
            missing = sorted(expected)
        if missing:
            config.stash[_NOT_RECORDED] = (record_dir, missing)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lost = config.stash.get(_NOT_RECORDED, None)
    if lost is None:
        return
    record_dir, missing = lost
    shown = ", ".join(missing[:5]) + (f", and {len(missing) - 5} more" if len(missing) > 5 else "")
    from detharness.locking import is_bundle

    where = "listed under not_recorded in its manifest" if is_bundle(record_dir) else "no bundle"
    terminalreporter.write_line(f"detharness: --dh-record {_shown(record_dir)}: {len(missing)} collected "
                                f"variant(s) not recorded ({where}; a killed worker or a session stopped early?): {shown}",
                                yellow=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    state = config.stash.get(_SESSION, None)
    if state is not None:
        state.close()  # a session that ended before pytest_sessionfinish
