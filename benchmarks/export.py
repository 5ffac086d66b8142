"""ONNX exports with the dynamo exporter: detharness's ``export_onnx`` against a plain
``torch.onnx.export``, in one process.

``torch.onnx.export`` builds its registry of ONNX functions (``ONNXRegistry.from_torchlib``) on every
call; ``TorchBackend.export_onnx`` keeps one per opset for the process
(``torch_backend.reused_onnx_registry``). This script exports the same small models (the shapes the
built-in library exports: an MLP, a Conv+BatchNorm stack, an LSTM, a transformer encoder layer) both
ways, alternating which goes first, after one warm-up export of each so that imports and first-call
costs fall on neither. It prints the CPU seconds per export of each and their ratio (detharness /
plain), and checks that every pair of exports is byte-identical: a faster export that gave other
bytes would be a wrong one.

    python benchmarks/export.py [--rounds N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from detharness.backends.torch_backend import TorchBackend, quiet_export


def models() -> list[tuple[str, torch.nn.Module, tuple[Any, ...]]]:
    torch.manual_seed(0)
    return [
        ("mlp", torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)),
         (torch.randn(8, 16),)),
        ("conv_bn", torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()),
         (torch.randn(2, 3, 16, 16),)),
        ("lstm", torch.nn.LSTM(8, 16, batch_first=True), (torch.randn(2, 5, 8),)),
        ("encoder", torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), (torch.randn(2, 5, 16),)),
    ]


def plain(module: torch.nn.Module, inputs: tuple[Any, ...]) -> bytes:
    with quiet_export():
        program = torch.onnx.export(module, inputs, dynamo=True, verbose=False)
    assert program is not None
    return program.model_proto.SerializeToString()  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="Rounds over the models, alternating which goes first")
    args = parser.parse_args()
    backend = TorchBackend()
    ours: Callable[[torch.nn.Module, tuple[Any, ...]], bytes] = backend.export_onnx
    cases = [(name, module.eval(), inputs) for name, module, inputs in models()]
    for _, module, inputs in cases:  # imports, first-call caches, the first registry: neither pays them
        ours(module, inputs)
        plain(module, inputs)
    seconds = {"plain": 0.0, "detharness": 0.0}
    exports = 0
    same = True
    for round_ in range(args.rounds):
        for _, module, inputs in cases:
            order: list[tuple[str, Callable[[torch.nn.Module, tuple[Any, ...]], bytes]]] = [
                ("plain", plain), ("detharness", ours)]
            got = {}
            for label, export in order if round_ % 2 == 0 else order[::-1]:
                start = time.process_time()
                got[label] = export(module, inputs)
                seconds[label] += time.process_time() - start
            same = same and got["plain"] == got["detharness"]
            exports += 1
    print(f"dynamo exports of {len(cases)} models x {args.rounds} rounds, CPU seconds per export:")
    print(f"  torch.onnx.export        {seconds['plain'] / exports:.3f}")
    print(f"  TorchBackend.export_onnx {seconds['detharness'] / exports:.3f}")
    print(f"  ratio (detharness / plain): {seconds['detharness'] / seconds['plain']:.2f}x")
    print(f"  bytes identical in every pair: {same}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
