"""How a tensor is read: in slices that a temporary of one stays small for, into a kept
scratch buffer, accumulated in float32 or better.
"""

from __future__ import annotations

import threading
from typing import Iterator, List, Tuple

import torch


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 tensors, float32 for every narrower floating type."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# elements per slice when a pass needs a temporary: 2 MiB of float32 stays in a CPU's cache;
# on an accelerator, slices of 64 MiB keep the temporary small next to the model
_SLICE_CPU = 1 << 19


_SLICE_DEVICE = 1 << 24


def slice_size(device: torch.device) -> int:
    """Elements per slice on ``device`` (at most 2^24, which float32 still counts exactly)."""
    return _SLICE_CPU if device.type == "cpu" else _SLICE_DEVICE


def slices(x: torch.Tensor) -> List[torch.Tensor]:
    """``x`` flattened, in slices that a temporary of one stays small for."""
    flat = x.reshape(-1)
    size = slice_size(flat.device)
    return list(flat.split(size)) if flat.numel() > size else [flat]


def buffered_slices(x: torch.Tensor, dtype: torch.dtype) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Each slice of ``x`` (:func:`slices`) with a view of the kept buffer of ``dtype``
    (:func:`scratch_buffer`) as large as it, for that slice's temporary."""
    parts = slices(x)
    scratch = scratch_buffer(parts[0].numel(), dtype, x.device)
    for part in parts:
        yield part, scratch[: part.numel()]


def added(rows: List[torch.Tensor]) -> torch.Tensor:
    """The slices' partial results added up (the one row itself for one slice)."""
    return rows[0] if len(rows) == 1 else torch.stack(rows).sum(dim=0)


_SCRATCH = threading.local()  # per thread: two audits in two threads never share a buffer


def scratch_buffer(numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A buffer of ``numel`` elements for one slice's temporary.

    On the CPU one buffer per dtype is kept (2 MiB for float32): a fresh one would be
    fresh pages from the OS on every call, and faulting them in cost more than the pass it
    serves. Elsewhere the caching allocator already reuses memory.
    """
    if device.type != "cpu":
        return torch.empty(numel, dtype=dtype, device=device)
    buffers = _SCRATCH.__dict__.setdefault("by_dtype", {})
    kept = buffers.get(dtype)
    if kept is None or kept.numel() < numel:
        kept = buffers[dtype] = torch.empty(max(numel, _SLICE_CPU), dtype=dtype)
    return kept[:numel]


# below this share of the second moment, the variance from x.x - n mean^2 has lost its digits
CANCELLATION = 1e-3


def cancelled(variance: float, second: float, limit: float = CANCELLATION) -> bool:
    """Whether a variance taken as ``second - mean^2`` has lost its digits to cancellation.

    ``second > 0 and variance < limit * second``, with ``second = x.x / n`` the second
    moment. The subtraction keeps the absolute error of ``second``, about its relative
    error times ``second`` (near 1e-6 for float32 sums): below ``limit`` of ``second`` that
    is more than 1e-3 of the variance (the default :data:`CANCELLATION`, for sums kept in
    float32), and the variance must be taken again in two passes. A zero ``second`` (all
    zeros) has an exact variance of 0.
    """
    return second > 0 and variance < limit * second


def dense(t: torch.Tensor) -> torch.Tensor:
    """A detached, strided view of ``t``: sparse tensors are densified for their statistics."""
    x = t.detach()
    return x.to_dense() if x.layout != torch.strided else x
