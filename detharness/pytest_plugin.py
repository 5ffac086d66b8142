"""pytest plugin: one test item per variant check, from the cases that ``dh_cases`` names.

Items are named ``CHECK:VARIANT``: ``backend:`` and ``device:`` for computations, ``rng:`` for an
rng case's streams, ``roundtrip:`` for a round-trip mode, ``repeat:`` under ``--dh-repeat N`` and
``environment:`` under ``--dh-baseline``.

It stays out of other projects' runs: items are created only where the ``dh_cases`` ini key or
``--dh-cases PATH`` says where cases are. Variants run in the test process (pytest-xdist spreads
them over workers); each process imports a framework once and runs a case's reference once.
Markers: ``cpu``, ``cuda`` and one per backend, so ``pytest -m cuda`` selects the GPU variants,
which skip where no backend sees a GPU (and fail under ``--dh-require-cuda``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

MARKERS = {
    "cpu": "detharness variant on the CPU",
    "cuda": "detharness variant on a CUDA GPU",
    "numpy": "detharness variant on the numpy backend",
    "torch": "detharness variant on the torch backend",
    "onnxruntime": "detharness variant on the onnxruntime backend",
    "jax": "detharness variant on the jax backend",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("detharness", "Numerical determinism cases (detharness)")
    group.addoption("--dh-cases", action="append", default=[], metavar="PATH",
                    help="Case file or folder to make test items from (runs its Python code)")
    group.addoption("--dh-require-cuda", action="store_true",
                    help="Fail, instead of skip, CUDA variants where no GPU is seen")
    group.addoption("--dh-baseline", metavar="BUNDLE", help="Also compare each variant against this bundle")
    group.addoption("--dh-record", metavar="DIR", help="Record the variants run into a bundle in DIR")
    group.addoption("--dh-deterministic", action="store_true", help="Set every framework's determinism switches")
    group.addoption("--dh-repeat", type=int, default=1, metavar="N",
                    help="Run each variant N times and add repeat: items that fail unless all N are bitwise identical")
    parser.addini("dh_cases", "Case files or folders to make test items from", type="paths", default=[])


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def _case_paths(config: pytest.Config) -> list[str]:
    given = [str(Path(p)) for p in config.getoption("dh_cases")]
    return given or [str(p) for p in config.getini("dh_cases")]


class DetHarnessCollector(pytest.Collector):
    """The parent of every detharness item (node id ``detharness``)."""

    def collect(self) -> list[pytest.Item]:  # pragma: no cover - items are added by the hook below
        return []


class VariantItem(pytest.Item):
    def __init__(self, *, check: str, variant: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check
        self.variant = variant
        self.add_marker(variant.device if variant.device in ("cpu", "cuda") else "cpu")
        if variant.impl.backend in MARKERS:
            self.add_marker(variant.impl.backend)
        for tag in variant.case.tags:
            self.keywords[tag] = True

    def runtest(self) -> None:
        state: _State = self.config.stash[_STATE]
        result = state.check(self.check, self.variant)
        status = result["status"]
        if status in ("identical", "close"):
            return
        if status == "skipped":
            if self.variant.device == "cuda" and self.config.getoption("dh_require_cuda"):
                pytest.fail(f"--dh-require-cuda: {result['message']}", pytrace=False)
            pytest.skip(result["message"])
        if status == "known":
            pytest.xfail(result.get("known_reason") or result["message"])
        if status == "missing":
            pytest.skip(result["message"])
        raise VariantFailure(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, VariantFailure):
            r = excinfo.value.result
            text = f"{r['status']}: {r['message']}"
            if r.get("reproduce"):
                text += f"\nreproduce: {r['reproduce']}"
            return text
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[str, int | None, str]:
        return self.variant.case.location.split(":")[0], None, f"{self.check} {self.variant.id}"


class VariantFailure(Exception):
    def __init__(self, result: dict[str, Any]) -> None:
        super().__init__(result["message"])
        self.result = result


class _State:
    """Per-process: loaded backends, case arrays, executed variants, and the record being built."""

    def __init__(self, config: pytest.Config, paths: list[str]) -> None:
        from detharness import environment
        from detharness.record import RunRecord

        self.config = config
        self.paths = paths
        self.deterministic = bool(config.getoption("dh_deterministic"))
        self.repeat = max(1, int(config.getoption("dh_repeat") or 1))
        self.backends: dict[str, Any] = {}
        self.env = environment.fingerprint()
        self.record = RunRecord(environment={}, environment_id="",
                                options={"cases": paths, "deterministic": self.deterministic, "repeat": self.repeat})
        self.baseline = None
        baseline = config.getoption("dh_baseline")
        if baseline:
            from detharness.record import load

            self.baseline = load(baseline)

    def backend(self, name: str) -> Any:
        from detharness import environment
        from detharness.backends import get_backend
        from detharness.runner import _load_backend

        if name not in self.backends:
            backend = get_backend(name)
            if not backend.is_installed():
                self.backends[name] = f"{name} not installed: {backend.install_hint}"
            else:
                try:
                    loaded, hello = _load_backend(name, self.deterministic)
                    self.env = environment.merge(self.env, hello["fingerprint"])
                    self.backends[name] = loaded
                except Exception as exc:
                    self.backends[name] = RuntimeError(f"{name} failed to load: {exc}")
        return self.backends[name]

    def _case_record(self, c: Any) -> Any:
        from detharness.runner import case_arrays, case_record

        if c.id not in self.record.cases:
            self.record.cases[c.id] = case_record(c, *case_arrays(c, self.baseline))
        return self.record.cases[c.id]

    def execute(self, v: Any) -> Any:
        from detharness.runner import execute, task_for, variant_record

        if v.id in self.record.variants:
            return self.record.variants[v.id]
        case = self._case_record(v.case)
        backend = self.backend(v.impl.backend)
        if isinstance(backend, str):
            result: dict[str, Any] = {"status": "skipped", "error": backend}
        elif isinstance(backend, Exception):
            result = {"status": "error", "error": str(backend)}
        else:
            task = task_for(v, case.inputs, case.params, repeat=self.repeat)
            # The test process is shared with other tests, which may reset a framework's global
            # settings after the backend loaded (a fixture turning jax's x64 off again): the
            # backend's own settings are put back before each variant, as a worker would have them.
            backend._load_framework()
            result = execute(backend, v.case, task)
        record = variant_record(v, result)
        self.record.variants[v.id] = record
        return record

    def check(self, check: str, v: Any) -> dict[str, Any]:
        from detharness import checks
        from detharness.cases import Variant

        record = self.execute(v)
        if check == "backend":
            ref = v.case.reference_variant
            if ref is not None:
                self.execute(ref)
            results = checks.backend_check(self.record, only=[v.id])
        elif check in ("device", "rng"):
            if v.device != "cpu":  # both hold a device's outputs against the same variant's on the CPU
                self.execute(Variant(v.case, v.impl, "cpu", v.dtype, v.mode))
            results = (checks.device_check if check == "device" else checks.rng_check)(self.record, only=[v.id])
        elif check == "roundtrip":
            results = checks.roundtrip_check(self.record, only=[v.id])
        elif check == "repeat":
            results = checks.repeat_check(self.record, only=[v.id])
        else:
            assert self.baseline is not None
            self._stamp_environment()
            results = checks.environment_check(self.baseline, self.record, only=[v.id])
        self.record.verdicts.extend(results)
        if not results:
            if record.status != "ok":
                return {"status": record.status, "message": record.error or record.status}
            return {"status": "identical", "message": "nothing to compare"}
        return _worst(results)

    def _stamp_environment(self) -> None:
        """Put the environment as known so far (grown by each backend loaded) on the record."""
        from detharness.environment import environment_id

        self.record.environment = dict(sorted(self.env.items()))
        self.record.environment_id = environment_id(self.env)

    def save(self, path: str, part: str) -> None:
        from detharness.record import save_part

        self._stamp_environment()
        save_part(self.record, path, part)


def _worst(results: list[dict[str, Any]]) -> dict[str, Any]:
    from detharness.compare import Status

    worst = max(results, key=lambda r: Status(r["status"]).severity)
    if len(results) > 1 and worst["status"] not in ("identical", "close"):
        worst = dict(worst, message=f"output {worst['output']!r}: {worst['message']}")
    return worst


_STATE = pytest.StashKey[_State]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    paths = _case_paths(config)
    if not paths:
        return
    from detharness.cases import discover
    from detharness.errors import DetHarnessError
    from detharness.runner import checks_for

    try:
        registry = discover(paths)
    except DetHarnessError as exc:
        raise pytest.UsageError(f"detharness: {exc}") from None
    config.stash[_STATE] = _State(config, paths)
    parent = DetHarnessCollector.from_parent(session, name="detharness")
    baseline = config.stash[_STATE].baseline
    repeating = config.stash[_STATE].repeat > 1
    added: list[pytest.Item] = []
    for c in registry:
        ref = c.reference_variant
        has_reference = ref is not None or c.reference_outputs is not None
        for v in c.variants():
            own = checks_for(v)
            if "backend" in own and has_reference and (ref is None or v.id != ref.id):
                added.append(VariantItem.from_parent(parent, name=f"backend:{v.id}", check="backend", variant=v))
            if "device" in own and v.device != "cpu":
                added.append(VariantItem.from_parent(parent, name=f"device:{v.id}", check="device", variant=v))
            for check in ("rng", "roundtrip"):
                if check in own:
                    added.append(VariantItem.from_parent(parent, name=f"{check}:{v.id}", check=check, variant=v))
            if repeating:
                added.append(VariantItem.from_parent(parent, name=f"repeat:{v.id}", check="repeat", variant=v))
            if baseline is not None and v.id in baseline.variants:
                added.append(VariantItem.from_parent(parent, name=f"environment:{v.id}", check="environment",
                                                     variant=v))
    # Report them as collected, so the terminal counts them like any other test.
    session.ihook.pytest_collectreport(report=pytest.CollectReport(parent.nodeid, "passed", None, list(added)))
    items.extend(added)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    path = config.getoption("dh_record", None)
    if not path:
        return
    state = config.stash.get(_STATE, None)
    worker = getattr(config, "workerinput", None)
    if state is not None and state.record.variants:
        part = worker["workerid"] if worker else f"main-{os.getpid()}"
        state.save(path, part)
    if worker is None:  # the controller (or a run without xdist) merges once every worker is done
        from detharness.errors import BundleError
        from detharness.record import merge_parts

        try:
            merge_parts(path)
        except BundleError:
            pass  # nothing was recorded: leave no manifest rather than an empty one
