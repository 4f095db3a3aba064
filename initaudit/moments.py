"""Module outputs' moments (:func:`~initaudit.stats.output_moments`), reduced several
outputs at a time.

On a small output, such as a 64 x 1024 activation, each of the dozen operations of
:func:`~initaudit.stats.output_moments` costs more in dispatch than in arithmetic, and a
30-layer MLP has sixty such outputs. Outputs of the same batch ``B``, features ``F`` (the
product of the other dimensions), dtype and device are therefore copied, at their hook,
side by side into one ``B x K F`` staging matrix of at most :data:`STAGED` elements, and
the moments of all ``K`` are taken in one set of operations on it when it is full or when
the forward ends. The copy keeps the values as they were at the hook (an in-place
activation that later overwrites the output does not change them), and no reference to
the output itself. An output too large for two to share a matrix is reduced alone, as
are activations' outputs that count more than dead units (tanh and sigmoid saturation;
dead channels of outputs with more than two dimensions).

Each output's row is the one :func:`~initaudit.stats.output_moments` gives: the per-column
passes are the same (:func:`~initaudit.stats.column_passes` on the staging matrix, whose
columns are the outputs' columns), and only the sums over columns are split by output.
"""

from __future__ import annotations

from typing import Any, Dict, Hashable, List, Optional, Tuple

import torch

from . import stats

# activations whose outputs also count saturation over every element
# (stats.activation_counts): reduced one at a time, as are activations' outputs other than 2-D
_SATURATING = {"tanh", "sigmoid"}
# elements of one staging matrix (2 MiB of float32, on every device: a few dispatches saved
# per output are worth as much on an accelerator, and more would only hold memory), and
# how many matrices are kept at once
STAGED = 1 << 19
_GROUPS = 4


class Pending:
    """One output's place in a staging matrix; its row once the matrix was reduced."""

    __slots__ = ("keys", "activation", "row")

    def __init__(self, key: Hashable, activation: bool) -> None:
        self.keys: List[Hashable] = [key]
        self.activation = activation
        self.row: Optional[torch.Tensor] = None


class _Group:
    def __init__(self, batch: int, features: int, like: torch.Tensor, capacity: int) -> None:
        self.batch, self.features, self.capacity = batch, features, capacity
        self.matrix = torch.empty(batch, capacity * features, dtype=like.dtype, device=like.device)
        self.pending: List[Pending] = []


class OutputMoments:
    """Queues module outputs' moments on a :class:`~initaudit.stats.Deferred`, batching the
    small outputs that can be (:meth:`add`); :meth:`flush` reduces whatever is still staged."""

    def __init__(self, deferred: stats.Deferred) -> None:
        self.deferred = deferred
        self.groups: Dict[Tuple[int, int, torch.dtype, torch.device], _Group] = {}

    def add(self, key: Hashable, out: torch.Tensor, nonlinearity: Optional[str]) -> Any:
        """Queue ``out``'s moments under ``key``; returns a handle for :meth:`alias`."""
        group = self._group_for(out, nonlinearity)
        if group is None:
            moments = stats.output_moments(out, nonlinearity)
            self.deferred.add(key, moments)
            return moments
        slot = Pending(key, nonlinearity is not None)
        index = len(group.pending)
        start = index * group.features
        with torch.no_grad():
            group.matrix[:, start : start + group.features].copy_(out.detach().reshape(group.batch, group.features))
        group.pending.append(slot)
        if len(group.pending) == group.capacity:
            self._reduce(group)
        return slot

    def alias(self, handle: Any, key: Hashable) -> None:
        """Queue under ``key`` the same row as the output ``handle`` came from."""
        if isinstance(handle, Pending):
            if handle.row is None:
                handle.keys.append(key)
                return
            handle = handle.row
        self.deferred.add(key, handle)

    def flush(self) -> None:
        for group in self.groups.values():
            self._reduce(group)
        self.groups.clear()

    def _group_for(self, out: torch.Tensor, nonlinearity: Optional[str]) -> Optional[_Group]:
        if (
            out.dim() < 1
            or out.numel() == 0
            or type(out) is not torch.Tensor and type(out) is not torch.nn.Parameter
            or out.layout != torch.strided
            or (nonlinearity is not None and (out.dim() != 2 or nonlinearity in _SATURATING))
        ):
            return None
        batch = out.shape[0]
        features = out.numel() // batch
        capacity = STAGED // out.numel()
        if capacity < 2:
            return None
        key = (batch, features, out.dtype, out.device)
        group = self.groups.get(key)
        if group is None:
            if len(self.groups) >= _GROUPS:  # the oldest is reduced and its matrix let go
                oldest = next(iter(self.groups))
                self._reduce(self.groups.pop(oldest))
            group = self.groups[key] = _Group(batch, features, out, capacity)
        return group

    def _reduce(self, group: _Group) -> None:
        count = len(group.pending)
        if not count:
            return
        rows = group.matrix[:, : count * group.features]
        for slot, row in zip(group.pending, staged_moments(rows, count)):
            slot.row = row if slot.activation else row[: stats.OUTPUT_MOMENTS]
            for key in slot.keys:
                self.deferred.add(key, slot.row)
        group.pending.clear()


def staged_moments(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``count x 6``: each output's :func:`~initaudit.stats.output_moments` row, with the
    dead-unit count of an activation's 2-D output last, from ``rows`` (``B x count F``),
    the outputs side by side.

    The per-column table is :func:`~initaudit.stats.output_moments`'s; per output ``k``
    with columns ``f`` in its block, the totals are ``sum_f`` of the table's rows,
    ``spread_k = sum_f (s_f - mean_f s_f)^2``, and ``dead_k`` counts its columns with no
    nonzero element and no NaN (``c_f + sqrt(q_f) = 0``).
    """
    x = rows.detach()
    features = x.shape[1] // count
    table = torch.empty(4, x.shape[1], dtype=stats.accumulation_dtype(x.dtype), device=x.device)
    torch.sum(x, dim=0, dtype=table.dtype, out=table[0])
    stats.column_passes(x, table, per_column=True)
    torch.sqrt(table[1], out=table[2])
    by_output = table.view(4, count, features)
    totals = by_output.sum(dim=2)  # 4 x count: s, q, sqrt(q), nonzero
    offsets = by_output[0] - totals[0].unsqueeze(1) / features
    spread = offsets.square_().sum(dim=1)
    dead = ((table[3] + table[2]) == 0).view(count, features).sum(dim=1, dtype=torch.float64)
    return torch.cat([totals.T.double(), spread.double().unsqueeze(1), dead.unsqueeze(1)], dim=1)
