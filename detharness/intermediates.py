"""Recording the layers inside a model variant (``run --intermediates``), for ``detharness bisect``.

For a variant whose implementation builds a model, the worker runs the model once more with every
layer's output captured, in program order:

- torch eager: forward hooks on every submodule, named by ``named_modules()``
  (:mod:`detharness.backends.torch_capture`); each layer's inputs are kept too, so that a later
  run with ``--inputs-from`` this bundle can replay them (shadow mode: the error a layer
  introduces itself, apart from what it inherits);
- torch exported to ONNX, and ONNX models in ONNX Runtime: every node output exposed as a graph
  output on a copy of the model (:mod:`detharness.backends.onnx_capture`); an export's node
  outputs are named by the torch module that produced them, so torch eager and its export compare
  layer by layer, and modules the exporter folded away are listed as fused;
- jax: the jaxpr evaluated equation by equation (:mod:`detharness.backends.jax_capture`); where the
  case names scopes (``jax.named_scope``) each scope's last output is a layer, else each equation's.

A capture must reproduce the variant's recorded outputs bitwise, or its layers are marked
approximate (hooks can make torch leave a fused kernel; exposed outputs can block an ONNX Runtime
fusion). Memory and disk stay bounded: at most :data:`MAX_BYTES` per variant, and what was dropped
is said.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detharness.dtypes import bitwise_equal

#: Layer outputs and inputs kept per variant; the rest are dropped and counted.
MAX_BYTES = 32 * 1024 * 1024


@dataclass
class Recorded:
    """What a variant's layers gave: outputs in program order, the inputs of each layer call (torch
    eager, for shadow replays), the shadow outputs (each layer re-run on the baseline's inputs to
    it), and what to know about them."""

    layers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    shadow: list[tuple[str, np.ndarray]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    approximate: bool = False
    fusion_changed: bool | None = None
    fused: list[str] = field(default_factory=list)
    dropped: int = 0
    kind: str = ""

    def to_info(self) -> dict[str, Any]:
        return {"kind": self.kind, "notes": list(self.notes), "approximate": self.approximate,
                "fusion_changed": self.fusion_changed, "fused": list(self.fused), "dropped": self.dropped}


def _check_reproduces(recorded: Recorded, produced: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
    differing = [name for name, array in outputs.items() if name in produced and not bitwise_equal(produced[name], array)]
    if differing:
        recorded.approximate = True
        recorded.notes.append(f"the run with its layers recorded gave other bits for {', '.join(differing)}: "
                              "the layers are approximate")


def record(backend: Any, obj: Any, spec: Any, call: Any, inputs: Sequence[Any], outputs: Mapping[str, np.ndarray], *,
           names: list[str] | None, shadow_inputs: Mapping[str, Sequence[np.ndarray]] | None = None,
           max_bytes: int = MAX_BYTES, roundtrip: bool = False) -> Recorded | None:
    """The layers of one variant, or None where its kind has none (a plain function, a round trip
    that does not end in an ONNX model)."""
    from detharness.dtypes import cast_floats

    if not spec.is_module:
        return None
    onnx_bytes = getattr(call, "onnx_bytes", None)
    make_session = getattr(call, "make_session", None)
    if onnx_bytes is not None and make_session is not None:
        import onnx

        return _record_onnx(backend, onnx.load_from_string(onnx_bytes), make_session, call, inputs,
                            max_bytes=max_bytes)
    if roundtrip:
        return None
    if backend.name == "torch" and spec.mode == "eager":
        from detharness.backends import torch_capture

        raw, captured = torch_capture.capture(obj, tuple(inputs), to_numpy=backend.to_numpy, with_inputs=True,
                                              max_bytes=max_bytes)
        recorded = Recorded(layers=captured.layers, inputs=captured.inputs, notes=list(captured.notes),
                            dropped=captured.dropped, kind="torch")
        _check_reproduces(recorded, backend.outputs_to_numpy(raw, names=names), outputs)
        if shadow_inputs:

            def to_tensor(array: np.ndarray) -> Any:
                return backend.to_native(cast_floats(np.asarray(array), spec.dtype), spec.device)

            recorded.shadow = torch_capture.shadow(obj, shadow_inputs, to_tensor=to_tensor,
                                                   to_numpy=backend.to_numpy, notes=recorded.notes)
        return recorded
    if backend.name == "jax":
        return _record_jax(obj, inputs, outputs, max_bytes=max_bytes)
    return Recorded(notes=[f"layers of {backend.name} {spec.mode} variants are not recorded yet"],
                    kind=backend.name)


def _record_jax(fn: Any, inputs: Sequence[Any], outputs: Mapping[str, np.ndarray], *, max_bytes: int) -> Recorded:
    """The jaxpr evaluated equation by equation; where the case names scopes (``jax.named_scope``)
    the last output of each scope is a layer, else every equation is. Evaluated op by op, jax can
    round otherwise than the jitted program: unless the capture reproduces the recorded outputs
    bitwise, the layers are marked approximate."""
    from detharness.backends import jax_capture

    captured = jax_capture.capture(fn, tuple(inputs), max_bytes=max_bytes)
    scoped = jax_capture.scoped_layers(captured)
    recorded = Recorded(layers=[(name, np.asarray(a)) for name, a in (scoped or captured.layers)],
                        notes=list(captured.notes), dropped=captured.dropped, kind="jax")
    # jax flattens a dict of outputs in key order.
    if not jax_capture.reproduces(captured, [outputs[name] for name in sorted(outputs)]):
        recorded.approximate = True
        recorded.notes.append("evaluated equation by equation, jax rounds otherwise than the jitted program: "
                              "the layers are approximate")
    return recorded


def _record_onnx(backend: Any, model: Any, make_session: Any, call: Any, inputs: Sequence[Any], *,
                 max_bytes: int) -> Recorded:
    from detharness.backends import onnx_capture
    from detharness.runner import declared_inputs

    feed_names = declared_inputs(model) or []
    feeds = {name: backend.to_numpy(array) if not isinstance(array, np.ndarray) else array
             for name, array in zip(feed_names, inputs, strict=False)}
    captured = onnx_capture.capture(model, feeds, make_session=lambda data: make_session(data, None),
                                    make_session_with_optimized_path=make_session)
    scopes = getattr(call, "torch_scopes", None)
    recorded = Recorded(notes=list(captured.notes), fusion_changed=captured.fusion_changed,
                        approximate=not captured.outputs_match, kind="onnx")
    layers = captured.layers
    if scopes:
        # An export: name each module's output by the module (torch eager's names), in the order
        # forward hooks would give them; node outputs inside a module are not layers of their own.
        by_output = dict(layers)
        modules = onnx_capture.module_outputs(model)
        layers = [(module, by_output[output]) for module, output in modules.items() if module and output in by_output]
        recorded.fused = list(getattr(call, "torch_fused", []))
        if recorded.fused:
            recorded.notes.append(f"{len(recorded.fused)} torch modules have no node of their own in the export "
                                  f"(fused): {', '.join(recorded.fused[:8])}")
    kept: list[tuple[str, np.ndarray]] = []
    total = 0
    for name, array in layers:
        total += np.asarray(array).nbytes
        if total > max_bytes:
            recorded.dropped = len(layers) - len(kept)
            recorded.notes.append(f"kept {len(kept)} of {len(layers)} layers (the first {max_bytes // 2**20} MiB); "
                                  "the rest dropped")
            break
        kept.append((name, np.asarray(array)))
    recorded.layers = kept
    return recorded
