"""Rules on recurrent layers: LSTM gate biases."""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

from ..graph import accessor
from ..records import TensorRecord
from ..registry import RuleContext, Violation, rule

FORGET = 1  # PyTorch orders LSTM gates i, f, g, o along dimension 0


@rule(
    "IA501",
    "forget-bias-unset",
    "warning",
    "An LSTM's forget-gate bias (bias_ih + bias_hh, slice [H:2H]) has mean below 0.5.",
    options={"forget-bias-min": 0.5},
)
def forget_bias_unset(ctx: RuleContext) -> Iterator[Violation]:
    minimum = float(ctx.options["forget-bias-min"])
    # (module, layer/direction suffix) -> {"ih": record, "hh": record}
    pairs: Dict[Tuple[str, str], Dict[str, TensorRecord]] = {}
    for t in ctx.recording.parameters:
        if t.module_type not in ("LSTM", "LSTMCell") or t.gate_means is None:
            continue
        for kind in ("ih", "hh"):
            prefix = f"bias_{kind}"
            if t.attr.startswith(prefix):
                pairs.setdefault((t.module, t.attr[len(prefix):]), {})[kind] = t
    for (module, suffix), biases in pairs.items():
        means = [b.gate_means[FORGET] for b in biases.values() if b.gate_means]
        effective = sum(means)
        if effective >= minimum:
            continue
        first = next(iter(biases.values()))
        hidden = first.shape[0] // 4
        sl = f"[{hidden}:{2 * hidden}]"
        parts = " + ".join(f"{b.attr}{sl}" for b in biases.values())
        layer = f" ({suffix.lstrip('_')})" if suffix else ""
        fix_lines = [f"{accessor(b.name)}{sl}.fill_({1.0 if kind == 'ih' else 0.0})" for kind, b in biases.items()]
        yield Violation(
            first.name,
            f"forget-gate bias of {first.module_type} '{module}'{layer} is {effective:.3g} on average "
            f"({parts}); recommended 1.0 so that the cell remembers by default at the start "
            "(Gers et al. 2000; Jozefowicz et al. 2015). No PyTorch parameter name contains "
            "'forget': set the slice of both biases",
            fix="with torch.no_grad(): " + "; ".join(fix_lines),
            locations=[b.name for b in biases.values()],
        )
