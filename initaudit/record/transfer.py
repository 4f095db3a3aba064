"""Bringing device statistics to the host in one transfer per device."""

from __future__ import annotations

from typing import Dict, Hashable, List, Tuple

import torch


class Deferred:
    """Collects device tensors under keys and brings them to the host in one go.

    One ``tolist()`` per device, however many tensors were added, so that an audit makes
    a constant number of host-device synchronizations.
    """

    def __init__(self) -> None:
        self._items: List[Tuple[Hashable, torch.Tensor]] = []

    def add(self, key: Hashable, values: torch.Tensor) -> None:
        self._items.append((key, values.reshape(-1)))

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
        return resolved
