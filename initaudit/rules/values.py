"""Rules on parameter values alone: zero, constant and non-finite tensors."""

from __future__ import annotations

from typing import Iterator

from ..advice import reinit_call
from ..graph import consumers
from ..registry import RuleContext, Violation, rule


def _elements(n: int) -> str:
    return f"{n:,} elements"


@rule(
    "IA101",
    "zero-weight",
    "error",
    "A weight of two or more dimensions is all zeros.",
)
def zero_weight(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    uses = None
    for t in rec.parameters:
        if not t.floating or t.ndim < 2 or t.nonfinite or t.zero_fraction != 1.0:
            continue
        uses = uses if uses is not None else consumers(rec)
        fix = reinit_call(t, uses)
        if t.module == rec.output_layer:
            yield Violation(
                t.name,
                f"weight of the output layer '{t.module}' ({t.module_type}) is all zeros: "
                "a zero-initialized head is a known good practice (the first step "
                "trains it from the features), reported for information",
                fix=None,
                severity="info",
                locations=t.names,
            )
            continue
        yield Violation(
            t.name,
            f"weight of '{t.module}' ({t.module_type}, shape {list(t.shape)}) is all zeros: "
            "its output no longer depends on its input, so every layer before it gets "
            "zero gradient; with ReLU and a zero bias it and everything below stay dead",
            fix=fix,
            locations=t.names,
        )


@rule(
    "IA102",
    "constant-weight",
    "error",
    "A weight of two or more dimensions has all elements equal and non-zero.",
)
def constant_weight(ctx: RuleContext) -> Iterator[Violation]:
    uses = None
    for t in ctx.recording.parameters:
        if not t.floating or t.ndim < 2 or t.numel < 2 or t.nonfinite:
            continue
        if t.min is None or t.min != t.max or t.min == 0:
            continue
        uses = uses if uses is not None else consumers(ctx.recording)
        yield Violation(
            t.name,
            f"every element of '{t.name}' ({t.module_type}, shape {list(t.shape)}) is "
            f"{t.min:g}: all units of the layer compute the same function, and while the layers "
            "above treat them alike they get the same gradient and never become different",
            fix=reinit_call(t, uses),
            locations=t.names,
        )


@rule(
    "IA103",
    "non-finite-parameter",
    "error",
    "A parameter or buffer holds NaN or Inf.",
)
def non_finite_parameter(ctx: RuleContext) -> Iterator[Violation]:
    uses = None
    for t in ctx.recording.tensors:
        if not t.floating or not t.nonfinite:
            continue
        uses = uses if uses is not None else consumers(ctx.recording)
        yield Violation(
            t.name,
            f"{t.kind} '{t.name}' ({t.module_type}) holds {t.nonfinite:,} NaN or Inf value(s) "
            f"out of {_elements(t.numel)}: they propagate into the outputs and gradients that touch it",
            fix=reinit_call(t, uses),
            locations=t.names,
        )
