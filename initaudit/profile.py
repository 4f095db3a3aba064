"""The depth profile: per layer, in forward order, where the signal and the gradient go.

One row per layer call: the output's RMS and its input-dependent part (per-feature std
across the batch), the weight's gradient RMS, and the weight's std against the std its
consumer asks for, with a bar on a log scale so that a collapse shows at a glance; a
signal-propagation plot (Brock et al. 2021) of the same with ``--plot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional

from tabulate import tabulate

from .errors import InitauditError
from .graph import layer_runs
from .records import Recording
from .rules.variance import recommended_std

BAR_WIDTH = 24


@dataclass
class ProfileRow:
    layer: str
    type: str
    consumer: str
    method: str  # how the consumer was found: fx or hooks
    output_rms: Optional[float]
    signal: Optional[float]  # per-feature std across the batch
    grad_rms: Optional[float]
    weight_std: Optional[float]
    recommended_std: Optional[float]

    @property
    def ratio(self) -> Optional[float]:
        if not self.weight_std or not self.recommended_std:
            return None
        return self.weight_std / self.recommended_std


def depth_profile(recording: Recording) -> List[ProfileRow]:
    rows = []
    for run in layer_runs(recording):
        for use in run:
            out = use.output
            scale = recommended_std(use)
            w = use.weight
            grad_rms = w.grad.norm / math.sqrt(w.numel) if w.grad is not None and w.numel else None
            rows.append(
                ProfileRow(
                    layer=use.module.name,
                    type=use.module.type,
                    consumer=use.activation.describe() + (" -> norm" if use.normalized else ""),
                    method=use.module.consumer_method or "hooks",
                    output_rms=math.sqrt(out.mean ** 2 + out.std ** 2) if out is not None else None,
                    signal=out.feature_std if out is not None else None,
                    grad_rms=grad_rms,
                    weight_std=w.std,
                    recommended_std=(scale.measured / scale.ratio) if scale is not None and scale.ratio else None,
                )
            )
    order = {name: i for i, name in enumerate(recording.call_order)}
    rows.sort(key=lambda r: order.get(r.layer, 0))
    return rows


def _bar(value: Optional[float], low: float, high: float) -> str:
    """``#`` bars on a log10 scale between the smallest and largest value of the column."""
    if value is None or value <= 0 or not math.isfinite(value):
        return "(none)" if value is None else "(zero)"
    if high <= low:
        return "#" * BAR_WIDTH
    length = 1 + round((BAR_WIDTH - 1) * (math.log10(value) - low) / (high - low))
    return "#" * max(1, length)


def _num(v: Optional[float]) -> str:
    return "" if v is None or not math.isfinite(v) else f"{v:.3g}"


def profile_table(rows: List[ProfileRow]) -> str:
    signals = [math.log10(r.signal) for r in rows if r.signal and r.signal > 0 and math.isfinite(r.signal)]
    low, high = (min(signals), max(signals)) if signals else (0.0, 0.0)
    table = [
        [
            r.layer, r.type, f"{r.consumer} ({r.method})", _num(r.output_rms), _num(r.signal),
            _bar(r.signal, low, high), _num(r.grad_rms), _num(r.weight_std), _num(r.recommended_std),
            _num(r.ratio),
        ]
        for r in rows
    ]
    return tabulate(
        table,
        headers=["layer", "type", "consumer", "out RMS", "signal", "signal (log scale)",
                 "grad RMS", "w std", "recommended", "ratio"],
        tablefmt="simple",
        disable_numparse=True,
    )


def plot(rows: List[ProfileRow], path: str, title: str = "") -> None:
    """Signal-propagation plot: output RMS, signal and gradient RMS per layer, log scale."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InitauditError(
            "--plot needs matplotlib, which is not installed: pip install 'initaudit[plot]'"
        ) from None
    depth = list(range(len(rows)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for attr, label in (("output_rms", "output RMS"), ("signal", "signal (per-feature std)"), ("grad_rms", "weight grad RMS")):
        values = [getattr(r, attr) or float("nan") for r in rows]
        top.semilogy(depth, values, marker=".", label=label)
    top.set_ylabel("magnitude")
    top.legend(loc="best", fontsize="small")
    top.set_title(title or "initaudit depth profile")
    bottom.semilogy(depth, [r.ratio or float("nan") for r in rows], marker=".", color="tab:red")
    bottom.axhline(1.0, color="grey", linewidth=0.8)
    bottom.set_ylabel("weight std / recommended")
    bottom.set_xlabel("layer (forward order)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
