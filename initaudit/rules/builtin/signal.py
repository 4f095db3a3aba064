"""Rules on the measured forward signal: vanishing, exploding, dead, saturated, Jacobian gain."""

from __future__ import annotations

import math
from typing import Iterator, List, Optional, Tuple

from initaudit.analysis.graph import forward_calls, split_at_average_pools
from initaudit.analysis.homogeneous import logits_note, only_logits_grow
from initaudit.analysis.roles import inside_branch, main_path, moves_away
from initaudit.core import knowledge
from initaudit.core.records import OutputRecord, Recording, TensorRecord
from initaudit.rules.registry import RuleContext, Violation, rule


def layer_signal(recording: Recording, output_layer: Optional[str] = None) -> List[List[Tuple[str, float]]]:
    """``(name, per-feature std across the batch)`` of the calls that carry the model's signal,
    in forward order, in segments split at average pooling.

    The per-feature std is the input-dependent part of the output: a bias keeps the raw
    RMS up while the input is lost, and does not raise this. Average pooling averages the
    example's variation over a window by design (over random inputs, by the window's
    size), so the layers after it are compared with each other, not with those before.

    Where the autograd graph was read (``record.dataflow``), the signal is the stream: the
    outputs of residual sums (a block's ``x + f(x)``) and the layer calls whose output reaches
    the loss with no normalization and no residual sum in between; not the layers inside a
    residual branch, whose output is small by design (GPT-2, Fixup), nor those a
    normalization rescales next, nor the head, whose scale sets the logits (small, or zero, by
    design in many recipes), not the representation (Brock et al. 2021 measure signal
    propagation at the residual blocks' outputs).
    """
    streams = {i for i in recording.stream_calls if not inside_branch(recording, i)}  # not a sum inside a branch
    # a residual block's inner layers are its branch, whatever the graph says of their sums (a
    # stage's first block adds its branch to a projected shortcut): the block's output is the signal
    blocks = tuple(recording.call_order[i] + "." for i in streams if recording.call_order[i])
    carried = [
        call for call in forward_calls(recording)
        if call.index in streams
        or (call.module.kind == knowledge.LAYER and main_path(recording, call.index)
            and not call.name.startswith(blocks)
            and not (recording.call_reaches and call.name == output_layer))
    ]
    signal = (
        (call.index, (call.name, call.output.feature_std))
        for call in carried
        if call.output is not None and call.output.feature_std is not None and math.isfinite(call.output.feature_std)
    )
    return split_at_average_pools(recording, signal)


def _crossing(ctx: RuleContext, direction: str) -> Iterator[Violation]:
    for signal in layer_signal(ctx.recording, ctx.analysis.output_layer):
        found = _segment_crossing(ctx, signal, direction)
        if found is not None:
            yield found
            return


def _segment_crossing(ctx: RuleContext, signal: List[Tuple[str, float]], direction: str) -> Optional[Violation]:
    if len(signal) < 2 or signal[0][1] <= 0:
        return None
    first_name, first = signal[0]
    if direction == "vanishing":
        limit = 1 / float(ctx.options["signal-vanishing-ratio"])
        crossed = next((i for i, (_, s) in enumerate(signal) if s < first * limit), None)
    else:
        limit = float(ctx.options["signal-exploding-ratio"])
        crossed = next((i for i, (_, s) in enumerate(signal) if s > first * limit), None)
    if crossed is None:
        return None
    last_name, last = signal[-1]
    steps = len(signal) - 1
    factor = (last / first) ** (1 / steps) if last > 0 else 0.0
    name, value = signal[crossed]
    word = f"below 1/{1 / limit:g} of" if direction == "vanishing" else f"above {limit:g}x"
    cause = zero_weight_of(ctx.recording, name) if direction == "vanishing" else None
    passing = cause is not None and moves_away(ctx.recording, cause)
    # a stream that meets a normalization on every path to the loss (a pre-LN stack's final norm)
    # grows by the sum of its branches, and the norm rescales it: the size reaches no loss
    rescaled = direction == "exploding" and meets_norms(ctx.recording, name)
    # through ReLU-like layers to a classifier's logits, a growth is their size (analysis.homogeneous)
    logits = only_logits_grow(ctx.analysis, float(ctx.options["loss-severe"])) if direction == "exploding" else None
    # a fall between 1/signal-vanishing-ratio and 1/signal-vanishing-severe: what plain stacks at
    # PyTorch's default init lose over 6-8 layers, and they train (Adam's normalized steps)
    mild = direction == "vanishing" and min(s for _, s in signal) >= first / float(
        ctx.options["signal-vanishing-severe"])
    return Violation(
        name,
        f"the signal {direction[:-3]}es along the depth: the per-feature std across the batch of the "
        f"layer outputs goes from {first:.3g} at '{first_name}' to {value:.3g} at '{name}' "
        f"(layer call {crossed + 1} of {len(signal)}), {word} the first layer's, and ends at "
        f"{last:.3g} at '{last_name}'; "
        + (f"about {factor:.3g}x per layer. " if factor > 0 else "the input-dependent signal is lost entirely. ")
        + ("The output is losing its dependence on the input" if direction == "vanishing"
           else "Activations will overflow or saturate")
        + (_LASTS_ONE_STEP if passing else "")
        + (_RESCALED if rescaled else "")
        + (logits_note(logits, float(ctx.options["loss-severe"])) if logits is not None and not rescaled else "")
        + (f"; it stays above 1/{float(ctx.options['signal-vanishing-severe']):g} of the first layer's, a loss "
           "that plain stacks at PyTorch's default init take over 6-8 layers and still train" if mild else ""),
        fix=None,
        locations=[n for n, _ in signal[: crossed + 1]][-2:],
        severity="info" if passing or rescaled or mild or logits is not None else None,
        caused_by=f"IA101 {cause}" if cause else None,
    )


@rule(
    "IA202",
    "signal-vanishing",
    "warning",
    "The input-dependent part of the layer outputs falls below 1/{signal-vanishing-ratio} of the first layer's, "
    "or that of the output layer's input, for its size, below 1/{collapse-ratio} of the first layer's.",
    # 100, not 10: on the trainability benchmark's calibrate split, nets whose signal falls 10-100x
    # train (Adam's normalized steps): AUC 0.850 -> 0.856, precision 0.536 -> 0.554, recall unchanged.
    # signal-vanishing-severe: a fall beyond 1/1000 is a warning, one between 1/100 and 1/1000 info.
    # On the calibrate split with the benchmark's defaults range (plain MLPs and CNNs at PyTorch's
    # default init, whose signal falls 100-1000x over 6-8 layers and which train), with IA201's
    # compound-severe 1000: precision 0.714 -> 0.815, recall 0.904 unchanged
    # collapse-ratio: the representation the output layer reads varies with the input less than
    # 1/1000 as much, for its size, as the first layer's output. On the calibrate split the failing
    # configurations it newly catches (deep sigmoid and ReLU MLPs with LayerNorm) sit below 1e-6; of
    # those that train, all but two (already warned: their signal also vanishes) stay above 1e-3
    options={"signal-vanishing-ratio": 100.0, "signal-vanishing-severe": 1000.0, "collapse-ratio": 1000.0},
    needs="forward",
    fix="data",
    why_no_fix="repaired with data: LSUV rescales each layer, in forward order, until its output variance "
    "on the example batch is 1",
)
def signal_vanishing(ctx: RuleContext) -> Iterator[Violation]:
    found = list(_crossing(ctx, "vanishing"))
    yield from found
    # a mild fall (info) does not rule out that the examples have collapsed onto one vector
    if all(v.severity == "info" and not v.caused_by for v in found):
        yield from _collapse(ctx)


def input_dependence(output: OutputRecord) -> Optional[float]:
    """``feature_std / sqrt(std^2 + mean^2)``: the share of an output's size that varies from one
    example to the next. Near 0, every example gets nearly the same vector: for outputs
    ``h_b = c + e_b``, the mean cosine between two examples is about ``1 - (|e| / |c|)^2``."""
    size = math.sqrt(output.std ** 2 + output.mean ** 2)
    return output.feature_std / size if size > 0 and math.isfinite(size) else None


def _collapse(ctx: RuleContext) -> Iterator[Violation]:
    """The representation the output layer reads varies with the input less than
    1/collapse-ratio as much, relative to its size, as the first layer's output: the
    examples have collapsed onto one vector (the ordered phase of a deep net, Poole et al. 2016,
    Schoenholz et al. 2017), which a normalization between the layers hides from the size of
    the signal but not from its dependence on the input."""
    rec = ctx.recording
    head = head_weight(ctx)
    read = rec.module(head.input_from) if head is not None and head.input_from else None
    first = next((c for c in forward_calls(rec) if c.module.kind == knowledge.LAYER and c.module.leaf
                  and c.output is not None), None)
    if read is None or read.output is None or first is None or read.first_call is None:
        return
    at_head, at_first = input_dependence(read.output), input_dependence(first.output)
    limit = 1 / float(ctx.options["collapse-ratio"])
    if at_head is None or at_first is None or at_head >= at_first * limit:
        return
    cause = next((w for c in forward_calls(rec) if c.index <= read.first_call
                  for w in [zero_weight_of(rec, c.name)] if w is not None), None)
    passing = cause is not None and moves_away(rec, cause)
    yield Violation(
        read.name,
        f"the representation the output layer '{head.module}' reads, the output of '{read.name}', varies "
        f"from one example to the next by {at_head:.3g} of its size, against {at_first:.3g} at the first "
        f"layer '{first.name}' (below 1/{1 / limit:g} of it): every example reaches the output as nearly "
        "the same vector, so the output no longer depends on the input, whatever the size of the signal "
        "(deep nets in the ordered phase map all inputs together, Schoenholz et al. 2017)"
        + (_LASTS_ONE_STEP if passing else ""),
        fix=None,
        locations=[first.name, read.name],
        severity="info" if passing else None,
        caused_by=f"IA101 {cause}" if cause else None,
    )


@rule(
    "IA203",
    "signal-exploding",
    "warning",
    "The input-dependent part of the layer outputs rises above {signal-exploding-ratio}x the first layer's.",
    # loss-severe: IA207's line, shared (analysis.homogeneous; the calibration is IA201's)
    options={"signal-exploding-ratio": 10.0, "loss-severe": 1000.0},
    needs="forward",
    fix="data",
    why_no_fix="repaired with data: LSUV rescales each layer, in forward order, until its output variance "
    "on the example batch is 1",
)
def signal_exploding(ctx: RuleContext) -> Iterator[Violation]:
    yield from _crossing(ctx, "exploding")


def _activation_calls(recording: Recording, names: Tuple[str, ...]) -> Iterator[Tuple[str, Optional[str], OutputRecord]]:
    """``(activation name, the layer feeding it, output)`` for calls of the given nonlinearities."""
    previous_layer: Optional[str] = None
    for call in forward_calls(recording):
        if not call.module.leaf:
            continue
        if call.module.kind == knowledge.LAYER:
            previous_layer = call.name
        elif call.module.kind == knowledge.ACTIVATION and call.module.activation in names and call.output is not None:
            yield call.name, previous_layer, call.output


@rule(
    "IA204",
    "dead-units",
    "warning",
    "More than {dead-fraction:share} of a ReLU layer's units are zero for every example in the batch.",
    # a warning only where every unit of a layer is dead (it passes no gradient at all: what is
    # below it is cut off), info otherwise: on the trainability benchmark's calibrate split
    # (seventh session, with its defaults range) the finding was never the only warning on a
    # failing configuration, and the only one on one that trains; as info, precision 0.815 ->
    # 0.824, recall unchanged (as IA205, IA304 and IA305 in the third session)
    options={"dead-fraction": 0.5},
    needs="forward",
    fix="none",
    why_no_fix="dead units come from the weights and biases feeding them; fix those findings",
)
def dead_units(ctx: RuleContext) -> Iterator[Violation]:
    limit = float(ctx.options["dead-fraction"])
    rec = ctx.recording
    dead_layers: List[Tuple[str, str, float, str]] = []
    for name, layer, out in _activation_calls(rec, ("relu",)):
        layer_record = rec.module(layer) if layer else None
        convolutional = layer_record is not None and layer_record.type in knowledge.CONV_NAMES
        dead = out.dead_channel if convolutional and out.dead_channel is not None else out.dead_last
        where = layer or name
        if dead is None or dead <= limit or any(d[0] == where for d in dead_layers):
            continue
        dead_layers.append((where, name, dead, "channels" if convolutional else "units"))
    if not dead_layers:
        return
    # one finding for the model: a collapse usually kills units in many layers at once
    where, name, dead, unit = dead_layers[0]
    more = ""
    if len(dead_layers) > 1:
        listed = ", ".join(f"'{w}' {d:.0%}" for w, _, d, _ in dead_layers[1:9])
        more = f"; also after {len(dead_layers) - 1} more layer(s): {listed}" + (" and others" if len(dead_layers) > 9 else "")
    cause = zero_weight_of(rec, where)
    passing = cause is not None and moves_away(rec, cause)
    blocked = [w for w, _, d, _ in dead_layers if d >= 1.0]
    yield Violation(
        where,
        f"{dead:.0%} of the {unit} after '{where}' ({name}) are zero for every example in the "
        f"batch{more}. A dead ReLU passes no gradient, so those units never recover (a negative "
        "bias, or a weight scale far too small for the input)"
        + (f"; every unit after '{blocked[0]}' is dead: no gradient reaches the layers below it" if blocked
           else "; the units still alive carry the gradient")
        + (_LASTS_ONE_STEP if passing else ""),
        fix=None,
        locations=[w for w, _, _, _ in dead_layers],
        severity="info" if passing or not blocked else None,
        caused_by=f"IA101 {cause}" if cause else None,
    )


# said of a finding whose cause is a zero weight that moves at step 1 (IA101's information)
_LASTS_ONE_STEP = (": here only because the all-zero weight there outputs zero at init; it moves at step 1 and "
                   "nothing stays stuck after it (measured), so this lasts one step; reported for information")


_RESCALED = ("; but every path from there meets a normalization before the loss (a pre-LN stack's final "
             "norm), which rescales the stream, so its size reaches neither the output nor the gradients; "
             "reported for information")


def meets_norms(recording: Recording, module: str) -> bool:
    """Whether every path from ``module``'s (first) output meets a normalization before the loss."""
    record = recording.module(module)
    call = record.first_call if record is not None else None
    return call is not None and call < len(recording.call_ends) and recording.call_ends[call] == "norm"


def zero_weight_of(recording: Recording, module: str) -> Optional[str]:
    """The name of ``module``'s weight when it is all zeros (2+ dimensions, IA101's to judge):
    then a vanished signal or dead units right there are its consequence."""
    for t in recording.parameters:
        if t.module == module and t.attr == "weight" and t.ndim >= 2 and t.zero_fraction == 1.0:
            return t.name
    return None


@rule(
    "IA205",
    "saturated-units",
    # info, not warning: on the trainability benchmark's calibrate split, as a warning it fired on
    # 3 failing configurations and 5 that train, and was the only warning on none of the failing
    # ones and on 4 that train (residual tanh and sigmoid CNNs, whose stream bypasses the saturation)
    "info",
    "More than {saturated-fraction:share} of a tanh's outputs beyond |0.99|, or of a sigmoid's outside (0.01, 0.99).",
    options={"saturated-fraction": 0.5},
    needs="forward",
    fix="none",
    why_no_fix="saturation comes from the weight scale feeding it; fix that finding",
)
def saturated_units(ctx: RuleContext) -> Iterator[Violation]:
    limit = float(ctx.options["saturated-fraction"])
    reported = set()
    for name, layer, out in _activation_calls(ctx.recording, ("tanh", "sigmoid")):
        where = layer or name
        if out.saturated is None or out.saturated <= limit or where in reported:
            continue
        reported.add(where)
        module = ctx.recording.module(name)
        bound = "|y| > 0.99" if module is not None and module.activation == "tanh" else "y outside (0.01, 0.99)"
        yield Violation(
            where,
            f"{out.saturated:.0%} of the outputs of {name} after '{where}' are saturated ({bound}): "
            "there the derivative is nearly zero, so little gradient passes back through them "
            "(Glorot & Bengio 2010); the weight scale feeding it is too large",
            fix=None,
            locations=[where, name],
        )


@rule(
    "IA206",
    "jacobian-gain",
    # info, not warning: on the trainability benchmark's calibrate split it fired on a quarter
    # of the configurations that train and was the only warning on 3 failing ones in 73
    # (benchmarks/README.md, "Trainability")
    "info",
    "The input-output Jacobian's gain tr(J^T J) / min(m, n) is outside [{jacobian-min}, {jacobian-max}].",
    # above jacobian-severe, with no normalization right before the head, a warning: on the calibrate
    # split, of the configurations without another warning, the 6 above 1e3 with no norm before the
    # head all fail (below 1e3: 6 fail, 115 train); the 3 above it that train read their head from a
    # final norm (Hugging Face ViTs)
    # loss-severe: IA207's line, shared (analysis.homogeneous; the calibration is IA201's)
    options={"jacobian-min": 0.1, "jacobian-max": 10.0, "jacobian-severe": 1000.0, "loss-severe": 1000.0},
    needs="backward",
    fix="data",
    why_no_fix="repaired with data: LSUV rescales each layer, in forward order, until its output variance "
    "on the example batch is 1",
)
def jacobian_gain(ctx: RuleContext) -> Iterator[Violation]:
    gain = ctx.recording.jacobian_gain
    low, high = float(ctx.options["jacobian-min"]), float(ctx.options["jacobian-max"])
    if gain is None or not math.isfinite(gain) or low <= gain <= high:
        return
    side = "below" if gain < low else "above"
    head = head_weight(ctx)
    severe = gain > float(ctx.options["jacobian-severe"]) and not (head is not None and head.input_normalized)
    logits = only_logits_grow(ctx.analysis, float(ctx.options["loss-severe"])) if severe else None
    severe = severe and logits is None
    yield Violation(
        "(model)",
        f"the end-to-end Jacobian gain tr(J^T J) / min(inputs, outputs) is {gain:.3g}, {side} "
        f"[{low:g}, {high:g}]: a step on the input changes the output by about "
        f"{math.sqrt(gain):.3g}x its size on average, so gradients reaching the first layers are "
        "scaled alike; trainability tracks this staying near 1 (dynamical isometry, "
        "Pennington et al. 2017)"
        + (f"; above {float(ctx.options['jacobian-severe']):g}, with no normalization before the output layer, "
           "the first steps' updates are that much too large for a learning rate that suits the loss"
           if severe else "")
        + (logits_note(logits, float(ctx.options["loss-severe"])) if logits is not None else ""),
        fix=None,
        severity="warning" if severe else None,
    )


def head_weight(ctx: RuleContext) -> Optional[TensorRecord]:
    """The weight of the model's output layer, where one is known."""
    head = ctx.analysis.output_layer
    return next((t for t in ctx.recording.parameters if head and t.module == head and t.attr == "weight"), None)
