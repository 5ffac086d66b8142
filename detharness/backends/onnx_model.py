"""Reading ONNX models that come from elsewhere, without reading anything outside their folder.

An ONNX model may keep tensors in external files, each named by a ``location`` relative to the
model's folder (the ONNX IR specification, "External Tensor Data", onnx/docs/ExternalData.md). A
model from a download or a test folder can name any path there, ``../../etc/passwd`` included, and
``onnx.load`` or ONNX Runtime would read it. Here every location must be a relative path that
resolves, symbolic links followed, inside the model's folder, and it is checked before any
external data is read. Models are parsed as protobuf only: nothing is unpickled.

Shared by the onnxruntime backend (models built by a case), the torch round trips (the ``.onnx``
file they save and load) and the ONNX test-data case source. Imports onnx only when called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detharness.errors import UsageError

if TYPE_CHECKING:
    import onnx

__all__ = ["check_external_data", "external_tensors", "load_model_safely", "model_opset"]


def model_opset(model: onnx.ModelProto) -> int | None:
    """The default-domain (``""`` or ``"ai.onnx"``) opset a model imports, or None."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def graphs(model: Any) -> Iterator[Any]:
    """Every graph of the model: the main one and its subgraphs (``If``, ``Loop``, ``Scan``
    bodies) at any depth, each subgraph before the graph that holds it (in node order)."""
    return _graphs_within(model.graph)


def _graphs_within(graph: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs_within(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs_within(sub)
    yield graph


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor of the model whose data lives in an external file.

    Initializers, sparse initializers, tensor attributes of nodes, subgraphs (``If``, ``Loop``,
    ``Scan`` bodies) at any depth, and tensor attributes inside model-local functions.
    """
    from onnx import AttributeProto, TensorProto

    found: list[TensorProto] = []
    for graph in graphs(model):
        tensors = list(graph.initializer)
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == AttributeProto.TENSOR:
                    tensors.append(attr.t)
                elif attr.type == AttributeProto.TENSORS:
                    tensors.extend(attr.tensors)
                elif attr.type == AttributeProto.SPARSE_TENSOR:
                    tensors += [attr.sparse_tensor.values, attr.sparse_tensor.indices]
        found.extend(t for t in tensors if t.data_location == TensorProto.EXTERNAL)
    for function in model.functions:
        for node in function.node:
            found.extend(
                attr.t
                for attr in node.attribute
                if attr.type == AttributeProto.TENSOR and attr.t.data_location == TensorProto.EXTERNAL
            )
    return found


def check_external_data(model: onnx.ModelProto, folder: str | os.PathLike[str]) -> None:
    """Refuse a model whose external data would be read from outside ``folder``.

    Every ``location`` must be a relative path that resolves, symbolic links followed, inside the
    folder; otherwise :class:`UsageError` names the tensor and the path. Models come from
    elsewhere (ONNX test folders, downloads): a location such as ``../../etc/passwd`` must not
    make detharness read, and then record, a file that is not part of the model.
    """
    root = Path(os.path.realpath(folder))
    for tensor in external_tensors(model):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        name = tensor.name or "<unnamed>"
        if not location:
            raise UsageError(f"tensor {name!r} is stored externally but names no location")
        if os.path.isabs(location) or Path(location).drive:
            raise UsageError(
                f"tensor {name!r} reads external data from absolute path {location!r}; only paths inside the model's folder are allowed"
            )
        target = Path(os.path.realpath(root / location))
        if target != root and root not in target.parents:
            raise UsageError(f"tensor {name!r} reads external data from {location!r}, which leaves the model's folder")
        if not target.is_file():
            raise UsageError(f"tensor {name!r} reads external data from {location!r}, which does not exist")


def load_model_safely(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX model file and its external data, refusing data from outside its folder.

    Raises :class:`UsageError` (exit 2) for a missing or unreadable file and for any external-data
    location that is absolute or resolves outside the model's folder (see :func:`check_external_data`).
    """
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    model_path = Path(path)
    if not model_path.is_file():
        raise UsageError(f"ONNX model {str(model_path)!r} does not exist")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:
        raise UsageError(f"cannot read ONNX model {str(model_path)!r}: {exc}") from exc
    folder = model_path.resolve().parent
    check_external_data(model, folder)
    try:
        load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise UsageError(f"cannot read the external data of ONNX model {str(model_path)!r}: {exc}") from exc
    return model
