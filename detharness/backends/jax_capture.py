"""Every equation's output of a jax function, evaluated op by op, and the named scopes' outputs.

:func:`capture` traces ``fn`` with ``jax.make_jaxpr`` and evaluates the resulting jaxpr eagerly,
one equation at a time (``eqn.primitive.bind`` on concrete arrays, the way ``jax.core.eval_jaxpr``
does), recording each equation's array outputs in program order. :func:`scoped_layers` turns those
into one layer per ``jax.named_scope`` of the function: the output of the last equation inside it,
so a case's named blocks compare like torch modules.

Names
    ``<name stack>/<primitive>:<index>``, e.g. ``encoder/attn/dot_general:12``, or
    ``tanh:3`` for an equation outside any named scope. The name stack is ``str`` of the equation's
    ``source_info.name_stack`` (the ``jax.named_scope`` names, and transforms such as ``jvp(...)``
    where the function was transformed), prefixed with the stacks of the call equations it sits in.
    The index counts the recorded equations from 0 in evaluation order, over the whole call, so
    every name is unique. An equation with more than one array output gives ``name.0``,
    ``name.1``; its other outputs (tokens) are left out. Constants and literals are inputs, not
    layers, and are never recorded.
Sub-jaxprs
    Call-like equations (``jit``/``pjit``, ``closed_call``, ``core_call``, ``custom_jvp_call``,
    ``custom_vjp_call``, ``remat2``/``checkpoint``) are not recorded themselves: their jaxpr is
    evaluated equation by equation in their place, so their inner equations are recorded (a
    ``custom_jvp``/``custom_vjp`` function runs its primal computation, as it does outside
    differentiation). Control flow (``cond``, ``while``, ``scan``) and any other primitive
    carrying jaxprs is bound whole, as one equation, and recorded as one layer: its body runs
    compiled and its inner steps are not seen.
Exact or approximate
    Op by op is not how the jitted program computes: XLA fuses, reorders and rewrites the whole
    program (measured: a layer-norm + GELU + matmul's output differs between the two on a large
    share of its elements). :attr:`Captured.outputs` is this evaluation's own output; the caller
    compares it with the variant's jitted output (:func:`reproduces`, bit for bit) and, where
    they differ, reports the layers as approximate: they are what op-by-op jax computes, not the
    intermediates of the program that produced the recorded output.

``fn`` is the callable a jax case's implementation or builder gives (not the backend's compiled
executable, which cannot be traced again); a builder's ``functools.partial(..., params=...)`` is
traced with its parameters as constants. jax is imported inside the functions only, so this
module imports without jax installed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detharness.backends.torch_capture import _size
from detharness.dtypes import bitwise_equal

#: Call-like primitives whose jaxpr is evaluated equation by equation in their place, and the
#: parameter that holds it (a ``ClosedJaxpr`` or a ``Jaxpr``).
_CALLS: dict[str, tuple[str, ...]] = {
    "jit": ("jaxpr",),
    "pjit": ("jaxpr",),
    "closed_call": ("call_jaxpr",),
    "core_call": ("call_jaxpr",),
    "custom_jvp_call": ("call_jaxpr",),
    "custom_vjp_call": ("call_jaxpr", "fun_jaxpr"),
    "custom_vjp_call_jaxpr": ("fun_jaxpr", "call_jaxpr"),
    "remat2": ("jaxpr",),
    "checkpoint": ("jaxpr",),
}


@dataclass
class Captured:
    """What :func:`capture` recorded from one op-by-op evaluation of a jax function.

    ``layers`` holds ``(name, array)`` for each array an equation returned, in program order (see
    the module docstring for names). ``notes`` says what was dropped or bound whole, ``dropped``
    how many equation outputs the size cap dropped. ``outputs`` is the function's flattened
    output (``jax.tree_util.tree_leaves`` order) as this evaluation computed it, for
    :func:`reproduces`. ``scope_ends`` maps each named scope (``encoder``, ``encoder/attn``) to the
    layer names of the last equation inside it, kept or dropped, in the order those equations
    ran (inner scopes before the scopes around them); :func:`scoped_layers` reads it.
    """

    layers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    dropped: int = 0
    outputs: list[np.ndarray] = field(default_factory=list)
    scope_ends: dict[str, list[str]] = field(default_factory=dict)


def capture(fn: Any, args: tuple[Any, ...], *, max_bytes: int | None = None) -> Captured:
    """Evaluate ``fn(*args)`` equation by equation and record every equation's array outputs.

    ``args`` are passed as ``fn`` takes them (arrays or pytrees of them); they are put on jax's
    default device with ``jax.device_put``. The whole function always runs, so
    :attr:`Captured.outputs` is complete whatever the cap. ``max_bytes`` bounds what is kept,
    counted as the arrays' sizes: once the next equation's outputs would bring the total over it,
    that equation's and every later one's are dropped (what is kept is the first part of the
    list), counted in :attr:`Captured.dropped` and said in the notes.
    """
    import jax

    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
    closed = jax.make_jaxpr(fn)(*args)
    leaves = [jax.device_put(leaf) for leaf in jax.tree_util.tree_leaves(args)]
    run = _Run(max_bytes)
    outs = run.eval(closed.jaxpr, list(closed.consts), leaves, "")
    captured = run.captured
    captured.outputs = [_to_numpy(v) for v in outs if _is_array(v)]
    ends = sorted(run.scope_end.items(), key=lambda item: (item[1][0], -item[0].count("/")))
    captured.scope_ends = {scope: names for scope, (_, names) in ends}
    if run.whole:
        captured.notes.append(
            f"bound whole (their inner steps not recorded): {', '.join(sorted(set(run.whole)))}"
        )
    if captured.dropped:
        kept = len(captured.layers)
        captured.notes.append(
            f"kept {kept} of {kept + captured.dropped} equation outputs ({run.kept_eqns} of {run.eqns} "
            f"equations, the first {_size(max_bytes or 0)}); the rest dropped"
        )
    return captured


def scoped_layers(captured: Captured) -> list[tuple[str, np.ndarray]]:
    """One layer per named scope: the output of the last equation inside it, named by the scope.

    A scope's name is its full path (``encoder/attn``); every enclosing scope is a layer too
    (``encoder``), and a scope name used twice is one scope whose last equation is the later
    one's. Order: the order in which the scopes' last equations ran, inner scopes before the
    scopes around them, like torch's hooks. A last equation with several outputs gives
    ``scope.0``, ``scope.1``. A scope whose last equation the size cap dropped is left out.
    """
    layers = dict(captured.layers)
    result: list[tuple[str, np.ndarray]] = []
    for scope, names in captured.scope_ends.items():
        if not all(name in layers for name in names):
            continue
        if len(names) == 1:
            result.append((scope, layers[names[0]]))
        else:
            result.extend((f"{scope}.{i}", layers[name]) for i, name in enumerate(names))
    return result


def reproduces(captured: Captured, jitted_outputs: Any) -> bool:
    """Whether the op-by-op outputs equal ``jitted_outputs`` bit for bit (same count, dtypes, shapes).

    ``jitted_outputs`` is the variant's output as its jitted program returned it: an array, a
    pytree of arrays, or the flattened list; it is flattened with ``jax.tree_util.tree_leaves``.
    Where this is False the captured layers are approximate (see the module docstring).
    """
    import jax

    expected = [_to_numpy(v) for v in jax.tree_util.tree_leaves(jitted_outputs)]
    if len(expected) != len(captured.outputs):
        return False
    return all(bitwise_equal(a, b) for a, b in zip(captured.outputs, expected, strict=True))


class _Run:
    """One op-by-op evaluation: the recorded layers, the size cap's state, the scopes' last equations."""

    def __init__(self, max_bytes: int | None) -> None:
        self.captured = Captured()
        self.max_bytes = max_bytes
        self.bytes = 0
        self.stopped = False
        self.index = 0  # equations with array outputs, in program order
        self.eqns = 0
        self.kept_eqns = 0
        self.whole: list[str] = []
        self.scope_end: dict[str, tuple[int, list[str]]] = {}

    def eval(self, jaxpr: Any, consts: list[Any], args: list[Any], stack: str) -> list[Any]:
        """Evaluate ``jaxpr`` on concrete ``consts`` and ``args``; its outputs. ``stack``: the
        name stack of the call equations around it."""
        from jax.extend.core import ClosedJaxpr, Literal

        env: dict[Any, Any] = {}

        def read(atom: Any) -> Any:
            return atom.val if isinstance(atom, Literal) else env[atom]

        env.update(zip(jaxpr.constvars, consts, strict=True))
        env.update(zip(jaxpr.invars, args, strict=True))
        for eqn in jaxpr.eqns:
            invals = [read(v) for v in eqn.invars]
            inner_stack = _join(stack, str(eqn.source_info.name_stack))
            sub = self._callee(eqn)
            if sub is not None:
                if isinstance(sub, ClosedJaxpr):
                    outs = self.eval(sub.jaxpr, list(sub.consts), invals, inner_stack)
                else:
                    outs = self.eval(sub, [], invals, inner_stack)
            else:
                if any(True for _ in _jaxprs_in(eqn.params)):
                    self.whole.append(eqn.primitive.name)
                params = eqn.primitive.get_bind_params(eqn.params)
                ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
                with ctx if ctx is not None else contextlib.nullcontext():
                    ans = eqn.primitive.bind(*invals, **params)
                outs = list(ans) if eqn.primitive.multiple_results else [ans]
                self._record(eqn.primitive.name, inner_stack, outs)
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    @staticmethod
    def _callee(eqn: Any) -> Any:
        """The jaxpr to evaluate in place of a call-like ``eqn``, or None to bind it whole."""
        from jax.extend.core import ClosedJaxpr, Jaxpr

        for key in _CALLS.get(eqn.primitive.name, ()):
            sub = eqn.params.get(key)
            if isinstance(sub, (ClosedJaxpr, Jaxpr)):
                inner = sub.jaxpr if isinstance(sub, ClosedJaxpr) else sub
                if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
                    return sub
        return None

    def _record(self, primitive: str, stack: str, outs: list[Any]) -> None:
        arrays = [v for v in outs if _is_array(v)]
        if not arrays:
            return
        base = _join(stack, f"{primitive}:{self.index}")
        self.index += 1
        self.eqns += 1
        names = [base] if len(arrays) == 1 else [f"{base}.{i}" for i in range(len(arrays))]
        if stack:
            parts = stack.split("/")
            for depth in range(1, len(parts) + 1):
                self.scope_end["/".join(parts[:depth])] = (self.index, names)
        if not self.stopped and self.max_bytes is not None:
            size = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in arrays)
            if self.bytes + size > self.max_bytes:
                self.stopped = True
            else:
                self.bytes += size
        if self.stopped:
            self.captured.dropped += len(arrays)
            return
        self.kept_eqns += 1
        self.captured.layers.extend((name, _to_numpy(v)) for name, v in zip(names, arrays, strict=True))


def _jaxprs_in(params: dict[str, Any]) -> Any:
    """The jaxprs among an equation's parameters (``jax.extend.core.jaxprs_in_params``)."""
    from jax.extend.core import jaxprs_in_params

    return jaxprs_in_params(params)


def _join(stack: str, name: str) -> str:
    return f"{stack}/{name}" if stack and name else stack or name


def _is_array(value: Any) -> bool:
    import jax

    return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _to_numpy(value: Any) -> np.ndarray:
    """A host copy that owns its memory; bfloat16 stays bfloat16 (ml_dtypes)."""
    import jax

    return np.array(jax.device_get(value), copy=True)


