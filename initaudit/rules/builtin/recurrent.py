"""Rules on recurrent layers: LSTM gate biases, recurrent weight spectra."""

from __future__ import annotations

from typing import Dict, Iterator, Tuple

from initaudit.analysis.gains import orthogonal_call
from initaudit.analysis.graph import accessor
from initaudit.core import knowledge
from initaudit.core.records import TensorRecord
from initaudit.rules.registry import RuleContext, Violation, rule


@rule(
    "IA501",
    "forget-bias-unset",
    # info, not warning: on the trainability benchmark's calibrate split every LSTM with a forget
    # bias below 0.5 trains (7 of 7: PyTorch's default, zero, the 'forget' in name recipe); the
    # recommendation is about how fast long-range memory is learnt, which no label there measures
    "info",
    "An LSTM's forget-gate bias (bias_ih + bias_hh, slice [H:2H]) has mean below {forget-bias-min}.",
    options={"forget-bias-min": 0.5},
    fix="safe",
)
def forget_bias_unset(ctx: RuleContext) -> Iterator[Violation]:
    minimum = float(ctx.options["forget-bias-min"])
    # (module, layer/direction suffix) -> {"ih": record, "hh": record}
    pairs: Dict[Tuple[str, str], Dict[str, TensorRecord]] = {}
    for t in ctx.recording.parameters:
        if knowledge.forget_gate(t.module_type) is None or t.gate_means is None:
            continue
        for kind in ("ih", "hh"):
            prefix = f"bias_{kind}"
            if t.attr.startswith(prefix):
                pairs.setdefault((t.module, t.attr[len(prefix):]), {})[kind] = t
    for (module, suffix), biases in pairs.items():
        first = next(iter(biases.values()))
        forget = knowledge.forget_gate(first.module_type)
        means = [b.gate_means[forget] for b in biases.values() if b.gate_means]
        effective = sum(means)
        if effective >= minimum:
            continue
        hidden = first.shape[0] // knowledge.gate_count(first.module_type)
        sl = f"[{forget * hidden}:{(forget + 1) * hidden}]"
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




@rule(
    "IA502",
    "recurrent-not-orthogonal",
    "info",
    "A recurrent weight_hh gate block is far from orthogonal (singular values spread).",
    options={"orthogonal-spread": 2.0},
    fix="safe",
)
def recurrent_not_orthogonal(ctx: RuleContext) -> Iterator[Violation]:
    limit = float(ctx.options["orthogonal-spread"])
    for t in ctx.recording.parameters:
        values = t.gate_singular_values
        if not values:
            continue
        gates = knowledge.gate_names(t.module_type) or "?" * (len(values) // 2)
        spreads = []
        for i in range(0, len(values), 2):
            low, high = values[i], values[i + 1]
            spread = high / low if low > 0 else float("inf")
            spreads.append((gates[i // 2] if i // 2 < len(gates) else str(i // 2), low, high, spread))
        worst = max(spreads, key=lambda s: s[3])
        if worst[3] <= limit:
            continue
        detail = ", ".join(f"{g}: {lo:.2g}..{hi:.2g}" for g, lo, hi, _ in spreads)
        rows = t.shape[0] // max(len(spreads), 1)
        yield Violation(
            t.name,
            f"gate blocks of '{t.name}' are far from orthogonal: singular values {detail} "
            f"(spread up to {worst[3]:.3g}x; an orthogonal block has all of them equal). Orthogonal "
            "recurrent weights keep the state's norm through time (Saxe et al. 2014)",
            fix="with torch.no_grad():\n"
            + "\n".join(
                f"    {orthogonal_call(accessor(t.name) + f'[{i * rows}:{(i + 1) * rows}]')}"
                for i in range(len(spreads))
            ),
            locations=t.names,
        )


@rule(
    "IA503",
    "recurrent-spectral-radius",
    "warning",
    "A vanilla RNN's recurrent matrix has spectral radius above {spectral-radius-max}, "
    "or below {spectral-radius-min} with tanh.",
    options={"spectral-radius-max": 1.2, "spectral-radius-min": 0.5},
    fix="safe",
)
def recurrent_spectral_radius(ctx: RuleContext) -> Iterator[Violation]:
    high = float(ctx.options["spectral-radius-max"])
    low = float(ctx.options["spectral-radius-min"])
    for t in ctx.recording.parameters:
        rho = t.spectral_radius
        if rho is None:
            continue
        module = ctx.recording.module(t.module)
        nonlinearity = module.activation if module is not None else None
        if rho > high:
            what = (f"above {high:g}: the hidden state grows about {rho:.3g}x per step, so states "
                    "and gradients explode over long sequences")
        elif rho < low and nonlinearity == "tanh":
            what = (f"below {low:g} with tanh: the state shrinks about {rho:.3g}x per step, so the "
                    "network forgets within a few steps (vanishing memory)")
        else:
            continue
        yield Violation(
            t.name,
            f"spectral radius of '{t.name}' ({t.module_type}) is {rho:.3g}, {what}",
            fix=f"with torch.no_grad(): {orthogonal_call(accessor(t.name))}",
            locations=t.names,
        )
