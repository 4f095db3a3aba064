"""Fans of a weight, exactly as ``torch.nn.init`` computes them from its shape."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple


def fan_in_and_fan_out(shape: Sequence[int]) -> Optional[Tuple[int, int]]:
    """Fans of a weight of ``shape``, exactly as ``torch.nn.init`` computes them.

    ``receptive_field = prod(shape[2:])``,
    ``fan_in = shape[1] * receptive_field``, ``fan_out = shape[0] * receptive_field``.

    For a ``Linear`` weight ``(out, in)`` that is ``(in, out)``; for a ``Conv2d`` weight
    ``(out, in / groups, kh, kw)`` it is ``(in / groups * kh * kw, out * kh * kw)``.
    Returns ``None`` for tensors of fewer than two dimensions, for which ``torch.nn.init``
    raises.
    """
    if len(shape) < 2:
        return None
    receptive_field = math.prod(int(s) for s in shape[2:])
    return int(shape[1]) * receptive_field, int(shape[0]) * receptive_field
