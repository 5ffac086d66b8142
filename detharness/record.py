"""The record of one run in one environment, in memory, and its form in a bundle's manifest.

The runner builds a :class:`RunRecord` from fresh results; :func:`load` builds the same object from
a bundle, with arrays read on first use. Checks work on ``RunRecord`` alone, so comparing a fresh
run and comparing two stored bundles are one code path.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detharness import __version__
from detharness.bundle import PARTS_DIR, Bundle, BundleWriter
from detharness.cases import KnownDivergence
from detharness.errors import BundleError
from detharness.results import Outcome, Result, VariantLog


class LazyArrays(Mapping[str, np.ndarray]):
    """Named arrays read from a bundle only when asked for (a compare touches one pair at a time)."""

    def __init__(self, refs: Mapping[str, Mapping[str, Any]], read: Callable[[Mapping[str, Any]], np.ndarray]) -> None:
        self.refs = dict(refs)
        self._read = read
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._read(self.refs[name])
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.refs)

    def __len__(self) -> int:
        return len(self.refs)


@dataclass
class CaseRecord:
    id: str
    fingerprint: str
    tags: list[str] = field(default_factory=list)
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    params: Mapping[str, np.ndarray] = field(default_factory=dict)
    reference: str | None = None
    reference_variant: str | None = None
    reference_outputs: Mapping[str, np.ndarray] | None = None
    known: list[KnownDivergence] = field(default_factory=list)
    location: str = ""
    inputs_digest: str = ""
    kind: str = "compute"  # "rng": its variants' outputs are seeded streams (see cases.CASE_KINDS)
    #: Output name -> the decision rule consumers take from it (see cases.Case).
    decisions: dict[str, str] = field(default_factory=dict)
    #: How the accuracy against the float64 oracle is read: metric and factor.
    accuracy: dict[str, Any] = field(default_factory=dict)

    def known_for(self, variant: str, check: str, environment: Mapping[str, Any],
                  baseline: str | None = None) -> KnownDivergence | None:
        return next((k for k in self.known if k.applies(variant, check, environment, baseline)), None)


@dataclass
class VariantRecord:
    id: str
    case: str
    impl: str
    backend: str
    device: str
    dtype: str
    mode: str
    status: Outcome
    reference: bool = False
    error: str | None = None
    #: The user's frames of the exception an ``error`` variant raised.
    traceback: str | None = None
    seconds: float | None = None
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    tolerances: dict[str, str | None] = field(default_factory=dict)
    distinct_results: int | None = None
    repeat_outputs: Mapping[str, np.ndarray] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: With --repeat-processes: {"processes", "runs", "digests" (per process, per run), "failures"}.
    repeat: dict[str, Any] | None = None
    #: A round-trip variant's findings (see roundtrip.RoundtripResult): format, exact,
    #: before_outputs, params (name -> dtype, shape, sha256 before and after), changed_params
    #: (name -> {"before", "after"} arrays), notes, saved_bytes, seconds.
    roundtrip: dict[str, Any] | None = None
    #: What the variant printed and warned while it ran.
    log: VariantLog = field(default_factory=VariantLog)
    # Reserved for later capabilities: recorded layers, the prepared-artefact cache, the shard.
    #: ``--intermediates``: what to know about the recorded layers (``info``); the arrays are below.
    intermediates: dict[str, Any] | None = None
    #: Layer name -> output, in program order; the layer call inputs (``NAME|i``) and the shadow
    #: outputs (each layer re-run on the baseline's inputs to it), where recorded.
    layers: Mapping[str, np.ndarray] = field(default_factory=dict)
    layer_inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    shadow: Mapping[str, np.ndarray] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    shard: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.status = Outcome(self.status)


@dataclass
class RunRecord:
    environment: dict[str, Any]
    environment_id: str
    cases: dict[str, CaseRecord] = field(default_factory=dict)
    variants: dict[str, VariantRecord] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    verdicts: list[Result] = field(default_factory=list)
    path: str | None = None
    label: str = ""


def digest_arrays(arrays: Mapping[str, np.ndarray]) -> str:
    """A digest of named arrays: names, dtypes, shapes and bytes. Equal digests mean equal inputs."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        arr = np.require(arrays[name], requirements="C")  # keeps 0-d arrays 0-d
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def _intermediates_manifest(v: VariantRecord, put: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any] | None:
    """``{"layers": [{name, index, dtype, shape, sha256, array}], "inputs": {NAME|i: ref}, "shadow":
    {name: ref}, "info": {...}}``: content-addressed like outputs, so a layer equal to the next
    one's input is stored once."""
    if v.intermediates is None and not v.layers:
        return None
    layers = []
    for index, (name, array) in enumerate(v.layers.items()):
        ref = put(np.asarray(array))
        layers.append({"name": name, "index": index, "dtype": ref["dtype"], "shape": ref["shape"],
                       "sha256": ref["sha256"], "array": ref})
    return {"layers": layers, "inputs": {k: put(np.asarray(a)) for k, a in v.layer_inputs.items()},
            "shadow": {k: put(np.asarray(a)) for k, a in v.shadow.items()},
            "info": dict((v.intermediates or {}).get("info") or {})}


def layer_inputs(v: VariantRecord | None) -> dict[str, list[np.ndarray]] | None:
    """A recorded variant's inputs to each layer call, by call name, for a shadow run."""
    if v is None or not v.layer_inputs:
        return None
    calls: dict[str, dict[int, np.ndarray]] = {}
    for key in v.layer_inputs:
        name, _, index = key.rpartition("|")
        calls.setdefault(name, {})[int(index)] = np.asarray(v.layer_inputs[key])
    return {name: [arrays[i] for i in sorted(arrays)] for name, arrays in calls.items()}


def variant_manifest(v: VariantRecord, put: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "case": v.case, "impl": v.impl, "backend": v.backend, "device": v.device, "dtype": v.dtype, "mode": v.mode,
        "reference": v.reference, "status": v.status.value, "error": v.error, "traceback": v.traceback,
        "seconds": v.seconds, "outputs": {name: put(np.asarray(arr)) for name, arr in v.outputs.items()},
        "tolerances": v.tolerances, "distinct_results": v.distinct_results, "info": v.info,
        "log": v.log.to_json(), "intermediates": _intermediates_manifest(v, put), "cache": v.cache,
        "shard": v.shard,
    }
    if v.repeat_outputs is not None:
        entry["repeat_outputs"] = {name: put(np.asarray(arr)) for name, arr in v.repeat_outputs.items()}
    if v.repeat is not None:
        entry["repeat"] = v.repeat
    if v.roundtrip is not None:
        trip = dict(v.roundtrip)
        trip["before_outputs"] = {name: put(np.asarray(arr)) for name, arr in trip["before_outputs"].items()}
        trip["changed_params"] = {name: {side: put(np.asarray(arr)) for side, arr in sides.items()}
                                  for name, sides in trip.get("changed_params", {}).items()}
        entry["roundtrip"] = trip
    return entry


def _layers_from_json(found: Mapping[str, Any] | None, read: Callable[[Mapping[str, Any]], np.ndarray]
                      ) -> dict[str, Any]:
    if not isinstance(found, Mapping):
        return {}
    layers = {entry["name"]: entry["array"] for entry in found.get("layers") or [] if "array" in entry}
    return {"layers": LazyArrays(layers, read), "layer_inputs": LazyArrays(dict(found.get("inputs") or {}), read),
            "shadow": LazyArrays(dict(found.get("shadow") or {}), read)}


def _roundtrip_from_json(trip: Mapping[str, Any] | None, read: Callable[[Mapping[str, Any]], np.ndarray]
                         ) -> dict[str, Any] | None:
    if not trip:
        return None
    loaded = dict(trip)
    loaded["before_outputs"] = LazyArrays(trip.get("before_outputs", {}), read)
    loaded["changed_params"] = {name: LazyArrays(sides, read) for name, sides in trip.get("changed_params", {}).items()}
    return loaded


def case_manifest(c: CaseRecord, put: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "fingerprint": c.fingerprint, "tags": c.tags, "location": c.location, "reference": c.reference,
        "reference_variant": c.reference_variant, "kind": c.kind,
        "inputs": {n: put(a) for n, a in c.inputs.items()},
        "params": {n: put(a) for n, a in c.params.items()},
        "inputs_digest": c.inputs_digest,
        "known": [k.to_json() for k in c.known],
    }
    if c.decisions:
        entry["decisions"] = c.decisions
    if c.accuracy:
        entry["accuracy"] = c.accuracy
    if c.reference_outputs is not None:
        entry["reference_outputs"] = {n: put(a) for n, a in c.reference_outputs.items()}
    return entry


def manifest_of(record: RunRecord, put: Callable[[np.ndarray], dict[str, Any]]) -> dict[str, Any]:
    return {
        "tool": "detharness",
        "version": __version__,
        "created": record.created,
        "environment": record.environment,
        "environment_id": record.environment_id,
        "options": record.options,
        "cases": {cid: case_manifest(c, put) for cid, c in record.cases.items()},
        "variants": {vid: variant_manifest(v, put) for vid, v in record.variants.items()},
        "verdicts": [r.to_json() for r in record.verdicts],
    }


def save(record: RunRecord, path: str | Path) -> Path:
    """Write ``record`` as a bundle at ``path``; the manifest is written last, atomically."""
    writer = BundleWriter(path)
    writer.write_manifest(manifest_of(record, writer.put_array))
    _drop_empty_parts(path)
    record.path = str(path)
    return Path(path)


def _drop_empty_parts(path: str | Path) -> None:
    """A finished bundle keeps no empty ``parts/`` folder (the writer makes one for parts)."""
    with contextlib.suppress(OSError):
        (Path(path) / PARTS_DIR).rmdir()


def record_from_manifest(manifest: Mapping[str, Any], read: Callable[[Mapping[str, Any]], np.ndarray],
                         where: str) -> RunRecord:
    """The run record a manifest (migrated to the current schema) describes, arrays read by ``read``.

    The whole manifest is checked first (:mod:`detharness.manifest`): anything that does not fit is
    a one-line :class:`BundleError` naming the bundle and the field, never another exception.
    """
    from detharness.manifest import ManifestError, check_record_manifest

    try:
        check_record_manifest(manifest)
    except ManifestError as exc:
        raise BundleError(_one_line(f"bundle {where}: {exc}")) from None
    try:
        cases = {
            cid: CaseRecord(
                id=cid, fingerprint=c["fingerprint"], tags=list(c.get("tags", [])), location=c.get("location", ""),
                inputs=LazyArrays(c.get("inputs", {}), read), params=LazyArrays(c.get("params", {}), read),
                reference=c.get("reference"), reference_variant=c.get("reference_variant"),
                reference_outputs=LazyArrays(c["reference_outputs"], read) if c.get("reference_outputs") is not None
                else None,
                known=[KnownDivergence.from_json(k) for k in c.get("known", [])], inputs_digest=c.get("inputs_digest", ""),
                kind=c.get("kind", "compute"), decisions=dict(c.get("decisions") or {}),
                accuracy=dict(c.get("accuracy") or {}),
            )
            for cid, c in manifest["cases"].items()
        }
        variants = {
            vid: VariantRecord(
                id=vid, case=v["case"], impl=v["impl"], backend=v["backend"], device=v["device"], dtype=v["dtype"],
                mode=v["mode"], status=Outcome(v["status"]), reference=v.get("reference", False),
                error=v.get("error"), traceback=v.get("traceback"), log=VariantLog.from_json(v.get("log") or {}),
                intermediates=v.get("intermediates"), cache=v.get("cache"), shard=v.get("shard"),
                **_layers_from_json(v.get("intermediates"), read),
                seconds=v.get("seconds"), outputs=LazyArrays(v.get("outputs", {}), read),
                tolerances=dict(v.get("tolerances") or {}), distinct_results=v.get("distinct_results"),
                repeat_outputs=LazyArrays(v["repeat_outputs"], read) if v.get("repeat_outputs") else None,
                info=dict(v.get("info") or {}), repeat=v.get("repeat"),
                roundtrip=_roundtrip_from_json(v.get("roundtrip"), read),
            )
            for vid, v in manifest["variants"].items()
        }
        return RunRecord(
            environment=dict(manifest["environment"]), environment_id=manifest["environment_id"], cases=cases,
            variants=variants, options=dict(manifest.get("options") or {}), created=manifest.get("created") or "",
            verdicts=[Result.from_json(r) for r in manifest.get("verdicts") or []], path=where,
        )
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError) as exc:  # a gap in the schema check
        raise BundleError(_one_line(f"bundle {where}: manifest is malformed ({type(exc).__name__}: {exc})")) from None


def _one_line(text: str) -> str:
    """``text`` with control characters escaped and cut to 1,000 characters: a message stays one line."""
    text = "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
    return text if len(text) <= 1000 else text[:997] + "..."


def load(path: str | Path) -> RunRecord:
    """Open and verify a bundle (every array's path, size and hash) and return its record."""
    bundle = Bundle.open(path, verify=False)
    record = record_from_manifest(bundle.manifest, bundle.array, str(path))  # the schema first: it is cheap
    bundle.verify()
    return record


def save_part(record: RunRecord, path: str | Path, part_name: str) -> None:
    """Write this writer's share of a bundle (one pytest-xdist worker, say) as its own part.

    Parts never overwrite each other; :func:`merge_parts` later writes the manifest from all of them.
    """
    writer = BundleWriter(path, part_name=part_name)
    writer.write_part(part_name, manifest_of(record, writer.put_array))


def merge_parts(path: str | Path, expected: Iterable[str] | None = None) -> list[str]:
    """Merge every part under ``path`` into one manifest, written last and atomically.

    ``expected``: the variant ids the writers were meant to record (a pytest session's collected
    items). Those no part holds (a killed xdist worker's) are listed under the manifest's top-level
    ``"not_recorded"`` key, so a loss is written down, never silent, and returned.
    """
    writer = BundleWriter(path)
    parts = writer.read_parts()
    if not parts:
        raise BundleError(f"{path}: no parts to merge")
    merged: dict[str, Any] = {key: value for key, value in parts[0].items() if key not in ("cases", "variants", "verdicts")}
    merged.update(cases={}, variants={}, verdicts=[])
    environment: dict[str, Any] = {}
    for part in parts:
        environment.update(part.get("environment", {}))
        merged["cases"].update(part.get("cases", {}))
        merged["variants"].update(part.get("variants", {}))
        merged["verdicts"].extend(part.get("verdicts", []))
    merged["environment"] = dict(sorted(environment.items()))
    from detharness import environment as env_mod

    merged["environment_id"] = env_mod.environment_id(merged["environment"])
    merged.pop("not_recorded", None)
    if expected is not None:
        merged["not_recorded"] = sorted(set(expected) - set(merged["variants"]))
    writer.write_manifest(merged)
    return list(merged.get("not_recorded", []))
