"""Module outputs' moments (:func:`~initaudit.stats.output_moments`), reduced several
outputs at a time.

A 30-layer MLP's sixty 64 x 1024 outputs each cost the dozen operations of
:func:`~initaudit.stats.output_moments` more in dispatch than in arithmetic. Outputs of
the same batch ``B``, features ``F`` (the product of the other dimensions), dtype and
device are staged side by side (:mod:`~initaudit.record.staging`) and their moments taken
together (:func:`staged_moments`), each output's row the one
:func:`~initaudit.stats.output_moments` gives it. Reduced alone: outputs too large to
share a staging matrix, and activations' outputs that count more than dead units (tanh
and sigmoid saturation; dead channels of outputs with more than two dimensions).
"""

from __future__ import annotations

from typing import Any, Hashable, List, Optional

import torch

from initaudit import stats
from initaudit.record import staging, transfer

# activations whose outputs also count saturation over every element (stats.activation_counts)
_SATURATING = {"tanh", "sigmoid"}


class Pending:
    """One output's place in a staging matrix; its row once the matrix was reduced."""

    __slots__ = ("keys", "activation", "row")

    def __init__(self, key: Hashable, activation: bool) -> None:
        self.keys: List[Hashable] = [key]
        self.activation = activation
        self.row: Optional[torch.Tensor] = None


class OutputMoments:
    """Queues module outputs' moments on a :class:`~initaudit.record.transfer.Deferred` (:meth:`add`),
    the small ones staged; :meth:`flush` reduces whatever is still staged."""

    def __init__(self, deferred: transfer.Deferred) -> None:
        self.deferred = deferred
        self.staging = staging.Staging(self._reduce)

    def add(self, key: Hashable, out: torch.Tensor, nonlinearity: Optional[str]) -> Any:
        """Queue ``out``'s moments under ``key``; returns a handle for :meth:`alias`."""
        slot = Pending(key, nonlinearity is not None)
        if (out.dim() >= 1 and (nonlinearity is None or (out.dim() == 2 and nonlinearity not in _SATURATING))
                and staging.stageable(out) and self.staging.add(out.reshape(out.shape[0], -1), slot)):
            return slot
        moments = stats.output_moments(out, nonlinearity)
        self.deferred.add(key, moments)
        return moments

    def alias(self, handle: Any, key: Hashable) -> None:
        """Queue under ``key`` the same row as the output ``handle`` came from."""
        if isinstance(handle, Pending):
            if handle.row is None:
                handle.keys.append(key)
                return
            handle = handle.row
        self.deferred.add(key, handle)

    def flush(self) -> None:
        self.staging.flush()

    def _reduce(self, matrix: torch.Tensor, count: int, slots: List[Pending]) -> None:
        for slot, row in zip(slots, staged_moments(matrix, count)):
            slot.row = row if slot.activation else row[: stats.OUTPUT_MOMENTS]
            for key in slot.keys:
                self.deferred.add(key, slot.row)


def staged_moments(rows: torch.Tensor, count: int) -> torch.Tensor:
    """``count x 6``: each output's :func:`~initaudit.stats.output_moments` row, with the
    dead-unit count of an activation's 2-D output last, from ``rows`` (``B x count F``),
    the outputs side by side.

    The per-column table is :func:`~initaudit.stats.output_moments`'s; per output ``k``
    with columns ``f`` in its block, the totals are ``sum_f`` of the table's rows,
    ``spread_k`` is :func:`~initaudit.stats.feature_spread`'s, and ``dead_k`` counts its columns with no
    nonzero element and no NaN (``c_f + sqrt(q_f) = 0``).
    """
    x = rows.detach()
    features = x.shape[1] // count
    table = torch.empty(4, x.shape[1], dtype=stats.accumulation_dtype(x.dtype), device=x.device)
    torch.sum(x, dim=0, dtype=table.dtype, out=table[0])
    drift = torch.empty_like(table[0])
    stats.column_passes(x, table, True, drift)
    torch.sqrt(table[1], out=table[2])
    totals = table.view(4, count, features).sum(dim=2)  # 4 x count: s, q, sqrt(q), nonzero
    spread = stats.feature_spread(table[0], drift, count)
    dead = ((table[3] + table[2]) == 0).view(count, features).sum(dim=1, dtype=torch.float64)
    return torch.cat([totals.T.double(), spread.double().unsqueeze(1), dead.unsqueeze(1)], dim=1)
