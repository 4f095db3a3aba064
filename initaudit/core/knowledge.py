"""Model knowledge: what PyTorch's modules are and do to the signal, in one place.

A module is a *layer* (its weight's scale sets the scale of its output: Linear, Conv),
an *activation*, a *norm* (its output scale does not depend on its input's), a
*passthrough* (shape or regularization only: Dropout, Flatten, pooling), or *other*.

Also here: the recurrent modules' gate layouts, and how a tensor or module reads under
``torch.distributed`` (``DTensor``, FSDP2's wrapper classes). Every stage asks this module
rather than keeping its own list of types. The init gain each nonlinearity asks for is
:mod:`initaudit.analysis.gains`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

LAYER = "layer"


ACTIVATION = "activation"


NORM = "norm"


PASSTHROUGH = "passthrough"


OTHER = "other"


LAYER_TYPES: Tuple[type, ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


NORM_TYPES: Tuple[type, ...] = tuple(
    t
    for t in (
        nn.BatchNorm1d,
        nn.BatchNorm2d,
        nn.BatchNorm3d,
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


AVERAGE_POOLS = frozenset(t.__name__ for t in AVERAGE_POOL_TYPES)


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


def classify(module: nn.Module) -> Tuple[str, Optional[Activation]]:
    """``(kind, activation)`` of a module; ``activation`` is set only for activations."""
    if isinstance(module, LAYER_TYPES):
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


def type_name(module: Any) -> str:
    """The class name the user wrote: FSDP2 swaps a module's class for ``FSDP<Class>``, a
    subclass of it and of ``FSDPModule``; the name is read past that wrapper class."""
    cls = type(module)
    if cls.__name__.startswith("FSDP") and any(b.__name__ == "FSDPModule" for b in cls.__mro__):
        cls = next((b for b in cls.__mro__[1:] if b.__name__ != "FSDPModule"), cls)
    return cls.__name__
