"""What a module does to the signal, and the init gain each nonlinearity asks for.

A module is a *layer* (its weight's scale sets the scale of its output: Linear, Conv),
an *activation*, a *norm* (its output scale does not depend on its input's), a
*passthrough* (shape or regularization only: Dropout, Flatten, pooling), or *other*.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

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


_ELEMENTWISE: Dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": torch.nn.functional.gelu,
    "silu": torch.nn.functional.silu,
    "mish": torch.nn.functional.mish,
    "elu": torch.nn.functional.elu,
    "celu": torch.nn.functional.celu,
    "softplus": torch.nn.functional.softplus,
    "hardswish": torch.nn.functional.hardswish,
}


@functools.lru_cache(maxsize=None)
def second_moment_gain(name: str) -> float:
    """Gain that preserves the second moment through ``phi``: ``1 / sqrt(E[phi(z)^2])``.

    ``z ~ N(0, 1)``; the expectation is a Riemann sum of ``phi(z)^2 * pdf(z)`` over
    ``[-12, 12]`` in float64 (the tails beyond contribute below 1e-30). For ReLU this gives
    ``sqrt(2)``, He et al. (2015)'s gain.
    """
    phi = _ELEMENTWISE[name]
    z = torch.linspace(-12.0, 12.0, 240_001, dtype=torch.float64)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    dz = float(z[1] - z[0])
    second_moment = float((phi(z).square() * pdf).sum() * dz)
    return 1.0 / math.sqrt(second_moment)


def gain_range(activation: Activation) -> Tuple[float, float]:
    """Acceptable range of ``gain`` (std = gain / sqrt(fan_in)) for the consuming activation.

    - ReLU family: He et al. (2015), ``calculate_gain("relu") = sqrt(2)`` and
      ``calculate_gain("leaky_relu", slope) = sqrt(2 / (1 + slope^2))``;
    - tanh: anything from Glorot's gain 1 to ``calculate_gain("tanh") = 5/3``
      (Glorot & Bengio 2010);
    - sigmoid, softmax, no activation (linear): 1;
    - SELU: LeCun, 1 (Klambauer et al. 2017);
    - GELU, SiLU, Mish, ELU, CELU, Softplus, Hardswish: :func:`second_moment_gain`.
    """
    name = activation.name
    if name == "relu":
        g = nn.init.calculate_gain("relu")
    elif name == "leaky_relu":
        g = nn.init.calculate_gain("leaky_relu", activation.param)
    elif name == "tanh":
        return 1.0, nn.init.calculate_gain("tanh")
    elif name in _ELEMENTWISE:
        g = second_moment_gain(name)
    else:  # linear, sigmoid, softmax, selu
        g = 1.0
    return g, g


def init_call(activation: Activation, target: str, fan_in: int, torch_fan_in: Optional[int] = None) -> str:
    """The ``torch.nn.init`` call that gives ``target`` the recommended std.

    When the fan that sets the signal's scale is not the one ``torch.nn.init`` computes
    from the shape (``torch_fan_in``; transposed convs), the std is written out.
    """
    name = activation.name
    if torch_fan_in is not None and torch_fan_in != fan_in:
        low, high = gain_range(activation)
        return f"nn.init.normal_({target}, std={high:.4g} / math.sqrt({fan_in}))"
    if name == "relu":
        return f'nn.init.kaiming_normal_({target}, nonlinearity="relu")'
    if name == "leaky_relu":
        return f'nn.init.kaiming_normal_({target}, a={activation.param:g}, nonlinearity="leaky_relu")'
    if name == "tanh":
        return f'nn.init.kaiming_normal_({target}, nonlinearity="tanh")'
    if name in _ELEMENTWISE:
        gain = second_moment_gain(name)
        return f"nn.init.normal_({target}, std={gain:.4g} / math.sqrt({fan_in}))"
    # LeCun normal: std = 1 / sqrt(fan_in)
    return f'nn.init.kaiming_normal_({target}, nonlinearity="linear")'


def init_name(activation: Activation) -> str:
    """Short name of the recommended scheme, for messages."""
    return {
        "relu": "He",
        "leaky_relu": "He",
        "tanh": "Glorot to calculate_gain('tanh')",
    }.get(activation.name, "second-moment" if activation.name in _ELEMENTWISE else "LeCun")
