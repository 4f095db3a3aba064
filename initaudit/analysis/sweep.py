"""How each layer's activations scale with the model's width: the coordinate check at init.

For widths ``n_1 < ... < n_k`` and a layer's signal gain ``a_i`` at each (the same layer,
matched by name; the per-feature std across the batch of its output, the part that depends
on the input, over that of its input: :func:`layer_gains`), the slope is the least-squares fit of ``log a`` on ``log n``:

    slope = sum((x - mean x)(y - mean y)) / sum((x - mean x)^2),  x = log n, y = log a

so that ``a ~ n^slope``. At init the coordinates of a well-parametrized model stay of the
same size as it widens (Yang & Hu 2021, Tensor Programs IV/V: every input and hidden layer's
activations Theta(1), slope 0; the output's Theta(1) in the standard parametrization and
Theta(1/sqrt(n)) in muP, slope -1/2). A weight drawn with a fixed std instead of one that
shrinks as ``1/sqrt(fan_in)`` gives activations that grow as ``sqrt(n)``: slope +1/2. A slope
beyond :data:`SLOPE_TOLERANCE` in absolute value is flagged, halfway between the exponent a
right init gives (0) and the ones a wrong scale with the fan gives (+-1/2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from initaudit.core import knowledge

SLOPE_TOLERANCE = 0.25


@dataclass
class LayerTrend:
    """One layer's output RMS at init across the widths, and its verdict."""

    name: str
    kind: str  # "input", "hidden" or "output"
    gains: List[Optional[float]]  # its signal gain (layer_gains) per width, in the sweep's order
    slope: Optional[float]
    flagged: bool
    advice: str
    # the slope muP prescribes for this kind of layer and statistic (mup_slope)
    mup: float = 0.0


def log_slope(widths: Sequence[float], values: Sequence[Optional[float]]) -> Optional[float]:
    """The least-squares slope of ``log value`` on ``log width`` (see the module docstring);
    ``None`` with fewer than two positive, finite values."""
    pairs = [(math.log(w), math.log(v)) for w, v in zip(widths, values)
             if v is not None and math.isfinite(v) and v > 0 and w > 0]
    if len(pairs) < 2:
        return None
    mx = sum(x for x, _ in pairs) / len(pairs)
    my = sum(y for _, y in pairs) / len(pairs)
    spread = sum((x - mx) ** 2 for x, _ in pairs)
    if spread == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pairs) / spread


def mup_slope(kind: str, statistic: str) -> float:
    """The exponent of width that muP gives a layer's statistic (Yang et al. 2021, Tensor
    Programs V, Table 3). At init (``"gain"``), input and hidden weights have variance
    ``1/fan_in``, so their gain is flat (0), and the output weights ``1/fan_in^2``, so the
    output layer's gain is ``sqrt(fan_in) / fan_in``: -1/2. After the first steps
    (``"update"``), every layer's output changes by Theta(1): 0."""
    return -0.5 if statistic == "gain" and kind == "output" else 0.0


def _advice(kind: str, slope: float) -> str:
    if kind == "output":
        return ("the logits grow with width: draw the output layer with std proportional to 1/fan_in (muP) "
                "or multiply its output by 1/width")
    if slope > 0:
        return "its activations grow with width: draw the weight with std proportional to 1/sqrt(fan_in) (He, LeCun)"
    return "its activations shrink with width: draw the weight with std proportional to 1/sqrt(fan_in), not 1/fan_in"


def layer_gains(recording: Any) -> Dict[str, float]:
    """Per layer, its signal gain at init: the per-feature std across the batch of its output
    over that of what its weight's product reads (the dataflow's ``input_from``; the model's
    input, the same at every width, for the first layer, whose own signal is used). A layer's
    own gain, not its absolute signal, so that a mis-scaled layer is named alone, and the
    compounding of the layers below (and the noise of their draws) does not move its slope.
    What it reads is that module's call nearest before the layer's: one activation module
    called in every block has an output per call, and the first is not the block's."""
    aliases = {name: m for m in recording.modules for name in m.names}
    gains = {}
    for m in recording.modules:
        if m.kind != knowledge.LAYER or m.output is None or m.first_call is None:
            continue
        weight = next((t for t in recording.parameters if t.module in m.names and t.attr == "weight"), None)
        source = aliases.get(weight.input_from) if weight is not None and weight.input_from else None
        if weight is not None and weight.input_from and source is None:
            continue
        below = None
        if source is not None:
            calls = [i for i, name in enumerate(recording.call_order[:m.first_call]) if name in source.names]
            out = recording.call_outputs[calls[-1]] if calls else source.output
            below = out.feature_std if out is not None else None
            if not below:
                continue  # its input carries no signal: no gain to measure
        gains[m.name] = m.output.feature_std / below if below else m.output.feature_std
    return gains


def layer_kinds(recording: Any, output_layer: Optional[str]) -> List[Tuple[str, str]]:
    """``(name, kind)`` of each layer the forward called, in forward order: the first is the
    input layer, the dataflow's output layer the output one, the rest hidden."""
    layers = sorted((m for m in recording.modules if m.kind == knowledge.LAYER and m.first_call is not None),
                    key=lambda m: m.first_call)
    return [(m.name, "output" if m.name == output_layer else "input" if i == 0 else "hidden")
            for i, m in enumerate(layers)]


def layer_trends(widths: Sequence[float], recordings: Sequence[Any], output_layers: Sequence[Optional[str]],
                 tolerance: float = SLOPE_TOLERANCE) -> List[LayerTrend]:
    """Per layer (by name, in the first recording's forward order), its signal gain at each
    width (:func:`layer_gains`) and the slope of its log against log width. An input or
    hidden layer is flagged beyond ``tolerance`` either way; the output layer only when it
    grows (logits shrinking with width are muP's output scale)."""
    by_width = [layer_gains(rec) for rec in recordings]
    trends = []
    for name, kind in layer_kinds(recordings[0], output_layers[0]):
        values = [gains.get(name) for gains in by_width]
        slope = log_slope(widths, values)
        flagged = slope is not None and (slope > tolerance if kind == "output" else abs(slope) > tolerance)
        trends.append(LayerTrend(name, kind, values, slope, flagged, _advice(kind, slope) if flagged else "",
                                 mup_slope(kind, "gain")))
    return trends


def update_trends(widths: Sequence[float], recordings: Sequence[Any], output_layers: Sequence[Optional[str]],
                  tolerance: float = SLOPE_TOLERANCE) -> List[LayerTrend]:
    """Per layer, the RMS of its output's change over the first optimizer steps at each width
    (``Recording.step_output_changes``) and its slope against log width. muP keeps every
    layer's change Theta(1) (Yang et al. 2021, Tensor Programs V, Table 3: with Adam, hidden
    and output learning rates scaled by 1/fan_in); the standard parametrization with one
    learning rate grows it with width (about linearly at the output). Flagged beyond
    ``tolerance`` either way."""
    trends = []
    for name, kind in layer_kinds(recordings[0], output_layers[0]):
        values = [(rec.step_output_changes or {}).get(name) for rec in recordings]
        slope = log_slope(widths, values)
        flagged = slope is not None and abs(slope) > tolerance
        advice = ""
        if flagged:
            way = "grows" if slope > 0 else "shrinks"
            advice = (f"its update {way} with width: scale this layer's learning rate by 1/fan_in (muP, for Adam: "
                      "hidden and output layers)" if kind != "input" else f"its update {way} with width")
        trends.append(LayerTrend(name, kind, values, slope, flagged, advice, mup_slope(kind, "update")))
    return trends


def parse_sweep(spec: str) -> tuple:
    """``"width=64,128,256"`` -> ``("width", [64, 128, 256])``: a factory argument and two or
    more positive numbers."""
    name, sep, values = spec.partition("=")
    if not sep or not name.strip().isidentifier():
        raise ValueError(f"--sweep {spec!r}: expected NAME=V1,V2,... (e.g. width=64,128,256,512)")
    try:
        numbers = [int(v) if v.strip().isdigit() else float(v) for v in values.split(",")]
    except ValueError:
        raise ValueError(f"--sweep {spec!r}: the values must be numbers") from None
    if len(numbers) < 2 or any(not (v > 0) for v in numbers) or len(set(numbers)) < 2:
        raise ValueError(f"--sweep {spec!r}: give two or more different positive values")
    return name.strip(), numbers


@dataclass
class SweepResult:
    """A width sweep: the factory argument, its values, one report per value, the trends."""

    name: str
    values: List[float]
    reports: List[Any]
    trends: List[LayerTrend]
    updates: List[LayerTrend] = field(default_factory=list)  # with an optimizer: the output changes

    @property
    def flagged(self) -> List[LayerTrend]:
        return [t for t in self.trends + self.updates if t.flagged]

    def table(self) -> str:
        from tabulate import tabulate

        from initaudit.core.numbers import short_number

        def render(trends: List[LayerTrend], what: str) -> str:
            headers = ["layer", "kind", *(f"{what} at {self.name}={v:g}" for v in self.values), "slope", "muP",
                       "verdict"]
            rows = [[t.name, t.kind, *(short_number(v, digits=3) for v in t.gains),
                     "" if t.slope is None else f"{t.slope:+.2f}", f"{t.mup:+.1f}", t.advice or "flat"]
                    for t in trends]
            return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)

        text = "Signal gain at init:\n" + render(self.trends, "gain")
        if self.updates:
            text += "\n\nOutput change over the optimizer's first steps:\n" + render(self.updates, "change")
        verdict = (f"{len(self.flagged)} layer statistic(s) that change with {self.name} "
                   f"(|slope| > {SLOPE_TOLERANCE:g})" if self.flagged
                   else f"every layer stays the same size as {self.name} grows")
        return text + "\n\n" + verdict
