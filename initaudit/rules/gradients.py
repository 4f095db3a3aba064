"""Rules on the first training step's gradients."""

from __future__ import annotations

from typing import Iterator

from ..registry import RuleContext, Violation, rule


@rule(
    "IA301",
    "no-gradient",
    "error",
    "A trainable parameter received no gradient in the first backward.",
)
def no_gradient(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    called = set(rec.call_order)
    for t in rec.parameters:
        if t.grad_status != "none":
            continue
        if t.module not in called and t.module != "":
            why = f"its module '{t.module}' ({t.module_type}) is never called by the forward"
        else:
            why = "the loss does not depend on it (its path is detached, or its output is unused)"
        yield Violation(
            t.name,
            f"trainable parameter '{t.name}' got no gradient in the first backward: {why}; "
            "the optimizer will never update it",
            fix=None,
            locations=t.names,
        )


@rule(
    "IA303",
    "non-finite-gradient",
    "error",
    "A first-step gradient holds NaN or Inf.",
)
def non_finite_gradient(ctx: RuleContext) -> Iterator[Violation]:
    for t in ctx.recording.parameters:
        if t.grad is None or not t.grad.nonfinite:
            continue
        yield Violation(
            t.name,
            f"first-step gradient of '{t.name}' holds {t.grad.nonfinite:,} NaN or Inf value(s) "
            f"out of {t.numel:,}: the first optimizer step would write them into the weights",
            fix=None,
            locations=t.names,
        )
