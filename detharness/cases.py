"""Cases: the authoring API, the registry and discovery of case files.

A case names one computation that must give the same numbers wherever it runs::

    c = case("preprocessing/standardize", tags={"preprocessing"}, tolerance="ulp(4)",
             inputs=lambda rng: {"x": rng.standard_normal((512, 8)).astype("float32")})

    @c.impl("numpy", backend="numpy", reference=True, dtypes=("float64",))
    def _(x):
        return {"y": (x - x.mean(0)) / x.std(0)}

    @c.impl("torch", backend="torch", dtypes=("float32", "float16"))
    def _(x):
        return {"y": (x - x.mean(0)) / x.std(0, unbiased=False)}

Inputs and parameters are made in the parent process with numpy from a seed, stored in the bundle,
and handed to every implementation, cast to the variant's float dtype; integer, bool and string
arrays are passed as they are. Case files import no framework at module level: implementations
import torch or jax inside their bodies, so ``detharness list`` stays fast.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import inspect
import json
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detharness.errors import CaseError

_CASE_ID = re.compile(r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")
_IMPL_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")

#: What a case computes. ``compute``: outputs that implementations must agree on (the backend and
#: device checks). ``rng``: seeded random streams, judged by the ``rng`` check: reseeding must give
#: the same stream, a device's stream is held against the CPU's, and across bundles every stream
#: must be bit for bit the baseline's. An rng case carries the tag ``rng``.
CASE_KINDS = ("compute", "rng")

ArrayDict = dict[str, np.ndarray]
InputFactory = Callable[[np.random.Generator], Mapping[str, Any]]

#: Argument names an implementation may take beside its inputs; no input may be called so.
RESERVED_NAMES = ("params", "ctx")


@dataclass(frozen=True)
class Context:
    """What an implementation may ask for with a ``ctx`` parameter: the variant it runs as.

    ``device`` is ``"cpu"`` or ``"cuda"`` (a torch device string as it is); ``dtype`` the variant's
    dtype name (``"float32"``, ``"bfloat16"``); ``seed`` the case's seed; ``variant`` the variant id.
    """

    device: str
    dtype: str
    seed: int
    variant: str
    backend: str
    mode: str


@dataclass(frozen=True)
class KnownDivergence:
    """A divergence the case's authors expect and accept, while its conditions hold.

    ``variants`` is a glob over variant ids (``*[torch:*``); ``checks`` the check kinds it covers;
    ``when`` maps environment fingerprint keys to globs (``{"torch.cpu_capability": "DEFAULT"}``),
    all of which must match for the divergence to apply; ``against`` is a glob over what the
    variant is held against (a result's ``baseline``: ``*[*:cpu:*`` for a CUDA stream held against
    the CPU's, but not against another CUDA run's). Outside those conditions the variant is judged
    as usual, so a fix or a platform change shows up again as ``diverged``.
    """

    reason: str
    variants: str = "*"
    checks: tuple[str, ...] = ("backend", "device", "environment", "repeat", "rng", "roundtrip")
    when: Mapping[str, str] = field(default_factory=dict)
    against: str = "*"

    def applies(self, variant_id: str, check: str, environment: Mapping[str, Any], baseline: str | None = None) -> bool:
        if check not in self.checks or not fnmatch.fnmatchcase(variant_id, self.variants):
            return False
        if self.against != "*" and (baseline is None or not fnmatch.fnmatchcase(baseline, self.against)):
            return False
        for key, pattern in self.when.items():
            value = environment.get(key)
            if value is None or not fnmatch.fnmatchcase(str(value), pattern):
                return False
        return True

    def unmet(self, variant_id: str, check: str, environment: Mapping[str, Any],
              baseline: str | None = None) -> tuple[int, str] | None:
        """Why this declaration does not cover a result: the first condition that fails, or None
        when it applies (as :meth:`applies`).

        The condition is said as the report shows it (``when torch.cpu_capability=DEFAULT, this
        environment has AVX512``), with how many of the four (``variants``, ``checks``,
        ``against``, ``when``) held before it: the closer a declaration came, the more likely it
        is the one its author meant for this result.
        """
        if not fnmatch.fnmatchcase(variant_id, self.variants):
            return 0, f"variants {self.variants} does not match {variant_id}"
        if check not in self.checks:
            return 1, f"checks {', '.join(self.checks) or '(none)'} do not include the {check} check"
        if self.against != "*" and (baseline is None or not fnmatch.fnmatchcase(baseline, self.against)):
            return 2, f"against {self.against}, this result is held against {baseline or 'nothing'}"
        for key, pattern in self.when.items():
            value = environment.get(key)
            if value is None:
                return 3, f"when {key}={pattern}, this environment does not record {key}"
            if not fnmatch.fnmatchcase(str(value), pattern):
                return 3, f"when {key}={pattern}, this environment has {value}"
        return None

    def to_json(self) -> dict[str, Any]:
        data = {"reason": self.reason, "variants": self.variants, "checks": list(self.checks), "when": dict(self.when)}
        if self.against != "*":
            data["against"] = self.against
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KnownDivergence:
        """The inverse of :meth:`to_json`, for a bundle's manifest."""
        return cls(reason=data["reason"], variants=data.get("variants", "*"), checks=tuple(data.get("checks", ())),
                   when=dict(data.get("when", {})), against=data.get("against", "*"))


@dataclass
class Implementation:
    """One way of computing a case's outputs, on one backend."""

    name: str
    backend: str
    fn: Callable[..., Any]
    dtypes: tuple[str, ...]
    devices: tuple[str, ...]
    modes: tuple[str, ...]
    reference: bool = False
    module: bool = False
    location: str = ""

    @property
    def source(self) -> str:
        return _function_source(self.fn)

    def takes_ctx(self) -> bool:
        return "ctx" in _parameters(self.fn)

    def check_signature(self, case_id: str, inputs: Sequence[str], has_params: bool) -> None:
        """Raise :class:`CaseError` unless this implementation can be called with the case's inputs by name.

        A plain function takes every input as a keyword argument (in any order), ``params`` when
        the case has parameters, and ``ctx`` if it wants the variant's :class:`Context`. A builder
        (``module=True``) takes ``params`` and optionally ``ctx``; what it returns gets the inputs.
        """
        where = f"case {case_id}: implementation {self.name!r} ({self.location})"
        try:
            signature = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return  # a builtin or C function: nothing to check ahead of the call
        kinds = {p.name: p for p in signature.parameters.values()}
        var_keyword = any(p.kind is p.VAR_KEYWORD for p in kinds.values())
        positional_only = [n for n, p in kinds.items() if p.kind is p.POSITIONAL_ONLY]
        if positional_only:
            raise CaseError(f"{where} has positional-only parameters ({', '.join(positional_only)}): "
                            "inputs are passed by name")
        named = [n for n, p in kinds.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        required = [n for n in named if kinds[n].default is inspect.Parameter.empty]
        if self.module:
            extra = [n for n in required if n not in RESERVED_NAMES]
            if extra:
                raise CaseError(f"{where} is a builder (module=True): it takes params (and optionally ctx), "
                                f"not {', '.join(extra)}; the module it returns takes the inputs")
            if has_params and "params" not in named and not var_keyword:
                raise CaseError(f"{where} is a builder (module=True) and must take params")
            return
        given = ", ".join(inputs) or "none"
        missing = [n for n in required if n not in inputs and n not in RESERVED_NAMES]
        if "params" in required and not has_params:
            missing.append("params (the case has no params=)")
        extra = [n for n in inputs if n not in named and not var_keyword]
        if has_params and "params" not in named and not var_keyword:
            extra.append("params")
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"takes {', '.join(missing)}, which the case does not give")
            if extra:
                parts.append(f"does not take {', '.join(extra)}")
            raise CaseError(f"{where} {' and '.join(parts)}; the case's inputs are: {given} "
                            "(inputs are passed by name)")


@dataclass
class Variant:
    """One runnable combination: case x implementation x device x dtype x mode."""

    case: Case
    impl: Implementation
    device: str
    dtype: str
    mode: str

    @property
    def id(self) -> str:
        return variant_id(self.case.id, self.impl.name, self.device, self.dtype, self.mode)

    @property
    def tags(self) -> frozenset[str]:
        return variant_tags(self.case.tags, self.mode)

    @property
    def keywords(self) -> set[str]:
        return variant_keywords(self.case.tags, self.impl.backend, self.impl.name, self.device, self.dtype, self.mode)


def variant_tags(case_tags: Iterable[str], mode: str) -> frozenset[str]:
    """The case's tags, plus ``roundtrip`` for a round-trip mode: ``--tag roundtrip`` selects
    every round trip, also those of model cases whose other variants are not round trips."""
    tags = frozenset(case_tags)
    return tags | {"roundtrip"} if mode.startswith("roundtrip:") else tags


def variant_keywords(case_tags: Iterable[str], backend: str, impl: str, device: str, dtype: str, mode: str) -> set[str]:
    """Names a ``-k`` expression can match besides the id: tags, backend, implementation, device,
    dtype, mode. One definition for a declared variant and a recorded one, so that ``compare -k``
    keeps what ``run -k`` ran."""
    return {*variant_tags(case_tags, mode), backend, impl, device, dtype, mode}


def variant_id(case_id: str, impl: str, device: str, dtype: str, mode: str) -> str:
    return f"{case_id}[{impl}:{device}:{dtype}:{mode}]"


def parse_variant_id(text: str) -> tuple[str, str, str, str, str]:
    """Split ``CASE[IMPL:DEVICE:DTYPE:MODE]``; the mode may itself hold colons."""
    if not text.endswith("]") or "[" not in text:
        raise CaseError(f"not a variant id: {text!r} (expected CASE[IMPL:DEVICE:DTYPE:MODE])")
    case_id, _, inner = text[:-1].partition("[")
    parts = inner.split(":", 3)
    if len(parts) != 4:
        raise CaseError(f"not a variant id: {text!r} (expected CASE[IMPL:DEVICE:DTYPE:MODE])")
    return case_id, parts[0], parts[1], parts[2], parts[3]


#: How the accuracy against a float64 oracle is measured unless a case says otherwise: the RMS
#: error, and a ratio within 2x either way read as rounding noise (torch._dynamo's fp64_ref test).
DEFAULT_ACCURACY: dict[str, Any] = {"metric": "rms", "factor": 2.0}


def _decisions(case_id: str, decisions: Mapping[str, str] | None) -> dict[str, str]:
    """``{"logits": "argmax @ 1%"}`` checked and in canonical form; a bad rule fails at definition."""
    from detharness.compare.decision import Decision

    if decisions is None:
        return {}
    if not isinstance(decisions, Mapping):
        raise CaseError(f"case {case_id}: decisions must map output names to rules, e.g. {{'logits': 'argmax'}}")
    def canonical(output: str, rule: str) -> str:
        try:
            return str(Decision.parse(rule))
        except (ValueError, TypeError) as exc:
            raise CaseError(f"case {case_id}: decision for output {output!r}: {exc}") from None

    return {str(output): canonical(str(output), rule) for output, rule in decisions.items()}


def _accuracy_options(case_id: str, accuracy: Mapping[str, Any] | None) -> dict[str, Any]:
    options = dict(DEFAULT_ACCURACY)
    for key, value in (accuracy or {}).items():
        if key == "metric" and value in ("rms", "max_scaled"):
            options["metric"] = value
        elif key == "factor" and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 1:
            options["factor"] = float(value)
        else:
            raise CaseError(f"case {case_id}: accuracy option {key}={value!r}: use metric='rms' or 'max_scaled' "
                            "and a factor over 1")
    return options


class Case:
    """A registered case. Created with :func:`case`; implementations are added with :meth:`impl`.

    ``decisions`` maps an output (logits, scores) to the decision a consumer takes from it:
    ``argmax``, ``topk(K)``, ``threshold(T)`` or ``sign``, optionally with a flip budget, ``"argmax @
    1%"``; a comparison whose values pass but whose decisions flip past the budget is ``flipped``.
    ``accuracy`` sets how the error against the float64 oracle is read: ``{"metric": "rms" |
    "max_scaled", "factor": 2.0}``. ``intermediates=True`` records the layers of its model variants
    in every run, as ``run --intermediates`` does for all.
    """

    def __init__(
        self,
        id: str,
        *,
        inputs: InputFactory | None = None,
        params: InputFactory | None = None,
        tags: Iterable[str] = (),
        tolerance: str | Mapping[str, str] | None = None,
        seed: int = 0,
        outputs: Sequence[str] | None = None,
        reference_outputs: Mapping[str, np.ndarray] | None = None,
        known: Iterable[KnownDivergence] = (),
        description: str = "",
        location: str = "",
        fingerprint_extra: str = "",
        kind: str = "compute",
        decisions: Mapping[str, str] | None = None,
        accuracy: Mapping[str, Any] | None = None,
        intermediates: bool = False,
    ) -> None:
        if not isinstance(id, str) or not _CASE_ID.match(id):
            raise CaseError(f"bad case id {id!r}: use slash-separated names of letters, digits, '_', '-', '.', '+'")
        if kind not in CASE_KINDS:
            raise CaseError(f"case {id}: kind {kind!r} is not one of {', '.join(CASE_KINDS)}")
        self.decisions = _decisions(id, decisions)
        self.accuracy = _accuracy_options(id, accuracy)
        self.intermediates = bool(intermediates)
        self.id = id
        self.kind = kind
        self.inputs_factory = inputs
        self.params_factory = params
        self.tags = frozenset(tags) | ({"rng"} if kind == "rng" else set())
        self.tolerance = tolerance
        self.seed = seed
        self.outputs = tuple(outputs) if outputs else None
        self.reference_outputs = dict(reference_outputs) if reference_outputs is not None else None
        self.known = list(known)
        self.description = description
        self.location = location
        self.fingerprint_extra = fingerprint_extra
        self.impls: dict[str, Implementation] = {}
        # Round trips declared with .roundtrip(): (impl name, format names, dtypes, devices).
        self.roundtrips: list[tuple[str, tuple[str, ...], tuple[str, ...] | None, tuple[str, ...] | None]] = []
        # Formats this case brings itself (a custom save and load), by name.
        self.roundtrip_formats: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Case({self.id!r}, impls={list(self.impls)})"

    # -- authoring ---------------------------------------------------------------------------

    def impl(
        self,
        name: str,
        *,
        backend: str,
        reference: bool = False,
        dtypes: Sequence[str] = ("float32",),
        devices: Sequence[str] | None = None,
        modes: Sequence[str] | None = None,
        module: bool = False,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Add an implementation. ``devices`` defaults to the CPU and, except for numpy, CUDA (which
        is skipped with a reason where no GPU is seen). ``module=True`` marks a builder: ``build(params)`` returns a
        torch module, a jax callable or an ONNX model, which the backend then calls with the inputs
        (so the torch ``onnx`` mode can export it)."""

        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if not _IMPL_NAME.match(name):
                raise CaseError(f"case {self.id}: bad implementation name {name!r}")
            if name in self.impls:
                raise CaseError(f"case {self.id}: implementation {name!r} defined twice "
                                f"({self.impls[name].location} and {_where(fn)})")
            if reference and self.reference_impl is not None:
                raise CaseError(f"case {self.id}: two references ({self.reference_impl.name!r} and {name!r})")
            if reference and self.reference_outputs is not None:
                raise CaseError(f"case {self.id}: reference implementation {name!r} given beside stored outputs")
            self.impls[name] = Implementation(
                name=name,
                backend=backend,
                fn=fn,
                dtypes=tuple(dtypes),
                devices=tuple(devices) if devices else _default_devices(backend),
                modes=tuple(modes) if modes else _default_modes(backend, module),
                reference=reference,
                module=module,
                location=_where(fn),
            )
            return fn

        return register

    def known_divergence(self, reason: str, *, variants: str = "*", checks: Sequence[str] | None = None,
                         when: Mapping[str, str] | None = None, against: str = "*") -> Case:
        """Declare a known divergence (see :class:`KnownDivergence`); returns the case for chaining."""
        self.known.append(KnownDivergence(reason=reason, variants=variants,
                                          checks=tuple(checks) if checks else KnownDivergence.checks,
                                          when=dict(when or {}), against=against))
        return self

    def roundtrip(self, impl: str, formats: Sequence[Any] | None = None, *, dtypes: Sequence[str] | None = None,
                  devices: Sequence[str] | None = None) -> Case:
        """Add round-trip variants to the module builder ``impl``: one mode ``roundtrip:<format>`` each.

        ``formats`` are names of registered formats of the implementation's backend (default:
        all of them, see :mod:`detharness.roundtrip`) or format objects of the case's own (a
        subclass of a built-in format). ``dtypes`` defaults to the implementation's first dtype
        only, ``devices`` to its devices. Returns the case for chaining.
        """
        from detharness import roundtrip as rt  # imports no framework

        if impl not in self.impls:
            raise CaseError(f"case {self.id}: round trips of unknown implementation {impl!r} "
                            f"(known: {', '.join(self.impls) or 'none'}); declare the implementation first")
        implementation = self.impls[impl]
        if not implementation.module:
            raise CaseError(f"case {self.id}: implementation {impl!r} is a plain function; round trips save and "
                            "load what a module builder returns (module=True)")
        names: list[str] = []
        for fmt in formats if formats is not None else rt.formats_for(implementation.backend):
            if isinstance(fmt, rt.RoundtripFormat):
                if fmt.backend != implementation.backend:
                    raise CaseError(f"case {self.id}: format {fmt.name!r} is for {fmt.backend}, "
                                    f"implementation {impl!r} runs on {implementation.backend}")
                self.roundtrip_formats[fmt.name] = fmt
                names.append(fmt.name)
            elif rt.find_format(implementation.backend, str(fmt), self.roundtrip_formats) is not None:
                names.append(str(fmt))
            else:
                known = ", ".join(f.name for f in rt.formats_for(implementation.backend)) or "none"
                raise CaseError(f"case {self.id}: no round-trip format {fmt!r} for backend "
                                f"{implementation.backend!r} (known: {known})")
        self.roundtrips.append((impl, tuple(names), tuple(dtypes) if dtypes else None,
                                tuple(devices) if devices else None))
        return self

    # -- queries -----------------------------------------------------------------------------

    @property
    def reference_impl(self) -> Implementation | None:
        return next((i for i in self.impls.values() if i.reference), None)

    @property
    def reference_variant(self) -> Variant | None:
        """What every other variant is held against: the reference's first dtype and mode, on the CPU."""
        ref = self.reference_impl
        return Variant(self, ref, "cpu", ref.dtypes[0], ref.modes[0]) if ref is not None else None

    def variants(self) -> Iterator[Variant]:
        """Every variant the case declares, whatever this machine has (round trips last)."""
        seen: set[str] = set()
        for impl in self.impls.values():
            for device in impl.devices:
                for dtype in impl.dtypes:
                    for mode in impl.modes:
                        seen.add(variant_id(self.id, impl.name, device, dtype, mode))
                        yield Variant(self, impl, device, dtype, mode)
        for name, formats, dtypes, devices in self.roundtrips:
            impl = self.impls[name]
            for device in devices or impl.devices:
                for dtype in dtypes or impl.dtypes[:1]:
                    for fmt in formats:
                        v = Variant(self, impl, device, dtype, f"roundtrip:{fmt}")
                        if v.id not in seen:  # declared twice (modes= and .roundtrip()): run once
                            seen.add(v.id)
                            yield v

    def make_inputs(self) -> ArrayDict:
        inputs = _make_arrays(self, self.inputs_factory, stream=0, what="inputs")
        reserved = [name for name in inputs if name in RESERVED_NAMES]
        if reserved:
            raise CaseError(f"case {self.id} ({self.location}): no input may be called {reserved[0]!r}: "
                            f"{' and '.join(RESERVED_NAMES)} are reserved for the parameters and the variant context")
        return inputs

    def make_params(self) -> ArrayDict:
        return _make_arrays(self, self.params_factory, stream=1, what="params")

    def check_signatures(self, inputs: Sequence[str], params: Sequence[str]) -> None:
        """Every implementation against the case's input names (see :meth:`Implementation.check_signature`)."""
        for impl in self.impls.values():
            impl.check_signature(self.id, list(inputs), bool(params) or self.params_factory is not None)

    def tolerance_for(self, output: str, dtype: str) -> str | None:
        """The case's tolerance for one output at one dtype; ``None`` means the dtype's default.

        A mapping tolerance is looked up by output name, then dtype name, then ``"default"``.
        """
        tol = self.tolerance
        if tol is None or isinstance(tol, str):
            return tol
        for key in (output, dtype, "default"):
            if key in tol:
                return tol[key]
        return None

    def known_for(self, variant: str, check: str, environment: Mapping[str, Any],
                  baseline: str | None = None) -> KnownDivergence | None:
        return next((k for k in self.known if k.applies(variant, check, environment, baseline)), None)

    @property
    def fingerprint(self) -> str:
        """sha256 over everything that defines the case: sources of its functions and its options.

        Recorded per variant so that a changed case is never blamed on the environment.
        """
        h = hashlib.sha256()
        parts: dict[str, Any] = {
            "id": self.id,
            "seed": self.seed,
            "tolerance": self.tolerance,
            "outputs": self.outputs,
            "inputs": _source(self.inputs_factory),
            "params": _source(self.params_factory),
            "extra": self.fingerprint_extra,
            "impls": {n: [i.backend, i.source, i.dtypes, i.modes, i.reference, i.module] for n, i in self.impls.items()},
        }
        # Only when set, so that the fingerprints of cases without them stay what they were.
        if self.kind != "compute":
            parts["kind"] = self.kind
        if self.decisions:
            parts["decisions"] = self.decisions
        if self.accuracy != DEFAULT_ACCURACY:
            parts["accuracy"] = self.accuracy
        if self.roundtrips:
            parts["roundtrips"] = [[i, list(f), d, v] for i, f, d, v in self.roundtrips]
            parts["roundtrip_formats"] = sorted(f.fingerprint() for f in self.roundtrip_formats.values())
        h.update(json.dumps(parts, sort_keys=True, default=str).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        ref = self.reference_impl
        return {
            "id": self.id,
            "kind": self.kind,
            "tags": sorted(self.tags),
            "description": self.description,
            "location": self.location,
            "tolerance": self.tolerance,
            "decisions": self.decisions,
            "accuracy": self.accuracy,
            "reference": ref.name if ref else ("stored outputs" if self.reference_outputs is not None else None),
            "implementations": [
                {"name": i.name, "backend": i.backend, "dtypes": list(i.dtypes), "devices": list(i.devices),
                 "modes": list(i.modes), "reference": i.reference}
                for i in self.impls.values()
            ],
            "known": [k.to_json() for k in self.known],
            "fingerprint": self.fingerprint,
        }


def _default_devices(backend: str) -> tuple[str, ...]:
    # numpy only ever runs on the CPU; every other backend may find a GPU on some runner.
    return ("cpu",) if backend == "numpy" else ("cpu", "cuda")


def _default_modes(backend: str, module: bool) -> tuple[str, ...]:
    from detharness.backends import BACKENDS  # imports no framework

    known = BACKENDS.get(backend)
    return known.modes_for(module) if known is not None else ("eager",)


def _parameters(fn: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def _source(fn: Callable[..., Any] | None) -> str | None:
    return None if fn is None else _function_source(fn)


def _function_source(fn: Callable[..., Any]) -> str:
    """A function's source for the case fingerprint; its name where the source cannot be read."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def _where(fn: Any) -> str:
    try:
        file = inspect.getsourcefile(fn)
        # A function's code knows its first line (its first decorator's, as getsourcelines says);
        # getsourcelines would tokenize the rest of its body for it, two thirds of discovery's time.
        code = getattr(fn, "__code__", None)
        line = code.co_firstlineno if file is not None and code is not None else inspect.getsourcelines(fn)[1]
    except (OSError, TypeError):
        return "<unknown>"
    return f"{display_path(file or '?')}:{line}"


def _home() -> Path | None:
    """The home folder, resolved; ``None`` when unset or the filesystem root (nothing to hide)."""
    import os

    home = os.environ.get("HOME")
    if not home:
        return None
    resolved = Path(home).resolve()
    return None if resolved == Path(resolved.anchor) else resolved


def display_path(path: str | Path) -> str:
    """A path as a user would type it: relative to the working directory when under it, else
    ``~/...`` when under the home folder (so bundles and reports carry no home-folder name).

    For a command line to paste into a shell use :func:`shell_path`: a shell does not expand a
    quoted ``'~/...'``.
    """
    p = Path(path).expanduser()
    resolved = p.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    home = _home()
    if home is not None and (resolved == home or home in resolved.parents):
        rest = resolved.relative_to(home).as_posix()
        return "~" if rest == "." else f"~/{rest}"
    return str(p)


def shell_path(path: str | Path) -> str:
    """``path`` as one shell word that names it when pasted into a shell, from any folder: a path
    under the home folder (or written ``~/...``) as ``"$HOME"/rest``, anything else quoted
    (:func:`shlex.quote`). A relative path stays relative."""
    import shlex

    text = str(path)
    if text == "~" or text.startswith("~/"):
        text = str(Path(text).expanduser())
    home = _home()
    if home is not None and Path(text).is_absolute():
        absolute = Path(text).resolve()
        if absolute == home:
            return '"$HOME"'
        if home in absolute.parents:
            return '"$HOME"/' + shlex.quote(absolute.relative_to(home).as_posix())
    return shlex.quote(text)


def _make_arrays(c: Case, factory: InputFactory | None, *, stream: int, what: str) -> ArrayDict:
    if factory is None:
        return {}
    # One seed sequence per case and stream, so adding a parameter never shifts the inputs.
    rng = np.random.default_rng([c.seed, stream])
    made = factory(rng)
    if not isinstance(made, Mapping):
        raise CaseError(f"case {c.id}: {what} must return a dict of name -> array, got {type(made).__name__}")
    out: ArrayDict = {}
    for name, value in made.items():
        arr = np.asarray(value)
        if arr.dtype.kind == "O":
            raise CaseError(f"case {c.id}: {what} {name!r} is an object array; use numbers, bools or strings")
        out[str(name)] = np.require(arr, requirements="C")  # ascontiguousarray makes 0-d arrays 1-d
    return out


class Registry:
    """An ordered set of cases with unique ids."""

    def __init__(self) -> None:
        self._cases: dict[str, Case] = {}
        self.files: list[str] = []

    def add(self, c: Case) -> Case:
        if c.id in self._cases:
            raise CaseError(f"duplicate case id {c.id!r}: defined at {self._cases[c.id].location} and {c.location}")
        self._cases[c.id] = c
        return c

    def __iter__(self) -> Iterator[Case]:
        return iter(self._cases.values())

    def __len__(self) -> int:
        return len(self._cases)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self._cases

    def __getitem__(self, case_id: str) -> Case:
        try:
            return self._cases[case_id]
        except KeyError:
            raise CaseError(f"no case {case_id!r}") from None

    def get(self, case_id: str) -> Case | None:
        return self._cases.get(case_id)


_state = threading.local()
default_registry = Registry()


def _current_registry() -> Registry:
    current = getattr(_state, "registry", None)
    return default_registry if current is None else current


@contextmanager
def collecting_into(registry: Registry) -> Iterator[Registry]:
    """Make :func:`case` add to ``registry`` while case files are imported."""
    previous = getattr(_state, "registry", None)
    _state.registry = registry
    try:
        yield registry
    finally:
        _state.registry = previous


def include(path: str | Path) -> Registry:
    """Load another case file, relative to the calling one, into the registry being collected.

    For a case file that builds on cases defined elsewhere: ``cases/roundtrip/models.py`` adds
    round trips to ``models/mlp`` with ``include("../models/mlp.py")["models/mlp"].roundtrip(...)``,
    reusing its module builder. A file is loaded once per registry, whichever file asks first.
    """
    frame = sys._getframe(1)
    target = Path(frame.f_code.co_filename).resolve().parent / path
    if not target.is_file():
        raise CaseError(f"include({str(path)!r}) from {display_path(frame.f_code.co_filename)}: no such case file")
    registry = _current_registry()
    load_case_file(target, registry)
    return registry


def case(id: str, **options: Any) -> Case:
    """Create a case and add it to the registry being collected (see :class:`Case` for options)."""
    frame = sys._getframe(1)  # inspect.stack() reads every source file on the stack: far slower
    c = Case(id, location=f"{display_path(frame.f_code.co_filename)}:{frame.f_lineno}", **options)
    return _current_registry().add(c)


# -- discovery -------------------------------------------------------------------------------

CASE_SOURCES: list[Callable[[Path, Registry], bool]] = []
"""Extra case sources: each gets a folder and returns True when it claimed it (ONNX test data)."""


def _onnx_test_data(folder: Path, registry: Registry) -> bool:
    """ONNX backend-test folders (``model.onnx`` + ``test_data_set_N/``), see :mod:`detharness.onnx_testdata`."""
    # Imported on call: that module looks at file names first and imports onnx only for a folder
    # that holds test data, so importing cases.py and listing ordinary cases stay cheap.
    from detharness.onnx_testdata import load_onnx_test_data

    return load_onnx_test_data(folder, registry)


CASE_SOURCES.append(_onnx_test_data)


def builtin_cases_path() -> Path:
    """The built-in library: ``cases/`` in a checkout, the ``detharness_cases`` package when installed."""
    spec = importlib.util.find_spec("detharness_cases")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "cases"


def case_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*.py")
                  if p.name != "__init__.py" and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts))


def discover(paths: Sequence[str | Path] | None = None) -> Registry:
    """Import every case file under ``paths`` (default: the built-in library) into a new Registry.

    This runs the user's Python code. A file that fails to import raises :class:`CaseError` naming
    the file and the error.
    """
    registry = Registry()
    targets = [Path(p) for p in paths] if paths else [builtin_cases_path()]
    for target in targets:
        if not target.exists():
            raise CaseError(f"--cases {target}: no such file or directory")
        if target.is_dir() and any(source(target, registry) for source in CASE_SOURCES):
            continue
        for file in case_files(target):
            load_case_file(file, registry)
    return registry


def load_case_file(file: Path, registry: Registry) -> None:
    resolved = file.resolve()
    if str(resolved) in registry.files:
        return
    module_name = "detharness_user_cases._" + hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise CaseError(f"{file}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    with collecting_into(registry):
        try:
            spec.loader.exec_module(module)
        except CaseError:
            raise
        except BaseException as exc:  # a case file is user code: any failure is the user's to fix
            if isinstance(exc, KeyboardInterrupt):
                raise
            sys.modules.pop(module_name, None)
            from detharness._io import terminal_safe

            # One line with nothing a terminal acts on: the message is user code's (newlines, escape codes).
            message = f"case file {file} failed to import{_error_line(exc, resolved)}: {type(exc).__name__}: {exc}"
            raise CaseError(terminal_safe(message)) from exc
    registry.files.append(str(resolved))


def _error_line(exc: BaseException, file: Path) -> str:
    tb = exc.__traceback__
    lineno = None
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == file:
            lineno = tb.tb_lineno
        tb = tb.tb_next
    return f" (line {lineno})" if lineno else ""
