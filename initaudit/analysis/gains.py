"""The init gain each nonlinearity asks for, and the ``torch.nn.init`` call that gives it.

``std = gain / sqrt(fan_in)``: He et al. (2015) for the ReLU family, Glorot & Bengio
(2010) for tanh and sigmoid, LeCun for linear and SELU (Klambauer et al. 2017), and the
second-moment gain ``1 / sqrt(E[phi(z)^2])`` for smooth activations.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

from initaudit.core.knowledge import Activation

# sigmoid's slope at 0 is 1/4: the gain that keeps the gradient's variance through it
SIGMOID_GAIN = 4.0

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
    - sigmoid: from LeCun's 1 (``calculate_gain("sigmoid")``) to 4: near 0, sigmoid(z) is
      1/2 + z/4, so a weight four times the linear scale keeps the variance of the gradient
      through it (Glorot & Bengio 2010's linearisation; Bengio 2012, "Practical
      recommendations", uses 4x Glorot's range for sigmoid units). On the trainability
      benchmark's calibrate split, four 8-layer sigmoid CNNs that end at 0.50-0.60 of the
      baseline loss after a re-draw at gain 1 and LSUV end at 0.36-0.46 with every weight
      drawn at gain 4 (threshold 0.5; benchmarks/README.md);
    - softmax, no activation (linear): 1;
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
    elif name == "sigmoid":
        return nn.init.calculate_gain("sigmoid"), SIGMOID_GAIN
    elif name in _ELEMENTWISE:
        g = second_moment_gain(name)
    else:  # linear, softmax, selu
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
    if name == "sigmoid":
        return f"nn.init.normal_({target}, std={SIGMOID_GAIN:g} / math.sqrt({fan_in}))"
    # LeCun normal: std = 1 / sqrt(fan_in)
    return f'nn.init.kaiming_normal_({target}, nonlinearity="linear")'


def orthogonal_call(target: str, gain: float = 1.0) -> str:
    """``orthogonal_`` drawn in float32 and copied in (QR has no bfloat16 or float16 kernel).
    For a square ``n x n`` weight, every element then has variance ``gain^2 / n``: the scale
    of :func:`init_call`'s normal draw, with all singular values equal to ``gain``."""
    scale = "" if gain == 1.0 else f", gain={gain:.4g}"
    return f"{target}.copy_(nn.init.orthogonal_(torch.empty({target}.shape, device={target}.device){scale}))"


def init_name(activation: Activation) -> str:
    """Short name of the recommended scheme, for messages."""
    return {
        "relu": "He",
        "leaky_relu": "He",
        "tanh": "Glorot to calculate_gain('tanh')",
        "sigmoid": "LeCun to Glorot & Bengio's 4x for sigmoid",
    }.get(activation.name, "second-moment" if activation.name in _ELEMENTWISE else "LeCun")
