"""Round trips of the model cases: save the built model, load it back, run it again.

Reuses the module builders of ``models/mlp`` and ``models/conv_block`` (``include`` loads their
case files into the same registry), so the round-trip variants sit beside the models' own:
``models/mlp[torch:cpu:float32:roundtrip:safetensors]``. torch's formats: ``torch.save`` with
``torch.load(weights_only=True)``, safetensors and ``torch.export`` must give the same bits (same
runtime, same kernels); ONNX (dynamo and TorchScript exporters, opsets 18 and 20, every ONNX
Runtime optimization level) hands the numbers to another runtime, judged by each case's
tolerance. jax's ``jax.export`` serializes the compiled program with its weights inside.

At the float32 dtype only, and the ONNX round trips for the conv block only: each export through
dynamo costs 0.5 to 1.5 s here (paid once per exporter and opset, shared by the five optimization
levels), and the conv block is where the levels matter: ONNX Runtime fuses conv, batch norm and
relu above BASIC (onnxruntime#14500), and the exporters fold the batch norm into the conv's weights,
which the parameter hashes show.
"""

from detharness.cases import include

mlp = include("../models/mlp.py")["models/mlp"]
mlp.roundtrip("torch", ["torch.save", "safetensors", "torch.export"], dtypes=("float32",))
mlp.roundtrip("jax", ["jax.export"], dtypes=("float32",))

conv_block = include("../models/conv_block.py")["models/conv_block"]
conv_block.roundtrip("torch", dtypes=("float32",))
