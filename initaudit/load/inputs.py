"""Example inputs: inferred from the model's first layer, or built from a given shape."""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence, Tuple

import torch
from torch import nn

from initaudit.core import knowledge
from initaudit.core.errors import InputError
from initaudit.core.options import DEFAULT_BATCH  # defined there, light for the CLI

SPATIAL = 32  # side of an inferred conv input
SEQUENCE = 16  # length of an inferred sequence

NO_INPUT_HELP = (
    "supply one in any of three ways: pass --input-shape (e.g. --input-shape 8,3,32,32), "
    "return (model, example_input) from the factory, or define example_input() in the file"
)


def parse_shape(text: str) -> Tuple[int, ...]:
    """``"8,3,32,32"`` (or ``"8x3x32x32"``) -> ``(8, 3, 32, 32)``; each a positive integer."""
    parts = [p.strip() for p in re.split(r"[,x]", text.strip().strip("()[]"))]
    shape = tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else ()
    if not shape or any(d <= 0 for d in shape):
        raise InputError(f"--input-shape {text!r} is not a comma-separated list of positive integers")
    return shape


def model_dtype(model: nn.Module) -> torch.dtype:
    """dtype of the model's first floating parameter (float32 when it has none)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (cpu when it has none)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def first_layer(model: nn.Module) -> Optional[nn.Module]:
    """The first module with parameters of its own that the forward reaches.

    Forward order comes from ``torch.fx`` symbolic tracing when the model traces; when it
    does not (data-dependent control flow), registration order stands in for it.
    """
    from initaudit.load.trace import trace

    gm = trace(model)
    for node in gm.graph.nodes if gm is not None else ():  # untraceable: registration order
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if any(True for _ in module.parameters()):
                return _first_own(module)
    return _first_own(model)


def _first_own(model: nn.Module) -> Optional[nn.Module]:
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            return module
    return None


def infer_shape(module: nn.Module, batch: int) -> Optional[Tuple[Tuple[int, ...], bool]]:
    """``(shape, integer_ids)`` an input to ``module`` has, or ``None`` if unknown.

    Linear -> ``(batch, in_features)``; Conv{1,2,3}d -> ``(batch, in_channels, 32[, 32[, 32]])``;
    Embedding -> integer ids ``(batch, 16)``; RNN/LSTM/GRU -> ``(batch, 16, input_size)`` if
    ``batch_first`` else ``(16, batch, input_size)``.
    """
    if isinstance(module, nn.Linear):
        return (batch, module.in_features), False
    if isinstance(module, knowledge.CONV_TYPES + knowledge.TRANSPOSED_CONV_TYPES):
        return (batch, module.in_channels) + (SPATIAL,) * knowledge.spatial_dims(module), False
    if isinstance(module, knowledge.EMBEDDING_TYPES):
        return (batch, SEQUENCE), True
    if isinstance(module, knowledge.RECURRENT_TYPES):
        if module.batch_first:
            return (batch, SEQUENCE, module.input_size), False
        return (SEQUENCE, batch, module.input_size), False
    if isinstance(module, knowledge.RECURRENT_CELL_TYPES):
        return (batch, module.input_size), False
    if isinstance(module, knowledge.BATCH_NORM_TYPES):
        # BatchNorm1d takes (N, C) or (N, C, L): the plainer (N, C), features as a Linear gives them
        dims = 0 if isinstance(module, nn.BatchNorm1d) else knowledge.spatial_dims(module)
        return (batch, module.num_features) + (SPATIAL,) * dims, False
    if isinstance(module, nn.LayerNorm):
        return (batch,) + tuple(module.normalized_shape), False
    return None


def make_input(
    model: nn.Module,
    shape: Optional[Sequence[int]] = None,
    *,
    batch: int = DEFAULT_BATCH,
    seed: int = 0,
) -> torch.Tensor:
    """A seeded example input for ``model``: of ``shape`` if given, else inferred.

    Floats are ``N(0, 1)`` in the model's dtype; ids for an Embedding are uniform in
    ``[0, num_embeddings)``. Drawn from a private generator, so no global RNG is consumed.
    """
    layer = first_layer(model)
    inferred = infer_shape(layer, batch) if layer is not None else None
    if shape is None:
        if inferred is None:
            what = f"its first layer is {type(layer).__name__}" if layer is not None else "it has no parameters"
            raise InputError(f"cannot infer an example input for {type(model).__name__} ({what}); {NO_INPUT_HELP}")
        shape, integer_ids = inferred
    else:
        integer_ids = bool(inferred and inferred[1])
    gen = torch.Generator().manual_seed(seed)
    if integer_ids:
        high = getattr(layer, "num_embeddings", 2)
        x = torch.randint(0, high, tuple(shape), generator=gen)
    else:
        x = torch.randn(tuple(shape), generator=gen).to(model_dtype(model))
    return x.to(model_device(model))


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a tensor, tuple, list or dict to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(to_device(v, device) for v in obj)
    if isinstance(obj, list):
        return [to_device(v, device) for v in obj]
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj


def check_input(example_input: Any) -> None:
    """An input is a tensor, a tuple of positional arguments or a dict of keyword arguments."""
    if isinstance(example_input, (torch.Tensor, tuple, dict)):
        return
    raise InputError(
        f"example input is a {type(example_input).__name__}; expected a tensor, "
        "a tuple of tensors (positional arguments) or a dict (keyword arguments)"
    )
