"""A layer's weight std against the std its consumer asks for (IA201, the depth profile)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from initaudit.analysis import gains
from initaudit.analysis.graph import LayerUse

FAN_OUT_FIT = 1.1  # a weight within 10% of the fan_out-mode std was drawn in that mode


@dataclass
class Scale:
    """A layer's measured weight std against the std its consumer asks for."""

    use: LayerUse
    measured: float
    low: float  # recommended std, lower end (gain_low / sqrt(fan))
    high: float  # recommended std, upper end (equal to low except for tanh)
    mode: str = "fan_in"  # or "fan_out", when the weight was drawn for the backward pass
    fan: int = 0

    @property
    def ratio(self) -> float:
        """``r = measured / recommended``; 1 anywhere inside a recommended range."""
        if self.measured < self.low:
            return self.measured / self.low
        if self.measured > self.high:
            return self.measured / self.high
        return 1.0

    @property
    def off_by(self) -> float:
        """How many times too large or too small, always >= 1."""
        r = self.ratio
        return max(r, 1 / r) if r > 0 else math.inf

    def recommended(self) -> str:
        if self.low == self.high:
            return f"{self.low:.3g}"
        return f"{self.low:.3g}-{self.high:.3g}"


def recommended_std(use: LayerUse) -> Optional[Scale]:
    """``gain / sqrt(fan)`` for the consuming activation (He et al. 2015, Glorot & Bengio 2010).

    ``fan`` is the layer's fan-in (for a transposed conv, ``in_channels / groups x kernel``),
    or its fan-out when that fits the weight better: He et al. (2015) show either mode keeps
    the signal bounded (``kaiming_normal_(mode="fan_out")`` preserves the backward pass).
    """
    w = use.weight
    # zero, constant and non-finite weights are IA101, IA102 and IA103's to report
    fan_in = w.layer_fan_in or w.fan_in
    if not fan_in or w.std is None or not math.isfinite(w.std) or w.min == w.max or w.nonfinite:
        return None
    low_gain, high_gain = gains.gain_range(use.activation)
    by_fan_in = Scale(use, w.std, low_gain / math.sqrt(fan_in), high_gain / math.sqrt(fan_in), "fan_in", fan_in)
    if w.fan_out and w.fan_out != fan_in:
        root = math.sqrt(w.fan_out)
        by_fan_out = Scale(use, w.std, low_gain / root, high_gain / root, "fan_out", w.fan_out)
        # only a close fit counts as fan_out mode: a wrong init must not pass by accident
        if by_fan_out.off_by <= FAN_OUT_FIT < by_fan_in.off_by:
            return by_fan_out
    return by_fan_in
