"""Rules on the loss at init: a classifier should start near ln C, any other model near the loss of a
zero output."""

from __future__ import annotations

import math
from typing import Any, Iterator

from initaudit.analysis.graph import accessor
from initaudit.rules.builtin.signal import head_weight
from initaudit.rules.registry import RuleContext, Violation, rule


@rule(
    "IA207",
    "initial-loss",
    # info, not warning: on the trainability benchmark's calibrate split, transformers and
    # Hugging Face models 10-46 nats above ln C at init trained (Adam shrinks an over-large head
    # in its first steps); the three above loss-severe failed (benchmarks/README.md). A leak is a
    # fact of the batch's labels, measured against chance: a warning
    "info",
    "A classifier's expected loss at init exceeds ln C by more than {loss-excess} (nats): its logits are "
    "over-confident at random; or, with the batch's labels, the loss already knows them (a leak), or "
    "imbalanced classes leave the output bias at zero; a model whose output is not logits: its loss at init "
    "exceeds {output-loss-ratio}x the loss of an all-zero output.",
    # output-loss-severe: on the calibrate split, of the 146 regression configurations (MSE, unit-variance
    # targets), every one above 418x the zero output's loss fails (32; all but one already warned by
    # another rule); the largest ratio among those that train is 348 (a 2-block ResNet-style MLP at
    # 2x He's std); between 100x and 348x, 4 fail and 5 train
    options={"loss-excess": 1.0, "loss-severe": 1000.0, "leak-margin": 0.5, "leak-sigmas": 5.0,
             "prior-gain": 0.1, "output-loss-ratio": 10.0, "output-loss-severe": 400.0},
    needs="forward",
    fix="safe",
)
def initial_loss(ctx: RuleContext) -> Iterator[Violation]:
    rec = ctx.recording
    classes, expected, spread = rec.classes, rec.expected_initial_loss, rec.logit_std
    if classes is None:
        yield from output_too_large(ctx)
        return
    if expected is None or spread is None:
        return
    head = head_weight(ctx)
    where = head.module if head is not None else "(model)"
    floor = math.log(classes)
    excess = expected - floor
    if not (math.isfinite(excess) and excess <= float(ctx.options["loss-excess"])):
        yield over_confident(ctx, classes, expected, spread, head)
    labelled = rec.labelled_loss
    if labelled is None or not (math.isfinite(labelled.loss) and math.isfinite(labelled.shuffled)):
        return
    # a leak is a model that already predicts its labels better than a uniform guess (ln C), and
    # better than chance pairing explains: a task whose label is a token of the input (a copy)
    # also lowers the labels' loss against shuffled ones at init, but not below ln C
    gap = labelled.shuffled - labelled.loss
    margin = float(ctx.options["leak-margin"])
    if labelled.loss < floor - margin and gap > max(margin, float(ctx.options["leak-sigmas"]) * labelled.noise):
        yield Violation(
            where,
            f"the batch's own labels score {labelled.loss:.4g} nats at init, while the same logits on the "
            f"labels shuffled across the {labelled.rows} rows would score {labelled.shuffled:.4g} "
            f"(+- {labelled.noise:.2g} by chance) and a uniform guess ln {classes} = {floor:.3g}: before any "
            "training the model already tells which label "
            "goes with which example, so the labels (or something computed from them) reach it through the "
            "input, a leak the model will learn instead of the task (Karpathy 2019, \"verify loss @ init\"); "
            "for a language model, check that the labels are shifted by one position (a model's own loss "
            "shifts them; a hand-written loss must, and the model must not see the token it predicts)",
            severity="warning",
            locations=[head.name] if head is not None else [],
        )
    # the plug-in entropy of ``rows`` labels is biased low by about (C - 1) / (2 rows) (Miller 1955):
    # a balanced batch looks that much imbalanced by chance
    gain = floor - labelled.prior_entropy - (classes - 1) / (2 * labelled.rows)
    threshold = float(ctx.options["prior-gain"])
    # a few labels per class say little of the class frequencies: ten each on average at least
    if labelled.rows >= 10 * classes and gain > threshold and labelled.loss - labelled.prior_entropy > threshold:
        bias = next((t for t in rec.parameters if head is not None and t.module == head.module
                     and t.attr == "bias"), None)
        yield Violation(
            where,
            f"the classes of this batch's labels are imbalanced: their entropy is {labelled.prior_entropy:.3g} "
            f"nats, against ln {classes} = {floor:.3g} for balanced ones, and the loss at init is "
            f"{labelled.loss:.4g}: an output bias set to the log of the class frequencies, log p, would start "
            f"it at about {labelled.prior_entropy:.3g} instead, so that the first steps are not spent "
            "learning the prior (Karpathy 2019, \"init well\")"
            + ("" if bias is not None else f"; '{head.module}' has no bias to set" if head is not None else "")
            + f" (frequencies from the {labelled.rows} labelled rows of this one batch: take them from the "
            "whole training set)",
            locations=[bias.name] if bias is not None else [],
        )


def output_too_large(ctx: RuleContext) -> Iterator[Violation]:
    """IA207's finding for an output that is not logits (a regression): the loss at init against
    ``loss(0)``, the loss of a model that outputs zeros (record.probe.zero_output_loss).

    For a squared error against targets ``y``, ``E[(f - y)^2] = E[y^2] + E[f^2] - 2 E[f y]``, and at init
    ``f`` is uncorrelated with ``y``: the ratio is ``1 + E[f^2] / E[y^2]``, so a ratio ``r`` is an output
    ``sqrt(r - 1)`` times the targets' RMS."""
    rec = ctx.recording
    start, zero = rec.loss, rec.zero_output_loss
    if start is None or zero is None or not (math.isfinite(zero) and zero > 0) or math.isnan(start):
        return
    ratio = start / zero
    if not ratio > float(ctx.options["output-loss-ratio"]):
        return
    severe = not math.isfinite(ratio) or ratio > float(ctx.options["output-loss-severe"])
    head = head_weight(ctx)
    where = head.module if head is not None else "(model)"
    scale = math.sqrt(ratio - 1) if math.isfinite(ratio) else math.inf
    fix = None
    scaled = [t for t in (head, next((t for t in rec.parameters if head is not None and t.module == head.module
                                      and t.attr == "bias"), None)) if t is not None]
    if scaled and math.isfinite(scale) and scale > 0:
        # the output is linear in the head's weight and bias: both times 1 / sqrt(r - 1) give an
        # output the targets' size, E[f^2] = E[y^2], and a loss at init of about twice the zero output's
        fix = "\n".join(f"{accessor(t.name)}.mul_({1 / scale:.4g})" for t in scaled)
    yield Violation(
        where,
        f"the loss at init is {start:.4g}, {ratio:.3g}x the loss of an output of all zeros ({zero:.4g}), which "
        "a model that has learnt nothing yet should about match: for a squared error the output starts about "
        f"{scale:.3g}x the size of the targets, uncorrelated with them, so the first steps are spent shrinking "
        "it rather than learning (Karpathy 2019, \"verify loss @ init\"); "
        + (f"scaling the output layer '{head.module}' down by {scale:.3g} gives an output the targets' size "
           "(or the layers below it, where their scale grows along the depth: IA201, IA203)"
           if head is not None else "scale the output down")
        + (f"; beyond {float(ctx.options['output-loss-severe']):g}x, every such configuration of the "
           "trainability benchmark's calibrate split failed" if severe else ""),
        fix=fix,
        severity="warning" if severe else None,
        locations=[t.name for t in scaled],
    )


def over_confident(ctx: RuleContext, classes: int, expected: float, spread: float, head: Any) -> Violation:
    """IA207's finding for logits that start far above ln C."""
    floor = math.log(classes)
    excess = expected - floor
    severe = not math.isfinite(excess) or excess > float(ctx.options["loss-severe"])
    where = head.module if head is not None else "(model)"
    fix = None
    if head is not None and math.isfinite(spread) and spread > 0:
        # logits are linear in the head's weight: dividing it by the logits' std brings that to
        # about 1, and the expected loss to about ln C + 1/2
        fix = f"{accessor(head.name)}.mul_({1 / spread:.4g})"
    return Violation(
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


@rule(
    "IA701",
    "first-step-loss",
    # a non-finite loss after the step is a fact: an error (on the trainability benchmark's
    # calibrate split, all 64 such runs failed). A rise is info, and a warning when the loss is
    # more than loss-growth times what it was: of the 1764 calibrate runs (run_steps.py), 91% of
    # those whose loss grew more than 10x in one step failed, 78% of those where it rose at all
    # (rules/IA701-first-step-loss.md)
    "info",
    "The first optimizer steps (--optimizer) make the loss on the example batch non-finite, or raise it "
    "(a warning when it grows more than {loss-growth}x).",
    options={"loss-rise": 0.0, "loss-growth": 10.0},
    needs="backward",
    fix="none",
    why_no_fix="the step's size is the optimizer's (its learning rate) as much as the init's",
)
def first_step_loss(ctx: RuleContext) -> Iterator[Violation]:
    losses = ctx.recording.step_losses
    if not losses or len(losses) < 2:
        return
    start, end = losses[0], losses[-1]
    steps = len(losses) - 1
    what = ctx.recording.step_optimizer or "the optimizer"
    trail = " -> ".join(f"{v:.4g}" for v in losses)
    if not math.isfinite(start):
        return  # the loss at init is already not finite: IA303's, not the step's
    if not all(math.isfinite(v) for v in losses[1:]):
        yield Violation(
            "(model)",
            f"{steps} step(s) of {what} on the example batch make the loss non-finite ({trail}): the first "
            "update is too large for this init (a learning rate far too high for it, or weights so large the "
            "update overflows)",
            severity="error",
        )
        return
    if not ctx.recording.step_own_loss:
        return  # the audit's random projection is unbounded below: a step always lowers it
    rise = end / start - 1 if start > 0 else (end - start)
    if rise > float(ctx.options["loss-rise"]):
        severe = start > 0 and end > float(ctx.options["loss-growth"]) * start
        yield Violation(
            "(model)",
            f"{steps} step(s) of {what} on the example batch raise the loss from {start:.4g} to {end:.4g} "
            f"({trail}), on the very batch they were taken on: the first updates overshoot (a learning "
            "rate too high for this init's gradient scale, or weights the step rewrites)"
            + ("; on the trainability benchmark, 9 in 10 runs whose loss grew more than 10x in one step "
               "did not train" if severe else ""),
            severity="warning" if severe else None,
        )


# the spacing of floating-point numbers near 1 (torch.finfo(dtype).eps): an update smaller than
# half of it, relative to the weight, is rounded away when added in that dtype
EPS = {"float64": 2.220446049250313e-16, "float32": 1.1920928955078125e-07, "float16": 0.0009765625,
       "bfloat16": 0.0078125}


@rule(
    "IA702",
    "update-size",
    # info: on the trainability benchmark's calibrate split (run_steps.py, 1764 runs of the six
    # optimizers it trains with), of the runs whose loss stayed finite after a first step that
    # moved a weight by more than its own size, 65% failed (85% above twice its size): too
    # many trained for a warning; the runs it blew up are IA701's errors. An update below the
    # dtype's spacing is a fact of the arithmetic that the float32 benchmark never meets
    "info",
    "With --optimizer, the first steps move a weight by more than {rewrite-ratio}x its own size, or by less "
    "than its dtype can represent.",
    options={"rewrite-ratio": 1.0},
    needs="backward",
    fix="none",
    why_no_fix="the update's size is the optimizer's learning rate as much as the init's scale",
)
def update_size(ctx: RuleContext) -> Iterator[Violation]:
    limit = float(ctx.options["rewrite-ratio"])
    weights = [t for t in ctx.recording.parameters if t.update_ratio is not None and t.attr == "weight"
               and len(t.shape) >= 2 and t.zero_fraction != 1.0]
    what = ctx.recording.step_optimizer or "the optimizer"
    large = [t for t in weights if t.update_ratio > limit]
    if large:
        worst = max(large, key=lambda t: t.update_ratio)
        yield Violation(
            worst.name,
            f"the first step(s) of {what} move {len(large)} weight(s) by more than {limit:g}x their own size "
            f"(||dW|| / ||W|| up to {worst.update_ratio:.3g} at '{worst.name}'): the update rewrites the init "
            "(CS231n's rule of thumb is about 1e-3 per step), so the init's scale no longer matters after it, "
            "and a learning rate this large for these weights usually diverges",
            locations=[t.name for t in large],
        )
    # a weight whose gradient is exactly zero does not move at any precision: IA301/IA302's finding
    small = [t for t in weights if t.update_ratio < EPS.get(t.dtype, 0.0) / 2
             and t.grad is not None and t.grad.norm > 0]
    if small:
        yield Violation(
            small[0].name,
            f"the first step(s) of {what} move {len(small)} weight(s) by less than half the spacing of their "
            f"dtype ({small[0].dtype}: ||dW|| / ||W|| = {small[0].update_ratio:.3g} at '{small[0].name}'): "
            "added to the weights, the update is rounded away and they do not move (a learning rate far too "
            "small for their scale, or low-precision weights without a float32 master copy)",
            locations=[t.name for t in small],
        )
