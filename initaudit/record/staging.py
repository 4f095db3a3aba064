"""Small tensors reduced several at a time: copied side by side into staging matrices.

On a small tensor, such as a 64 x 1024 activation, each operation of a reduction costs
more in dispatch than in arithmetic, and a 30-layer MLP hands the audit sixty of them in
the forward and thirty in the backward. Tensors that arrive one at a time from hooks, each
viewed as ``rows x columns``, are therefore copied at once (the values as they are at the
hook: a later in-place change does not reach them, and no reference is kept) into the
matrix of their shape, dtype and device, side by side: ``rows x K columns``. When ``K``
are there, or at :meth:`Staging.flush`, the owner's ``reduce`` takes all of them in one
set of operations. A tensor too large for two to share a matrix is not staged; the owner
reduces it alone.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import torch

# elements of one staging matrix: 2 MiB of float32, on every device (the dispatches saved
# per tensor are worth as much on an accelerator, and more would only hold memory)
STAGED = 1 << 19
# matrices kept at once; a tensor of a further shape reduces the oldest
GROUPS = 4

Reduce = Callable[[torch.Tensor, int, List[Any]], None]


class _Matrix:
    def __init__(self, rows: int, columns: int, like: torch.Tensor, capacity: int) -> None:
        self.columns, self.capacity = columns, capacity
        self.values = torch.empty(rows, capacity * columns, dtype=like.dtype, device=like.device)
        self.items: List[Any] = []


def stageable(x: torch.Tensor) -> bool:
    """A nonempty plain dense tensor: not a subclass (a ``DTensor`` holds a shard), not
    sparse or nested, whose ``reshape`` is an ordinary view or copy."""
    return (type(x) is torch.Tensor or type(x) is torch.nn.Parameter) and x.layout == torch.strided \
        and not x.is_nested and x.numel() > 0


class Staging:
    """Stages ``rows x columns`` tensors (:meth:`add`) and hands them to ``reduce(matrix,
    count, items)``: ``matrix`` is ``rows x count columns``, tensor ``k`` in its columns
    ``[k columns, (k + 1) columns)``, ``items`` what was added with each."""

    def __init__(self, reduce: Reduce) -> None:
        self.reduce = reduce
        self.matrices: Dict[Tuple[int, int, torch.dtype, torch.device], _Matrix] = {}

    def add(self, x: torch.Tensor, item: Any) -> bool:
        """Copy the 2-D ``x`` into its matrix; ``False`` (nothing kept) where it is not staged:
        empty, too large, or not a plain dense tensor (:func:`stageable`)."""
        if x.dim() != 2 or not stageable(x) or STAGED // x.numel() < 2:
            return False
        rows, columns = x.shape
        key = (rows, columns, x.dtype, x.device)
        matrix = self.matrices.get(key)
        if matrix is None:
            if len(self.matrices) >= GROUPS:
                self._reduce(self.matrices.pop(next(iter(self.matrices))))
            matrix = self.matrices[key] = _Matrix(rows, columns, x, STAGED // x.numel())
        start = len(matrix.items) * columns
        with torch.no_grad():
            matrix.values[:, start : start + columns].copy_(x.detach())
        matrix.items.append(item)
        if len(matrix.items) == matrix.capacity:
            self._reduce(matrix)
        return True

    def flush(self) -> None:
        """Reduce everything staged, and let the matrices go."""
        for matrix in self.matrices.values():
            self._reduce(matrix)
        self.matrices.clear()

    def _reduce(self, matrix: _Matrix) -> None:
        count = len(matrix.items)
        if count:
            items = list(matrix.items)
            matrix.items.clear()
            self.reduce(matrix.values[:, : count * matrix.columns], count, items)
