"""Bringing device statistics to the host in one transfer per device, into named fields.

A reduction is queued with the place its result goes: a :class:`Slot`, one field of a holder
(:class:`TensorValues` for a parameter or buffer, :class:`CallValues` for a module call,
:class:`RunValues` for the step's loss and Jacobian gain), and how the host list reads (a
summary's layout, by name). After :meth:`Deferred.resolve` every holder is filled; nothing
downstream indexes a list by position or looks a statistic up by a tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, List, NamedTuple, Optional, Tuple

import torch

from initaudit import stats


class Slot(NamedTuple):
    """Where a queued reduction's host values go: ``holder.field = decode(values)``."""

    holder: Any
    field: str
    decode: Optional[Callable[[List[float]], Any]] = None

    def fill(self, values: List[float]) -> None:
        setattr(self.holder, self.field, self.decode(values) if self.decode is not None else values)


def first(values: List[float]) -> float:
    """The one value of a one-element reduction."""
    return values[0]


@dataclass(eq=False)
class TensorValues:
    """One tensor's statistics as they arrive on the host, each in its named layout.

    ``fast_rows`` and ``grad_sums`` are the raw sums of the one-read passes; the resolver turns
    them into ``summary`` and ``grad`` (completing the few that need an exact pass), which is
    what the records are filled from.
    """

    fast_rows: Optional[List[float]] = None  # stats.fast_summary: [sum, x.x, min, max, min|x|] per slice
    summary: Optional[stats.Summary] = None
    counts: Optional[List[float]] = None  # stats.small_counts: [zeros, subnormal]
    probe: Optional[List[float]] = None  # stats.probe: a few fixed elements, to bucket clones
    shape: Optional[stats.ShapeStats] = None
    gate_means: Optional[List[float]] = None  # stats.chunk_means of the gate blocks
    gate_singular_values: Optional[List[float]] = None  # [min_0, max_0, min_1, max_1, ...]
    spectral_radius: Optional[float] = None
    grad_sums: Optional[List[float]] = None  # stats.gradient_fast: [sum(g), g.g]
    grad_row: Optional[List[float]] = None  # factored.gradient_row: [sum(G), ||G||^2, nonfinite]
    grad: Optional[stats.GradientSummary] = None


@dataclass(eq=False)
class CallValues:
    """One module call's output moments (:func:`~initaudit.stats.output_moments`'s row)."""

    moments: Optional[List[float]] = None


@dataclass(eq=False)
class RunValues:
    """The step's scalars: the loss, and the Jacobian gain of the probe."""

    loss: Optional[float] = None
    jacobian_gain: Optional[float] = None
    zero_output_loss: Optional[float] = None  # the user's loss of an all-zero output (probe.zero_output_loss)
    initial_loss: Optional[List[float]] = None  # [E_y[CE] for a uniform label, logit std]
    labelled_loss: Optional[List[float]] = None  # [CE, CE shuffled, its noise, H(prior), rows]


class Deferred:
    """Collects device tensors and brings them to the host in one go.

    One ``tolist()`` per device, however many tensors were added, so that an audit makes
    a constant number of host-device synchronizations. A tensor is queued under a key; a
    :class:`Slot` key is also filled when it resolves.
    """

    def __init__(self) -> None:
        self._items: List[Tuple[Hashable, torch.Tensor]] = []

    def add(self, key: Hashable, values: torch.Tensor) -> None:
        self._items.append((key, values.reshape(-1)))

    def put(self, holder: Any, field: str, values: torch.Tensor, decode: Optional[Callable[[List[float]], Any]] = None) -> None:
        """Queue ``values`` for ``holder.field`` (read by ``decode`` on arrival)."""
        self.add(Slot(holder, field, decode), values)

    def resolve(self) -> Dict[Hashable, List[float]]:
        by_device: Dict[torch.device, Dict[torch.dtype, List[Tuple[Hashable, torch.Tensor]]]] = {}
        for key, values in self._items:
            by_device.setdefault(values.device, {}).setdefault(values.dtype, []).append((key, values))
        resolved: Dict[Hashable, List[float]] = {}
        for by_dtype in by_device.values():
            # one concatenation per dtype, widened once (an int64 count keeps every digit)
            groups = list(by_dtype.values())
            flat = torch.cat([torch.cat([v for _, v in items]).to(torch.float64) for items in groups]).tolist()
            offset = 0
            for items in groups:
                for key, values in items:
                    resolved[key] = flat[offset : offset + values.numel()]
                    offset += values.numel()
        self._items.clear()
        for key, values in resolved.items():
            if isinstance(key, Slot):
                key.fill(values)
        return resolved
