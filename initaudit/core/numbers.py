"""Numbers as reports write them: finite or ``None`` (JSON has no NaN), and short text."""

from __future__ import annotations

import math
from typing import Optional


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """``value`` if it is a finite number, else ``None`` (JSON has no NaN or Infinity)."""
    if value is None or not math.isfinite(value):
        return None
    return value
