"""The depth profile drawn: a table with log-scale bars, and the signal-propagation plot
(Brock et al. 2021) of ``--plot``. The rows come from :mod:`initaudit.analysis.profile`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, List, Optional

from tabulate import tabulate

from initaudit.analysis.profile import ProfileRow
from initaudit.analysis.streams import StreamSum
from initaudit.core.errors import InitauditError
from initaudit.core.numbers import short_number

BAR_WIDTH = 24


def _bar(value: Optional[float], low: float, high: float) -> str:
    """``#`` bars on a log10 scale between the smallest and largest value of the column."""
    if value is None or value <= 0 or not math.isfinite(value):
        return "(none)" if value is None else "(zero)"
    if high <= low:
        return "#" * BAR_WIDTH
    length = 1 + round((BAR_WIDTH - 1) * (math.log10(value) - low) / (high - low))
    return "#" * max(1, length)


# three digits; a missing or non-finite statistic leaves its cell empty
_num = functools.partial(short_number, digits=3)


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


def stream_table(sums: List[StreamSum]) -> str:
    """The residual sums in forward order: the stream's std as each sum reads it, the branch's,
    their ratio, and the stream's std after the sum, ``sqrt(S^2 + b^2)``, with a log-scale bar
    (the signal propagation of Brock et al. 2021, measured where the residual blocks end)."""
    after = [math.log10(s.total) for s in sums if s.total > 0 and math.isfinite(s.total)]
    # a decade at least: a stream that grows by 6% over the stack draws a bar that barely grows
    low, high = (min(after), max(max(after), min(after) + 1)) if after else (0.0, 0.0)
    table = [[str(i), s.branch, _num(s.stream), _num(s.added), _num(s.ratio), _num(s.total), _bar(s.total, low, high)]
             for i, s in enumerate(sums)]
    return tabulate(
        table,
        headers=["sum", "branch f(x)", "stream std", "branch std", "branch/stream", "after", "after (log scale)"],
        tablefmt="simple",
        disable_numparse=True,
    )


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend, or a clear error where it is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InitauditError(
            "--plot needs matplotlib, which is not installed: pip install 'initaudit[plot]'"
        ) from None
    return plt


def plot(rows: List[ProfileRow], path: str, title: str = "", sums: Optional[List[StreamSum]] = None) -> None:
    """Signal-propagation plot: output RMS, signal and gradient RMS per layer, log scale; the
    weight std against the recommended one; and, where the model has residual sums, the
    stream's std after each sum beside the branch's (Brock et al. 2021 plot it at the
    residual blocks' outputs)."""
    plt = _pyplot()
    depth = list(range(len(rows)))
    panels = 3 if sums else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 3 * panels))
    top, bottom = axes[0], axes[1]
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
    if sums:
        stream = axes[2]
        index = list(range(len(sums)))
        stream.semilogy(index, [s.total if s.total > 0 else float("nan") for s in sums], marker=".",
                        label="stream std after the sum")
        stream.semilogy(index, [s.added if s.added > 0 else float("nan") for s in sums], marker=".",
                        linestyle=":", label="branch std")
        stream.set_ylabel("std")
        stream.set_xlabel("residual sum (forward order)")
        stream.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_sweep(result: Any, path: str, title: str = "") -> None:
    """The coordinate check: per layer, its signal gain at init (and, with an optimizer, its
    output change over the first steps) against the swept value, log-log, one line per
    layer; a flagged layer is drawn solid, a flat one dotted."""
    plt = _pyplot()
    panels = [("signal gain at init", result.trends)] + (
        [("output change over the first steps", result.updates)] if result.updates else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (label, trends) in zip(axes[0], panels):
        for t in trends:
            values = [v if v is not None and v > 0 else float("nan") for v in t.gains]
            slope = "" if t.slope is None else f" ({t.slope:+.2f})"
            ax.loglog(result.values, values, marker=".", linestyle="-" if t.flagged else ":",
                      label=f"{t.name} {t.kind}{slope}")
        ax.set_xlabel(result.name)
        ax.set_ylabel(label)
        ax.set_title(title or f"initaudit width sweep: {label}")
        if len(trends) <= 12:
            ax.legend(loc="best", fontsize="x-small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
