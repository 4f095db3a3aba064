"""Norm, std and non-finite count of a first-step gradient."""

from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence

import torch

from initaudit.stats.reduce import accumulation_dtype, added, buffered_slices, cancelled, dense


class GradientSummary(NamedTuple):
    """A first-step gradient's summary on the host: :func:`gradient_summary`'s row, by name."""

    norm: float  # sqrt(sum(g^2))
    std: float  # population std
    nonfinite: float  # element count


def gradient_summary(g: torch.Tensor) -> torch.Tensor:
    """``[norm, std, nonfinite]`` of a gradient: ``norm = sqrt(sum(g^2))``, population std."""
    x = dense(g)
    n = x.numel()
    xa = x.to(accumulation_dtype(x.dtype))
    norm = xa.square().sum().sqrt()
    mean = xa.sum() / max(n, 1)
    std = ((xa - mean).square().sum() / max(n, 1)).sqrt()
    nonfinite = n - torch.isfinite(x).sum()
    return torch.stack([norm.double(), std.double(), nonfinite.double()])


def gradient_fast(g: torch.Tensor) -> torch.Tensor:
    """``[sum(g), g.g]`` of a gradient (or of one piece of a sharded one): two reductions.

    Accumulated in float32 or better; a float16 or bfloat16 gradient is widened one slice
    at a time into the kept buffer, never as a whole copy. The pieces of a sharded gradient
    add up to the whole's. :func:`gradient_from_fast` turns it into
    :func:`gradient_summary`'s layout, or says that the exact summary is needed (NaN or
    Inf, or a variance that cancels).
    """
    x = dense(g).reshape(-1)
    acc = accumulation_dtype(x.dtype)
    if x.dtype == acc:
        return torch.stack([x.sum(), torch.dot(x, x)])
    rows = []
    for part, wide in buffered_slices(x, acc):
        wide.copy_(part)
        rows.append(torch.stack([wide.sum(), torch.dot(wide, wide)]))
    return added(rows)


def gradient_from_fast(n: int, sums: Sequence[float]) -> Optional[List[float]]:
    """``[norm, std, nonfinite]`` of a gradient of ``n`` elements from its :func:`gradient_fast`,
    or ``None`` when it must be redone.

    ``norm = sqrt(g.g)``, ``std = sqrt(g.g / n - mean^2)``; a NaN or Inf anywhere makes the
    sum or the dot product non-finite, so finite ones mean none.
    """
    total, dot = sums
    if not (math.isfinite(total) and math.isfinite(dot)):
        return None
    mean, second = total / max(n, 1), dot / max(n, 1)
    variance = second - mean * mean
    if cancelled(variance, second):
        return None
    return GradientSummary(math.sqrt(dot), math.sqrt(max(variance, 0.0)), 0.0)
