"""Every layer of an ONNX model: node outputs exposed as graph outputs, and their torch modules.

The pieces the ``--intermediates`` recording and ``bisect`` build on for ONNX models:

- :func:`expose` copies a model with every node output added as a graph output; :func:`capture`
  runs that copy once through a session made the way the backend makes its sessions and returns
  the outputs in node order, checking that the copy still reproduces the model's own outputs.
- Adding graph outputs can change what ONNX Runtime's optimizer does (a fused node cannot give
  up its intermediate: NVIDIA/TensorRT#3258 is the same effect in TensorRT).
  :func:`fusion_changed` saves the optimized graph of the model and of its exposed copy
  (``SessionOptions.optimized_model_filepath``) and compares their op types.
- For a model from torch's dynamo exporter, :func:`torch_scopes` maps node outputs back to the
  module that produced them (node metadata ``pkg.torch.onnx.name_scopes``),
  :func:`module_outputs` names each module's output, :func:`fused` lists the modules left with
  no node of their own, and :func:`strip_stack_traces` drops the exporter's stack traces (they
  hold absolute paths).

Measured with torch 2.13 (CPU), onnxscript 0.7.2, onnx 1.23, onnxruntime 1.32, CPU provider:

- Exposing every output of Conv -> Relu keeps the two apart: at ``ORT_ENABLE_EXTENDED`` the
  optimized graph has ``FusedConv`` alone, the exposed one ``Conv`` and ``Relu``; at
  ``ORT_ENABLE_ALL`` (and ``ORT_ENABLE_LAYOUT``) the NCHWc ``Conv`` absorbs the Relu, and exposed
  it stays a separate ``Relu`` after one more ``ReorderOutput``. MatMul -> Add -> Relu becomes
  ``FusedGemm`` from ``ORT_ENABLE_EXTENDED`` (``Gemm`` + ``Relu`` at BASIC); exposed it stays
  four nodes, yet the final output was bitwise the same in that test.
- ONNX Runtime accepts a graph output with no type (a ``ValueInfoProto`` holding only the name)
  and infers its type itself; a wrong type is refused ("Type (tensor(double)) of output arg ...
  does not match expected type (tensor(float))"). So :func:`expose` gives each output the type
  that ONNX shape inference finds and leaves the rest typeless, never guessing float.

Imports onnx, onnxruntime and torch only when called.
"""

from __future__ import annotations

import ast
import contextlib
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detharness.dtypes import bitwise_equal

__all__ = [
    "NAME_SCOPES_KEY",
    "STACK_TRACE_KEY",
    "Captured",
    "capture",
    "expose",
    "fused",
    "fusion_changed",
    "module_outputs",
    "node_outputs",
    "strip_stack_traces",
    "torch_scopes",
]

#: Node metadata key where torch's dynamo exporter (torch/onnx/_internal/exporter/_core.py,
#: ``_set_node_metadata``) keeps the module scope of the FX node an ONNX node came from: the
#: ``repr`` of a list of strings, the ``nn_module_stack`` names from the root module inward and
#: then the FX node's own name. Measured values: ``"['', '0', 'linear']"`` for the Linear of an
#: ``nn.Sequential``; ``"['', 'block', 'block.fc', 'linear']"`` for ``self.block.fc``;
#: ``"['', 'layers.1', 'layers.1.fc', 'linear_2']"`` for ``self.layers[1].fc``;
#: ``"['', 'softmax']"`` for an op in the root module's own ``forward``.
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"

#: Node metadata key of the exporter's Python stack trace of the FX node (same function):
#: ``'File "/abs/path/.../torch/nn/modules/linear.py", line 134, in forward\n    return F.linear(...)'``.
STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


@dataclass
class Captured:
    """What :func:`capture` recorded.

    ``layers``: (node output name, array) for every tensor output of a top-level node, in node
    order, the model's own outputs included. ``notes``: what the caller should say in the result
    (outputs that could not be captured, a changed optimized graph, outputs the exposed model did
    not reproduce). ``fusion_changed``: whether exposing the outputs changed ONNX Runtime's
    optimized graph (None: not checked). ``outputs_match``: whether the exposed model reproduced
    the model's own outputs bitwise (None: not checked).
    """

    layers: list[tuple[str, np.ndarray]]
    notes: list[str] = field(default_factory=list)
    fusion_changed: bool | None = None
    outputs_match: bool | None = None


def node_outputs(model: Any) -> list[str]:
    """The names of the outputs of the main graph's nodes, in node order (empty names skipped)."""
    names: list[str] = []
    seen: set[str] = set()
    for node in model.graph.node:
        for name in node.output:
            if name and name not in seen:
                seen.add(name)
                names.append(name)
    return names


def _known_types(model: Any) -> dict[str, Any]:
    """``TypeProto`` by value name, from the model's own value_info and from ONNX shape inference.

    Shape inference can fail (a custom-domain op it does not know, a model over protobuf's 2 GB):
    what the model itself declares is used then, and other outputs are left typeless.
    """
    import onnx

    graphs = [model.graph]
    # Inference is a convenience here: ONNX Runtime infers the rest itself.
    with contextlib.suppress(Exception):
        graphs.append(onnx.shape_inference.infer_shapes(model, strict_mode=False).graph)
    types: dict[str, Any] = {}
    for graph in graphs:
        for info in list(graph.value_info) + list(graph.output):
            if info.HasField("type") and _type_is_known(info.type):
                types.setdefault(info.name, info.type)
    return types


def _type_is_known(type_proto: Any) -> bool:
    kind = type_proto.WhichOneof("value")
    if kind is None:
        return False
    if kind == "tensor_type":
        return bool(type_proto.tensor_type.elem_type)
    return True


def expose(model: Any) -> tuple[Any, list[str]]:
    """A copy of ``model`` with every node output added as a graph output, and the added names.

    Every output of a node of the main graph that is not already a graph output and not empty
    (an omitted optional output) is appended to the graph's outputs, in node order, and its name
    listed. Each added output carries the type that ``onnx.shape_inference.infer_shapes`` finds
    for it; where inference finds none it is added with no type at all, which ONNX Runtime
    accepts and fills in (measured, onnxruntime 1.32). No type is guessed: a float tensor
    declared for an int64 value is refused by ONNX Runtime. Outputs whose inferred type is not a
    tensor (sequences, maps, optionals) are left out, since a run binds outputs as tensors.

    Subgraphs (``If``/``Loop``/``Scan`` bodies) and the bodies of model-local functions are left
    alone: only the outputs of the nodes that call them are exposed. ``model`` is not changed.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {info.name for info in copy.graph.output}
    wanted = [name for name in node_outputs(copy) if name not in existing]
    types = _known_types(copy) if wanted else {}
    added: list[str] = []
    for name in wanted:
        type_proto = types.get(name)
        if type_proto is not None and type_proto.WhichOneof("value") != "tensor_type":
            continue
        info = onnx.ValueInfoProto(name=name)
        if type_proto is not None:
            info.type.CopyFrom(type_proto)
        copy.graph.output.append(info)
        added.append(name)
    return copy, added


def _feed_arrays(session: Any, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    from detharness.errors import CaseError

    names = [meta.name for meta in session.get_inputs()]
    missing = [name for name in names if name not in feeds]
    if missing:
        raise CaseError(f"the model's inputs {', '.join(map(repr, missing))} have no array in the feeds")
    return [feeds[name] for name in names]


def _run(session: Any, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from detharness.backends.onnxruntime_backend import run_session

    arrays = run_session(session, _feed_arrays(session, feeds))
    return dict(zip((meta.name for meta in session.get_outputs()), arrays, strict=True))


def capture(
    model: Any,
    feeds: Mapping[str, np.ndarray],
    *,
    make_session: Callable[[bytes], Any],
    make_session_with_optimized_path: Callable[[bytes, str | None], Any] | None = None,
    reference: Mapping[str, np.ndarray] | None = None,
) -> Captured:
    """Run the :func:`expose`-d copy of ``model`` once on ``feeds``; every layer, in node order.

    ``make_session(model_bytes)`` returns an ``onnxruntime.InferenceSession`` made the way the
    backend makes the variant's session (same options, optimization level and providers), so the
    layers come from the same kind of session as the recorded outputs. ``feeds`` maps input
    names to arrays (bfloat16 included: the run goes through
    :func:`~detharness.backends.onnxruntime_backend.run_session`).

    The exposed model's own outputs are compared bitwise with ``reference`` (the outputs the
    variant recorded, by name), or where that is None with a run of ``model`` itself through
    ``make_session``; a difference is noted (the layers are then approximate) and sets
    ``outputs_match`` False. With ``make_session_with_optimized_path`` (see
    :func:`fusion_changed`) the optimized graphs are compared as well and a change is noted; the
    sessions that run are then the ones that saved those graphs, so two sessions are made, not four.
    """
    exposed, _ = expose(model)
    changed: bool | None = None
    fusion_note = ""
    model_session: Any = None
    if make_session_with_optimized_path is None:
        session = make_session(exposed.SerializeToString())
    else:
        model_session, session, changed, fusion_note = _sessions_saving_graphs(model, exposed,
                                                                               make_session_with_optimized_path)
    values = _run(session, feeds)
    own = [info.name for info in model.graph.output]
    order = node_outputs(model)
    layers = [(name, values[name]) for name in order if name in values]
    notes: list[str] = []
    skipped = [name for name in order if name not in values]
    if skipped:
        shown = ", ".join(skipped[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        notes.append(f"{len(skipped)} node outputs are not tensors and were not captured ({shown})")
    if reference is None:
        reference = _run(model_session if model_session is not None else make_session(model.SerializeToString()),
                         feeds)
    differing = [name for name in own if name in reference and not bitwise_equal(values[name], reference[name])]
    if differing:
        notes.append(
            f"with every node output exposed the model's output {', '.join(differing)} is not bitwise the "
            "output of the model itself: its layers are approximate"
        )
    if changed:
        notes.append(fusion_note)
    return Captured(layers=layers, notes=notes, fusion_changed=changed, outputs_match=not differing)


def _op_label(domain: str, op_type: str) -> str:
    """``FusedConv`` for the default and ``com.microsoft`` domains, ``nchwc.Conv`` for the rest."""
    if domain in ("", "ai.onnx", "com.microsoft"):
        return str(op_type)
    return f"{domain.rsplit('.', 1)[-1]}.{op_type}"


def _saved_ops(path: str) -> Counter[str]:
    """The op types of the optimized graph a session saved at ``path`` (``Identity`` left out)."""
    import onnx

    # Only the op types are read: whatever initializers the optimizer wrote stay unread.
    optimized = onnx.load(path, load_external_data=False)
    return Counter(_op_label(node.domain, node.op_type) for node in optimized.graph.node if node.op_type != "Identity")


def fusion_changed(model: Any, make_session: Callable[[bytes, str | None], Any]) -> tuple[bool, str]:
    """Whether exposing every node output changed what ONNX Runtime's optimizer produced, and a note.

    ``make_session(model_bytes, optimized_path)`` must make a session the way the backend does
    (same options, level and providers) with ``SessionOptions.optimized_model_filepath`` set to
    ``optimized_path`` where that is not None: ONNX Runtime then saves the graph as optimized.
    Both graphs are saved into a temporary folder, and the multisets of their nodes' op types
    (``Identity`` left out; ops outside the default and ``com.microsoft`` domains labelled with
    their domain's last part, as ``nchwc.Conv``) are compared.

    The note names what changed, e.g. "exposing every node output changed ONNX Runtime's
    optimized graph (FusedConv: 1 -> 0, Conv: 0 -> 1, Relu: 0 -> 1): fusions of the real run
    were blocked, so the captured layers come from a differently optimized graph".
    """
    return _sessions_saving_graphs(model, expose(model)[0], make_session)[2:]


def _sessions_saving_graphs(
    model: Any, exposed: Any, make_session: Callable[[bytes, str | None], Any]
) -> tuple[Any, Any, bool, str]:
    """Sessions of ``model`` and of its exposed copy that save their optimized graphs as they are
    made, and what :func:`fusion_changed` says of the two graphs."""
    with tempfile.TemporaryDirectory(prefix="detharness-onnx-") as folder:
        model_path, exposed_path = os.path.join(folder, "model.onnx"), os.path.join(folder, "exposed.onnx")
        model_session = make_session(model.SerializeToString(), model_path)
        exposed_session = make_session(exposed.SerializeToString(), exposed_path)
        changed, note = _fusion_note(_saved_ops(model_path), _saved_ops(exposed_path))
    return model_session, exposed_session, changed, note


def _fusion_note(before: Counter[str], after: Counter[str]) -> tuple[bool, str]:
    """Whether the optimized graph's op types changed from ``before`` to ``after``, and the note."""
    if before == after:
        return False, "exposing every node output left ONNX Runtime's optimized graph unchanged (same op types)"
    # Ops that disappeared first (the fused ones), then those that appeared; each in name order.
    gone = sorted(op for op in before if after[op] < before[op])
    came = sorted(op for op in after if after[op] > before[op])
    changes = ", ".join(f"{op}: {before[op]} -> {after[op]}" for op in gone + came)
    return True, (
        f"exposing every node output changed ONNX Runtime's optimized graph ({changes}): fusions of "
        "the real run were blocked, so the captured layers come from a differently optimized graph"
    )


def _metadata(node: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in node.metadata_props}


def _scope_chain(node: Any) -> list[str] | None:
    """The module names of a node's ``pkg.torch.onnx.name_scopes``, outermost first; None if absent.

    The exporter writes ``repr(["", "block", "block.fc", "linear"])``: each entry but the last is
    already the module's full dotted ``named_modules()`` name (``""`` the root), the last is the
    FX node's own name and is dropped. So the conversion is: parse the list, drop its last entry.
    """
    raw = _metadata(node).get(NAME_SCOPES_KEY)
    if raw is None:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not scopes or not all(isinstance(s, str) for s in scopes):
        return None
    return list(scopes[:-1]) or [""]


def torch_scopes(model: Any) -> dict[str, str]:
    """For a dynamo-exported model, each node output's innermost torch module, in node order.

    The module is its ``named_modules()`` name (``"0"``, ``"block.fc"``, ``"layers.1.fc"``; ``""``
    for ops of the root module's own ``forward``), read from the node's
    :data:`NAME_SCOPES_KEY` metadata (see :func:`_scope_chain` for the format). Nodes without
    that metadata (added by an optimizer pass without it) are left out. Graph outputs are
    included. Where the exporter's optimizer fused nodes, the fused node carries the metadata of
    the last op it replaced: a Conv2d + BatchNorm2d export has one ``Conv`` node whose scope is
    the BatchNorm's (measured: rule ``FuseBatchNormIntoConv``), so the Conv2d itself has no
    output (see :func:`fused`). A module called more than once owns the outputs of every call.
    """
    found: dict[str, str] = {}
    for node in model.graph.node:
        chain = _scope_chain(node)
        if chain is None:
            continue
        for name in node.output:
            if name:
                found[name] = chain[-1]
    return found


def module_outputs(model: Any) -> dict[str, str]:
    """Each torch module's output name: the last node output produced within its scope.

    Within its scope means by the module or by any module it calls (every entry of the node's
    scope chain), so ``block`` gets the output of ``block.act`` when that is its last op. Ordered
    as forward hooks fire: by the position of the output in node order, a module before the
    modules that call it (``block.act`` before ``block``, the root ``""`` last). For a module
    called more than once this is the output of its last call.
    """
    position = {name: index for index, name in enumerate(node_outputs(model))}
    found: dict[str, tuple[int, int, str]] = {}
    for node in model.graph.node:
        chain = _scope_chain(node)
        names = [name for name in node.output if name]
        if chain is None or not names:
            continue
        last = names[-1]
        for depth, module in enumerate(chain):
            found[module] = (position[last], -depth, last)
    return {module: value[2] for module, value in sorted(found.items(), key=lambda item: item[1][:2])}


def fused(torch_layer_names: Iterable[str], scopes: Mapping[str, str]) -> list[str]:
    """The torch modules that no ONNX node output is mapped to, in the order given: fused, not missing.

    ``scopes`` is :func:`torch_scopes`'s mapping. A module counts as present when an output is
    mapped to it or to a module inside it (``block`` is present through ``block.fc``), so
    containers are not reported; the root ``""`` is present when anything is. Measured: the
    exporter folds BatchNorm2d into the Conv node before it, whose scope becomes the BatchNorm's,
    so it is the Conv2d (``"0"`` of ``Sequential(Conv2d, BatchNorm2d, ReLU)``) that is reported.
    """
    owners = set(scopes.values())
    prefixes = {owner[:i] for owner in owners for i, char in enumerate(owner) if char == "."}
    present = owners | prefixes | ({""} if owners else set())
    return [name for name in torch_layer_names if name not in present]


def strip_stack_traces(model: Any) -> Any:
    """A copy of ``model`` without the exporter's :data:`STACK_TRACE_KEY` node metadata.

    The stack traces hold absolute paths (of the case file, of site-packages); the name scopes
    and the other metadata stay. Nodes of subgraphs and of model-local functions are stripped
    too. ``model`` is not changed.
    """
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    from detharness.backends.onnx_model import graphs

    nodes = [node for graph in graphs(copy) for node in graph.node]
    nodes += [node for function in copy.functions for node in function.node]
    for node in nodes:
        kept = [(entry.key, entry.value) for entry in node.metadata_props if entry.key != STACK_TRACE_KEY]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            for key, value in kept:
                node.metadata_props.add(key=key, value=value)
    return copy
