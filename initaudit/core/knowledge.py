"""Model knowledge: what PyTorch's modules are and do to the signal, in one place.

A module is a *layer* (its weight's scale sets the scale of its output: Linear, Conv),
an *activation*, a *norm* (its output scale does not depend on its input's), a
*passthrough* (shape or regularization only: Dropout, Flatten, pooling), or *other*.

Also here: the families by class name (what a record holds, and so what the rules read),
the recurrent modules' gate layouts, the fan of a transposed convolution, and how a tensor
or module reads under ``torch.distributed`` (``DTensor``, FSDP2's wrapper classes). Every
stage asks this module rather than keeping its own list of types. The init gain each
nonlinearity asks for is :mod:`initaudit.analysis.gains`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Optional, Sequence, Tuple, Union

import torch
from torch import nn

LAYER = "layer"


ACTIVATION = "activation"


NORM = "norm"


PASSTHROUGH = "passthrough"


OTHER = "other"


# convolutions by the number of spatial dimensions they slide over: 1, 2, 3
CONV_TYPES: Tuple[type, ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


TRANSPOSED_CONV_TYPES: Tuple[type, ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


LAYER_TYPES: Tuple[type, ...] = (nn.Linear, *CONV_TYPES, *TRANSPOSED_CONV_TYPES)


# batch norms by the number of spatial dimensions of their (N, C, ...) input: 1, 2, 3
BATCH_NORM_TYPES: Tuple[type, ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


NORM_TYPES: Tuple[type, ...] = tuple(
    t
    for t in (
        *BATCH_NORM_TYPES,
        nn.SyncBatchNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.InstanceNorm1d,
        nn.InstanceNorm2d,
        nn.InstanceNorm3d,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)


PASSTHROUGH_TYPES: Tuple[type, ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
    nn.Unflatten,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.ZeroPad2d,
)


# average pooling averages an example's variation over its window by design: the signal,
# gradient and Jacobian figures account for it
AVERAGE_POOL_TYPES: Tuple[type, ...] = (
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
)


EMBEDDING_TYPES: Tuple[type, ...] = (nn.Embedding, nn.EmbeddingBag)


# a whole sequence per call, and one step per call
RECURRENT_TYPES: Tuple[type, ...] = (nn.RNN, nn.LSTM, nn.GRU)


RECURRENT_CELL_TYPES: Tuple[type, ...] = (nn.RNNCell, nn.LSTMCell, nn.GRUCell)


def names_of(types: Tuple[type, ...]) -> FrozenSet[str]:
    """The class names of ``types``: what a record's ``type`` / ``module_type`` holds.

    Rules read records, not modules, so they test a family by these names. A subclass
    keeps its own name, and is not in the family by name.
    """
    return frozenset(t.__name__ for t in types)


AVERAGE_POOLS = names_of(AVERAGE_POOL_TYPES)


NORM_NAMES = names_of(NORM_TYPES)


# the layers whose output has channels along dim 1 (N, C, ...) rather than features last
CONV_NAMES = names_of(CONV_TYPES + TRANSPOSED_CONV_TYPES)


LAYER_NAMES = names_of(LAYER_TYPES)


EMBEDDING_NAMES = names_of(EMBEDDING_TYPES)


RECURRENT_NAMES = names_of(RECURRENT_TYPES + RECURRENT_CELL_TYPES)


# nonlinearity name -> module type(s); the name is what messages and gains use.
ACTIVATION_TYPES: Dict[str, Tuple[type, ...]] = {
    "relu": (nn.ReLU, nn.ReLU6),
    "leaky_relu": (nn.LeakyReLU, nn.PReLU, nn.RReLU),
    "tanh": (nn.Tanh, nn.Hardtanh),
    "sigmoid": (nn.Sigmoid, nn.Hardsigmoid),
    "selu": (nn.SELU,),
    "gelu": (nn.GELU,),
    "silu": (nn.SiLU,),
    "mish": (nn.Mish,),
    "elu": (nn.ELU,),
    "celu": (nn.CELU,),
    "softplus": (nn.Softplus,),
    "hardswish": (nn.Hardswish,),
    "softmax": (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d),
}


@dataclass(frozen=True)
class Activation:
    """A nonlinearity; ``param`` is leaky_relu's negative slope (0 otherwise)."""

    name: str
    param: float = 0.0

    def describe(self) -> str:
        if self.name == "leaky_relu":
            return f"leaky_relu(negative_slope={self.param:g})"
        return self.name


LINEAR = Activation("linear")


def is_layer(module: Any) -> bool:
    """Whether ``module`` is a layer: its weight's scale sets its output's (:data:`LAYER_TYPES`)."""
    return isinstance(module, LAYER_TYPES)


def classify(module: nn.Module) -> Tuple[str, Optional[Activation]]:
    """``(kind, activation)`` of a module; ``activation`` is set only for activations."""
    if is_layer(module):
        return LAYER, None
    if isinstance(module, NORM_TYPES):
        return NORM, None
    for name, types in ACTIVATION_TYPES.items():
        if isinstance(module, types):
            return ACTIVATION, Activation(name, _negative_slope(module))
    if isinstance(module, PASSTHROUGH_TYPES):
        return PASSTHROUGH, None
    return OTHER, None


def _negative_slope(module: nn.Module) -> float:
    if isinstance(module, nn.LeakyReLU):
        return float(module.negative_slope)
    if isinstance(module, nn.PReLU):
        return float(module.weight.detach().float().mean())
    if isinstance(module, nn.RReLU):
        return (float(module.lower) + float(module.upper)) / 2
    return 0.0


def spatial_dims(module: Any) -> Optional[int]:
    """How many spatial dimensions follow ``(N, C)`` in the input of a convolution or a
    batch norm: 1, 2 or 3 for the ``1d``, ``2d``, ``3d`` classes; ``None`` for any other
    module. (``BatchNorm1d`` also takes ``(N, C)`` alone.)"""
    for family in (CONV_TYPES, TRANSPOSED_CONV_TYPES, BATCH_NORM_TYPES):
        for dims, cls in enumerate(family, start=1):
            if isinstance(module, cls):
                return dims
    return None


def transposed_conv_fan_in(in_channels: int, groups: int, weight_shape: Sequence[int]) -> int:
    """The number of inputs each output of a transposed convolution sums over.

    ``fan_in = in_channels / groups * prod(kernel_size)``, with ``kernel_size =
    weight_shape[2:]``.

    A transposed convolution's weight is ``(in_channels, out_channels / groups, *kernel_size)``,
    so the fan_in ``torch.nn.init`` reads from its shape, ``out_channels / groups *
    prod(kernel_size)``, is the fan of the convolution it transposes, not its own: e.g.
    ``ConvTranspose2d(64, 3, 4)`` sums 64 x 16 = 1024 inputs per output, where the weight's
    shape says 3 x 16 = 48. (With a stride, an output sums about ``1 / stride^d`` of them.)
    """
    return in_channels // groups * math.prod(int(s) for s in weight_shape[2:])


# The gate blocks of a recurrent module, one letter each, in the order PyTorch stacks
# them along dim 0 of weight_ih / weight_hh / bias_ih / bias_hh: LSTM (W_ii|W_if|W_ig|W_io),
# GRU (W_ir|W_iz|W_in), and the vanilla RNN's single block. Keyed by the exact class: a
# subclass may lay its weights out otherwise.
GATES: Dict[type, str] = {
    nn.LSTM: "ifgo", nn.LSTMCell: "ifgo",
    nn.GRU: "rzn", nn.GRUCell: "rzn",
    nn.RNN: "h", nn.RNNCell: "h",
}


_GATES_BY_NAME: Dict[str, str] = {cls.__name__: gates for cls, gates in GATES.items()}


# the attributes that stack the gate blocks (with a layer / direction suffix: weight_hh_l1_reverse);
# an LSTM's projection weight_hr is not gate-stacked
GATE_STACKED = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


FORGET = "f"  # the LSTM's forget gate


def gate_names(module_type: Union[type, str]) -> str:
    """The gates of a recurrent module in their order along dim 0 (:data:`GATES`): ``"ifgo"``
    for an LSTM, ``"rzn"`` for a GRU, ``"h"`` for an RNN, ``""`` for any other module.

    ``module_type`` is the module's class (the recorder's view), or a record's type name
    (the rules' view).
    """
    if isinstance(module_type, str):
        return _GATES_BY_NAME.get(module_type, "")
    return GATES.get(module_type, "")


def gate_count(module_type: Union[type, str]) -> int:
    """How many gate blocks a recurrent module stacks along dim 0 (4 LSTM, 3 GRU, 1 RNN);
    0 for any other module."""
    return len(gate_names(module_type))


def forget_gate(module_type: Union[type, str]) -> Optional[int]:
    """Index of the forget-gate block along dim 0 (1 for an LSTM: i, f, g, o); ``None``
    for a module without one."""
    index = gate_names(module_type).find(FORGET)
    return index if index >= 0 else None


def recurrent_nonlinearity(module: Any) -> Optional[str]:
    """The nonlinearity a vanilla ``RNN`` or ``RNNCell`` applies at each step (``"tanh"`` or
    ``"relu"``, its ``nonlinearity``); ``None`` for any other module, the LSTM's and GRU's
    included (their gates' sigmoid and tanh are fixed)."""
    if isinstance(module, (nn.RNN, nn.RNNCell)):
        return module.nonlinearity
    return None


def is_gate_stacked(attr: str) -> bool:
    """Whether a recurrent module's attribute ``attr`` stacks its gate blocks along dim 0."""
    return attr.startswith(GATE_STACKED)


# where DTensor lives: torch >= 2.4, then the private module of older releases
_DTENSOR_MODULES = ("torch.distributed.tensor", "torch.distributed._tensor")


def is_dtensor(t: torch.Tensor) -> bool:
    """Whether ``t`` is a ``DTensor`` (sharded or replicated over a device mesh).

    ``DTensor``'s module is not imported here: importing it costs most of a second, a
    quarter of a small model's whole audit from the command line, and a tensor can only be
    a ``DTensor`` once whoever made it has imported that module.
    """
    for name in _DTENSOR_MODULES:
        cls = getattr(sys.modules.get(name), "DTensor", None)
        if cls is not None and isinstance(t, cls):
            return True
    return False


def is_fsdp_module(module: Any) -> bool:
    """Whether ``module`` was wrapped by FSDP2's ``fully_shard`` (its class derives from
    ``FSDPModule``, read by name: the module is not imported here)."""
    return any(b.__name__ == "FSDPModule" for b in type(module).__mro__)


def type_name(module: Any) -> str:
    """The class name the user wrote: FSDP2 swaps a module's class for ``FSDP<Class>``, a
    subclass of it and of ``FSDPModule``; the name is read past that wrapper class."""
    cls = type(module)
    if cls.__name__.startswith("FSDP") and any(b.__name__ == "FSDPModule" for b in cls.__mro__):
        cls = next((b for b in cls.__mro__[1:] if b.__name__ != "FSDPModule"), cls)
    return cls.__name__
