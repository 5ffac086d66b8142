"""Every layer's output of a torch module, and each layer rerun alone on another run's inputs.

:func:`capture` records, for one call of a module, the output of every submodule call: forward
hooks on each module of ``module.named_modules()`` except the root (whose output is the variant's
own output), removed again after the call whatever happens. :func:`shadow` reruns single layers on
the inputs a baseline recorded for them (PyTorch's numeric suite calls these "shadow" layers): the
difference between a layer's shadow output and the baseline's output is the error that layer
introduces itself; the rest of its error it inherits from upstream.

Names
    A layer is named by its ``named_modules()`` name (``encoder.layers.0.self_attn``, ``0``). A
    module reachable under two names (shared, tied) has the first one, as ``named_modules()`` gives
    it. A module called more than once during the call gets ``name#2``, ``name#3`` for its second
    and third calls, numbered in the order the calls start. An output that is a tuple, list or dict
    of tensors gives one entry per tensor, ``name.0``, ``name.1`` or ``name.key`` (nested ones
    ``name.1.0``; a second call's ``name#2.0``); parts that are not tensors (``None``, ints) are left
    out. A tuple output's ``name.0`` could in principle meet a child module named ``0`` of that same
    module; nothing separates the two.
Order
    The order the forward hooks fire: a module's hook fires when its forward returns, so the list
    is in call order with children before their parents (post-order): ``block.linear``,
    ``block.norm``, then ``block``. The first entry that differs between two runs is so the
    innermost layer where the difference shows, not the block around it.
What is not seen
    Only calls through ``module(...)`` fire hooks: a parent that calls ``child.forward(x)`` or uses
    a child's weights in a functional call (``F.linear(x, self.proj.weight)``) records nothing for
    that child, and a module that runs one fused native kernel instead of its children records
    only its own output.
Observing changes what runs
    torch's ``TransformerEncoderLayer`` turns its fused fast path off when a hook sits on it or on
    any module inside it, so under :func:`capture` it runs spelled out (``self_attn``, ``norm1``,
    ``linear1`` ... each fire), which can compute differently from the call without hooks (equal
    bit for bit on a CPU with torch 2.13 in float32 and bfloat16; not promised elsewhere, CUDA's
    fused kernels least of all). :func:`capture` says so in its notes where it happens; the caller
    compares the returned output with the variant's uncaptured output to know whether the layers
    are exact or approximate.

Both functions take the array converters from the caller (the backend's ``to_numpy``, which keeps
bfloat16 bit for bit, and its ``to_native`` for the device and dtype), and neither moves, casts or
puts the module in ``eval()``: the caller passes it prepared as the variant runs it. torch is
imported inside the functions only, so this module imports without torch installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: How many layer names a note lists before it says "and N more".
_NAMES_IN_NOTE = 5


@dataclass
class Captured:
    """What :func:`capture` recorded from one call of a module.

    ``layers`` holds ``(name, array)`` for each tensor a submodule call returned, in the order the
    forward hooks fired (see the module docstring for names and order). ``inputs`` maps a layer
    call's name (``block``, ``block#2``: no ``.i`` suffix) to the tensors it was called with, in
    order, as the layer started (before any in-place change); it is filled only with
    ``with_inputs=True``, and only for calls made with positional tensors alone, which
    :func:`shadow` can replay. ``notes`` says what was dropped or left out (the size cap, calls
    whose inputs could not be recorded), ``dropped`` how many layer outputs the size cap dropped.
    """

    layers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    inputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped: int = 0


def capture(
    module: Any,
    args: tuple[Any, ...],
    *,
    to_numpy: Callable[[Any], np.ndarray],
    with_inputs: bool = False,
    max_bytes: int | None = None,
) -> tuple[Any, Captured]:
    """Call ``module(*args)`` under ``torch.no_grad()`` and record every submodule's output.

    Returns the module's output, as the call returned it, and the :class:`Captured` layers. Hooks
    go on every module of ``module.named_modules()`` but ``module`` itself, and are removed after
    the call, also when it raises. ``to_numpy`` converts one detached tensor (the backend's
    converter); an array it returns that does not own its memory (``tensor.numpy()`` shares the
    tensor's) is copied, so a later in-place op cannot change what was recorded.

    ``with_inputs`` also records each layer call's positional tensor inputs, for :func:`shadow`;
    a call that has keyword arguments or a positional argument that is not a tensor is not
    recorded (a note names them). ``max_bytes`` bounds what is kept, outputs and inputs together,
    counted as the tensors' sizes: once the next layer call would bring the total over it, that
    call and every later one are dropped (so what is kept is the first part of the list, and
    nothing more is converted), counted in :attr:`Captured.dropped` and said in the notes.
    """
    import torch

    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, not {max_bytes}")
    names = {sub: name for name, sub in module.named_modules() if sub is not module}
    captured = Captured()
    calls: dict[Any, int] = {}  # module -> how many of its calls have started
    pending: dict[Any, list[tuple[str, list[np.ndarray] | None]]] = {}  # module -> its open calls
    unreplayable: list[str] = []
    state = {"bytes": 0, "kept_calls": 0, "calls": 0, "stopped": False}

    def before(sub: Any, call_args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> None:
        count = calls.get(sub, 0) + 1
        calls[sub] = count
        name = names[sub] if count == 1 else f"{names[sub]}#{count}"
        inputs: list[np.ndarray] | None = None
        if with_inputs and not state["stopped"]:
            if call_kwargs or not all(isinstance(a, torch.Tensor) for a in call_args):
                unreplayable.append(name)
            else:
                inputs = [_owned(to_numpy(a.detach())) for a in call_args]
        pending.setdefault(sub, []).append((name, inputs))

    def after(sub: Any, call_args: tuple[Any, ...], output: Any) -> None:
        name, inputs = pending[sub].pop()
        tensors = list(_tensors(output, name, torch))
        state["calls"] += 1
        if not state["stopped"] and max_bytes is not None:
            size = sum(t.numel() * t.element_size() for _, t in tensors)
            size += sum(a.nbytes for a in inputs or ())
            if state["bytes"] + size > max_bytes:
                state["stopped"] = True
            else:
                state["bytes"] += size
        if state["stopped"]:
            captured.dropped += len(tensors)
            return
        state["kept_calls"] += 1
        captured.layers.extend((entry, _owned(to_numpy(t.detach()))) for entry, t in tensors)
        if inputs is not None:
            captured.inputs[name] = inputs

    handles: list[Any] = []
    try:
        for sub in names:
            handles.append(sub.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(sub.register_forward_hook(after))
        with torch.no_grad():
            output = module(*args)
    finally:
        for handle in handles:
            handle.remove()

    # TransformerEncoderLayer skips its fused fast path when any hook sits on it or inside it.
    unfused = [
        names.get(m, "(the root)")
        for m in module.modules()
        if isinstance(m, torch.nn.TransformerEncoderLayer) and not m.training and any(
            sub in names for sub in m.modules()
        )
    ]
    if unfused:
        captured.notes.append(
            f"the hooks turned off the fused fast path of {len(unfused)} TransformerEncoderLayer module(s) "
            f"({_listed(unfused)}): they ran unfused, which can compute differently from a call without "
            "capture; compare the output with that call's to know whether these layers are exact"
        )
    if captured.dropped:
        kept = len(captured.layers)
        captured.notes.append(
            f"kept {kept} of {kept + captured.dropped} layer outputs ({state['kept_calls']} of {state['calls']} "
            f"layer calls, the first {_size(max_bytes or 0)}); the rest dropped"
        )
    if unreplayable:
        captured.notes.append(
            f"inputs not recorded for {len(unreplayable)} layer call(s) with keyword or non-tensor arguments "
            f"({_listed(unreplayable)}); shadow runs skip them"
        )
    return output, captured


def shadow(
    module: Any,
    baseline_inputs: Mapping[str, Sequence[np.ndarray]],
    *,
    to_tensor: Callable[[np.ndarray], Any],
    to_numpy: Callable[[Any], np.ndarray],
    notes: list[str] | None = None,
) -> list[tuple[str, np.ndarray]]:
    """Rerun each recorded layer of ``module`` alone on the baseline's inputs to it.

    ``baseline_inputs`` is a baseline's :attr:`Captured.inputs` (call name -> positional inputs);
    for every name in it that names a submodule of ``module`` (``block#2`` names ``block``'s second
    call, and uses that call's inputs), the submodule is called on those inputs, each converted
    with ``to_tensor`` (which the caller makes put it on the variant's device and dtype: cast float
    arrays only, keep integer and bool ones such as token ids and masks), under ``torch.no_grad()``.
    Returns the outputs converted with ``to_numpy``, in the order of ``baseline_inputs``, named as
    :func:`capture` names them (``block#2.0``), so they pair with the baseline's
    :attr:`Captured.layers`: a shadow output against the baseline's output of the same name is the
    error that layer introduces. A parent's shadow output includes what its children introduce.

    Layers whose calls took keyword or non-tensor arguments have no recorded inputs and are not
    run; names that are no submodule of ``module`` (another model, the root) are skipped, and
    ``notes``, where given, gets a line naming them. The inputs are contiguous copies: a kernel
    whose result depends on its input's strides may compute differently than inside the model.
    """
    import torch

    modules = {name: sub for name, sub in module.named_modules() if sub is not module}
    results: list[tuple[str, np.ndarray]] = []
    missing: list[str] = []
    for name, arrays in baseline_inputs.items():
        sub = _resolve(modules, name)
        if sub is None:
            missing.append(name)
            continue
        inputs = [to_tensor(a) for a in arrays]
        with torch.no_grad():
            output = sub(*inputs)
        results.extend((entry, _owned(to_numpy(t.detach()))) for entry, t in _tensors(output, name, torch))
    if missing and notes is not None:
        notes.append(f"shadow skipped {len(missing)} recorded layer call(s) that name no submodule: {_listed(missing)}")
    return results


def _resolve(modules: Mapping[str, Any], name: str) -> Any:
    """The submodule a call name (``block``, ``block#2``) names, or None."""
    if name in modules:
        return modules[name]
    base, sep, count = name.rpartition("#")
    if sep and count.isdigit() and int(count) >= 2:
        return modules.get(base)
    return None


def _tensors(value: Any, name: str, torch: Any) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` for each tensor in an output: ``name`` itself, or ``name.0``/``name.key`` inside
    tuples, lists and dicts (nested ones dotted further); other values are left out."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _tensors(item, f"{name}.{key}", torch)
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from _tensors(item, f"{name}.{index}", torch)


def _owned(array: np.ndarray) -> np.ndarray:
    """``array``, copied where it shares memory with something else (a tensor's ``.numpy()``)."""
    return array if array.flags.owndata else array.copy()


def _listed(names: Sequence[str]) -> str:
    """The first few names, then how many more."""
    shown = ", ".join(names[:_NAMES_IN_NOTE])
    return shown if len(names) <= _NAMES_IN_NOTE else f"{shown} and {len(names) - _NAMES_IN_NOTE} more"


def _size(nbytes: int) -> str:
    """A byte count for a note: ``512 bytes``, ``1.5 kB``, ``200 MB`` (powers of 1000)."""
    if nbytes < 1000:
        return f"{nbytes} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if nbytes < scale * 1000 or unit == "GB":
            return f"{nbytes / scale:.3g} {unit}"
    raise AssertionError("unreachable")
