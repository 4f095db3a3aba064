"""Rules on the loss at init: a classifier should start near ln C."""

from __future__ import annotations

import math
from typing import Iterator

from initaudit.analysis.graph import accessor
from initaudit.rules.builtin.signal import head_weight
from initaudit.rules.registry import RuleContext, Violation, rule


@rule(
    "IA207",
    "initial-loss",
    # info, not warning: on the trainability benchmark's calibrate split, transformers and
    # Hugging Face models 10-46 nats above ln C at init trained (Adam shrinks an over-large head
    # in its first steps); the three above loss-severe failed (benchmarks/README.md)
    "info",
    "A classifier's expected loss at init exceeds ln C by more than {loss-excess} (nats): its logits are "
    "over-confident at random.",
    options={"loss-excess": 1.0, "loss-severe": 1000.0},
    needs="forward",
    fix="safe",
)
def initial_loss(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    classes, expected, spread = rec.classes, rec.expected_initial_loss, rec.logit_std
    if classes is None or expected is None or spread is None:
        return
    floor = math.log(classes)
    excess = expected - floor
    if math.isfinite(excess) and excess <= float(ctx.options["loss-excess"]):
        return
    severe = not math.isfinite(excess) or excess > float(ctx.options["loss-severe"])
    head = head_weight(ctx)
    where = head.module if head is not None else "(model)"
    fix = None
    if head is not None and math.isfinite(spread) and spread > 0:
        # logits are linear in the head's weight: dividing it by the logits' std brings that to
        # about 1, and the expected loss to about ln C + 1/2
        fix = f"{accessor(head.name)}.mul_({1 / spread:.4g})"
    yield Violation(
        where,
        f"the expected cross-entropy at init, for a label drawn at random, is {expected:.4g} nats, "
        f"{excess:.3g} above ln {classes} = {floor:.3g}, the loss of a classifier that has learnt nothing "
        f"yet: the logits' std across the classes is {spread:.3g}, so the model is confidently wrong "
        "about most examples before the first step (Karpathy 2019, \"verify loss @ init\"); "
        + (f"scaling the output layer '{head.module}' down by {spread:.3g} gives logits of std about 1"
           if head is not None else "scale the output layer down, or zero it")
        + ("; this far above, the softmax is one-hot and its gradient all but vanishes" if severe else ""),
        fix=fix,
        severity="warning" if severe else None,
        locations=[head.name] if head is not None else [],
    )

