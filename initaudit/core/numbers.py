"""Numbers as reports write them: finite or ``None`` (JSON has no NaN), and short text."""

from __future__ import annotations

import math
from typing import Optional


def finite_or_none(value: Optional[float]) -> Optional[float]:
    """``value`` if it is a finite number, else ``None`` (JSON has no NaN or Infinity)."""
    if value is None or not math.isfinite(value):
        return None
    return value


def short_number(value: Optional[float], digits: int = 4, *, non_finite: bool = False) -> str:
    """``value`` in at most ``digits`` significant digits (``format(value, ".4g")``), as a
    table cell: ``""`` for ``None``.

    NaN and infinities are ``""`` too, unless ``non_finite`` asks for them (``"nan"``,
    ``"inf"``, ``"-inf"``): a column of statistics shows that a tensor holds them, where a
    column of stds before and after a fix has nothing to say about one.
    """
    if value is None or (not non_finite and not math.isfinite(value)):
        return ""
    return f"{value:.{digits}g}"
