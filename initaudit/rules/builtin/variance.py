"""IA201: the weight's scale does not fit the nonlinearity that consumes the layer."""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Optional, Tuple

from initaudit.analysis import gains
from initaudit.analysis.fingerprint import Fingerprint
from initaudit.analysis.graph import LayerUse, accessor
from initaudit.analysis.homogeneous import logits_note, only_logits_grow
from initaudit.analysis.scales import Scale, recommended_std
from initaudit.analysis.streams import StreamSum, skip_share
from initaudit.core.records import TensorRecord
from initaudit.rules.builtin.signal import layer_signal
from initaudit.rules.registry import RuleContext, Violation, rule


def frozen(t: TensorRecord) -> bool:
    """A parameter that takes no gradient (an effective weight counts as its originals do)."""
    return t.kind == "parameter" and not t.requires_grad


def _fix(scales: List[Scale]) -> Optional[str]:
    """One line (a loop when several layers share the call) per distinct init call. A raw
    parameter in a product (a stand-in module named by the parameter itself, LoRA's A and B
    written as ``nn.Parameter``) is re-drawn itself, with the fan the product sums over."""
    by_call: Dict[str, List[str]] = {}
    for s in scales:
        if s.off_by <= 1.1:
            continue
        target = s.use.weight.name  # a layer's weight, or the raw parameter itself
        shape = s.use.weight.shape
        if len(shape) == 2 and shape[0] == shape[1] and s.fan == s.use.weight.fan_in:
            # a square matrix drawn orthogonal with the recommended gain has the same scale as the
            # normal draw and all its singular values equal: the pre-init of LSUV (Mishkin & Matas
            # 2016), which keeps a deep stack better conditioned (Saxe et al. 2014)
            call = gains.orthogonal_call("model.get_parameter(name)", gains.gain_range(s.use.activation)[1])
        else:
            call = gains.init_call(s.use.activation, "model.get_parameter(name)", s.fan, s.use.weight.fan_in)
        names = by_call.setdefault(call, [])
        if target not in names:
            names.append(target)
    if not by_call:
        return None
    lines = []
    for call, names in by_call.items():
        if len(names) == 1:
            lines.append(call.replace("model.get_parameter(name)", accessor(names[0])))
        elif "math.sqrt(" in call:  # the fan differs per layer: one call each
            for name in names:
                s = next(x for x in scales if x.use.weight.name == name)
                lines.append(gains.init_call(s.use.activation, accessor(name), s.fan, s.use.weight.fan_in))
        elif call.count("model.get_parameter(name)") > 1:
            lines.append(f"for name in {names!r}:\n    w = model.get_parameter(name)\n    "
                         + call.replace("model.get_parameter(name)", "w"))
        else:
            lines.append(f"for name in {names!r}: {call}")
    return "\n".join(lines)


def _signal(run: List[LayerUse]) -> Optional[float]:
    """Ratio of the per-feature std across the batch, last layer's output over first's."""
    first = run[0].output
    last = run[-1].output
    if first is None or last is None or not first.feature_std or last.feature_std is None:
        return None
    if not (math.isfinite(first.feature_std) and math.isfinite(last.feature_std)):
        return None
    return last.feature_std / first.feature_std


@rule(
    "IA201",
    "variance-mismatch",
    "warning",
    "A weight's std does not fit the nonlinearity that consumes the layer's output.",
    options={
        "variance-tolerance": 2.0,  # one layer off by more than this: mismatched
        "compound-tolerance": 10.0,  # the run's product of r beyond this: mismatched
        # one layer off by more than this: warning. 30, not 10: on the trainability benchmark's
        # calibrate split, 10 warned on single layers 10-30x off that train (Adam rescues them):
        # AUC 0.822 -> 0.845, precision 0.459 -> 0.500, recall unchanged (benchmarks/README.md)
        "severe-factor": 30.0,
        "signal-tolerance": 10.0,  # measured signal change confirming the product
        # a run too small is a warning only when the signal it shrinks falls beyond this: its
        # product and measured change both, or the signal along the depth. 1000, not 10: PyTorch's
        # default init shrinks a ReLU layer's std to 1/sqrt(6) of He's, and on the trainability
        # benchmark's calibrate split (with its defaults range: plain MLPs and CNNs at that init)
        # stacks down to products of 1e-3 train (MLPs of 3-8 layers, CNNs up to 12); those that
        # fail sit below 1e-6 (16 layers). With IA202's signal-vanishing-severe 1000: precision
        # 0.714 -> 0.815, recall 0.904 unchanged, AUC 0.919 -> 0.928 (benchmarks/README.md)
        "compound-severe": 1000.0,
        # a run too large in a classifier whose layers all feed ReLU-like nonlinearities only scales
        # its logits: a warning only where their expected loss at init is beyond IA207's own line
        # (the same option). On the calibrate split's gains range (plain CNNs at 1.5-4x He's std),
        # the 4-8-layer CNNs that train have logits of std 14-420 (excess 18-520 nats), the 12-layer
        # ones that fail 2,500 and more; with IA203 and IA206 alike: precision 0.825 -> 0.853,
        # recall 0.904 -> 0.894 (a 4-layer GELU CNN at 4x He, 0.58 of the baseline, is missed)
        "loss-severe": 1000.0,
    },
    needs="forward",
    fix="safe",
)
def variance_mismatch(ctx: RuleContext) -> Iterator[Violation]:
    tol = float(ctx.options["variance-tolerance"])
    compound_tol = float(ctx.options["compound-tolerance"])
    severe = float(ctx.options["severe-factor"])
    signal_tol = float(ctx.options["signal-tolerance"])
    compound_severe = float(ctx.options["compound-severe"])
    signal_along_depth = None  # IA202's measure, read once, for the first run too small
    loss_severe = float(ctx.options["loss-severe"])
    logits_only = only_logits_grow(ctx.analysis, loss_severe)
    for run in ctx.analysis.runs:
        # a frozen weight (a pretrained base under adapters) is not the user's to re-initialize
        scales = [s for s in (recommended_std(u) for u in run) if s is not None and not frozen(s.use.weight)]
        # a small head is a recipe (small logits at init; a zero head trains from the features);
        # a layer that is also applied before, as a hidden layer, is judged on every call
        head = [s for s in scales if s.use.module.name == ctx.analysis.output_layer]
        if len(head) == 1 and head[0].ratio < 1:
            scales = [s for s in scales if s is not head[0]]
        if not scales:
            continue
        log_product = sum(math.log(s.ratio) for s in scales if s.ratio > 0)
        product = math.exp(max(min(log_product, 700), -700))
        # the first of the layers that are (within 5%) the furthest off, as the example
        largest = max(s.off_by for s in scales)
        worst = next(s for s in scales if s.off_by >= 0.95 * largest)
        compounded = product > compound_tol or product < 1 / compound_tol
        if worst.off_by <= tol and not compounded:
            continue
        signal = _signal(run) if len(run) > 1 else None
        confirmed = signal is not None and (
            (product < 1 and signal < 1 / signal_tol) or (product > 1 and signal > signal_tol)
        )
        reaches = {end for s in scales for end in (s.use.weight.reaches or "unknown").split("+")}
        # every path reaches a norm, directly or through a residual branch summed before it (post-LN)
        normalized = run[-1].normalized or ("a normalization" if "norm" in reaches and reaches <= {"norm", "branch"}
                                                  else None)
        # inside a residual branch the stream carries the signal: a small branch is the recipe
        # (GPT-2's 0.02, Fixup, T-Fixup, DeepNet, layer scale); only a branch that outgrows the
        # stream compounds over the blocks
        branch = reaches == {"branch"}
        # a branch that reads a normalized stream (pre-LN) is bounded by its input's unit scale:
        # however large, it adds to the stream, it does not multiply it block after block, and
        # where that stream meets a norm before the loss (a final norm) its size reaches nothing
        bounded = branch and run[0].weight.input_normalized and run[-1].weight.stream_reaches == "norm"
        # measured where the graph and the recorded outputs allow: the branch's std over the
        # stream's at the sum it joins, and whether the stream's growth compounds over the stack
        measured = _measured_sum(ctx.analysis.stream_sums, run) if branch else None
        dominates = measured is None or _dominates(measured, ctx.analysis.stream_sums)
        # a run too large compounds to a warning as soon as it is confirmed; one too small only when
        # the signal it shrinks falls beyond compound-severe, over the run or along the depth (its
        # consequence, IA202's measure): what plain stacks at PyTorch's default init lose, 100-1000x
        # over 4-6 layers, they survive (Adam's normalized steps)
        fall = None
        if product < 1:
            if signal_along_depth is None:
                signal_along_depth = layer_signal(ctx.recording, ctx.analysis.output_layer)
            fall = _depth_fall(signal_along_depth, run)
        far = product > 1 or (signal is not None and product < 1 / compound_severe and signal < 1 / compound_severe) \
            or (fall is not None and fall < 1 / compound_severe)
        severe_run = (not normalized and not (branch and product < 1) and not bounded and dominates
                      and (worst.off_by > severe or (compounded and confirmed and far)))
        # too large, where the only consequence is the logits' size, and that is within bounds
        scales_logits = logits_only is not None and (product > 1 or worst.ratio > 1)
        severity = "warning" if severe_run and not scales_logits else "info"
        init = ctx.analysis.fingerprint(worst.use.weight)
        survived = compounded and confirmed and not far and severity == "info" and not (
            normalized or branch or bounded)
        found = _violation(scales, worst, product, signal, normalized, severity, init, branch,
                           ctx.recording.declared_init_std, bounded, compound_severe if survived else None)
        if measured is not None:
            found.message += _stream_note(measured, ctx.analysis.stream_sums, dominates)
        if severe_run and scales_logits:
            found.message += logits_note(logits_only, loss_severe)
        yield found


def _measured_sum(sums: List[StreamSum], run: List[LayerUse]) -> Optional[StreamSum]:
    """The residual sum whose branch is the output of the run's last layer call (``None``: not
    measured: a scale or an unrecorded op between them, or no such sum). A raw parameter standing
    in for its layer (GPT-2's ``Conv1D`` weight) is matched to the module that holds it."""
    name = run[-1].module.name
    return next((s for s in sums if s.branch == name or name.rpartition(".")[0] == s.branch
                 and name == run[-1].weight.name), None)


def _dominates(at: StreamSum, sums: List[StreamSum]) -> bool:
    """Whether the branch of ``at`` dominates its stream (``b / S > 1``: the stream more than
    sqrt(2) times larger after the sum) and the stream's growth compounds: over all the
    residual sums the identity paths' share, ``prod 1 / sqrt(1 + r_k^2)``, falls below
    ``2^(-n/2)``, sqrt(2) per sum. Where an earlier branch already dominated, the stream this one
    reads was grown by it: bring that one down and this one dominates in its place, so it is
    judged by its weights, as an unmeasured branch is (a fix of the first alone would leave it)."""
    if _grown_by(at, sums) is not None:
        return True
    return at.ratio > 1 and skip_share(sums) < 2 ** (-len(sums) / 2)


def _grown_by(at: StreamSum, sums: List[StreamSum]) -> Optional[StreamSum]:
    """The first sum before ``at`` whose branch dominated its stream (``None``: none did)."""
    before = next(i for i, s in enumerate(sums) if s is at)
    return next((s for s in sums[:before] if s.ratio > 1), None)


def _stream_note(at: StreamSum, sums: List[StreamSum], dominates: bool) -> str:
    r = at.ratio
    if math.isinf(r):
        note = (f"; measured at the residual sum it joins, the stream is zero there, and its output (std "
                f"{at.added:.3g}) is all the sum carries")
    else:
        note = (f"; measured at the residual sum it joins, its output's std is {r:.3g}x the stream's "
                f"({at.added:.3g} over {at.stream:.3g}), so the stream grows {_growth(r)} there")
    root = _grown_by(at, sums)
    if root is not None:
        grew = "from zero" if root.stream == 0 else f"{root.total / root.stream:.3g}x"
        return note + (f", a stream that the earlier branch '{root.branch}' grew {grew}: "
                       "with that one brought down, this one would dominate in its place")
    if r <= 1:
        return note + ", no more than sqrt(2): the stream still carries the signal"
    if not dominates:
        growth = 1 / skip_share(sums)
        return note + (f", but over the model's {len(sums)} residual sums the identity paths keep "
                       f"1/{growth:.3g} of the output, no less than 1/sqrt(2) per sum: it does not compound")
    return note


def _growth(ratio: float) -> str:
    """How much a stream grows where a branch ``ratio`` times its std is added: ``sqrt(1 + r^2)``,
    as a percentage where that is under 10% (a small branch's 0.4% would read "1x")."""
    growth = math.sqrt(1 + ratio * ratio)
    return f"by {100 * (growth - 1):.2g}%" if growth < 1.1 else f"{growth:.3g}x"


def _depth_fall(signal: List[List[Tuple[str, float]]], run: List[LayerUse]) -> Optional[float]:
    """The smallest ratio of the signal along the depth (``signal``: IA202's per-feature std of
    the layer outputs that carry it, in segments) to its value at the start of its segment, over
    the segments that hold a layer of ``run``; ``None`` where none does."""
    names = {u.module.name for u in run}
    falls = [min(s for _, s in segment) / segment[0][1]
             for segment in signal
             if len(segment) > 1 and segment[0][1] > 0 and names & {n for n, _ in segment}]
    return min(falls) if falls else None


def _violation(
    scales: List[Scale],
    worst: Scale,
    product: float,
    signal: Optional[float],
    normalized: Optional[str],
    severity: str,
    init: Optional[Fingerprint],
    branch: bool = False,
    own_init: Optional[float] = None,
    bounded: bool = False,
    survived: Optional[float] = None,
) -> Violation:
    names: List[str] = []
    for s in scales:
        if s.use.module.name not in names:
            names.append(s.use.module.name)
    w = worst.use
    span = f"'{names[0]}'" if len(scales) == 1 else f"a run of {len(scales)} layer calls ('{names[0]}' to '{names[-1]}')"
    direction = "small" if worst.ratio < 1 else "large"
    message = (
        f"weight scale does not fit the consuming nonlinearity in {span}: "
        f"'{w.module.name}' feeds {w.activation.describe()} with weight std {worst.measured:.3g}, "
        f"recommended {worst.recommended()} ({gains.init_name(w.activation)}, {worst.mode}={worst.fan}), "
        f"{worst.off_by:.2g}x too {direction}"
        + (f" (it looks like {init.torch_call})" if init is not None else "")
        + (f"; this is the model's own `_init_weights` (N(0, initializer_range={own_init:g}))"
           if own_init is not None and abs(worst.measured - own_init) <= 0.15 * own_init else "")
    )
    if len(scales) > 1:
        message += f"; compounded over the run: {product:.2g}x"
        if signal is not None:
            message += (
                f"; measured signal (per-feature std across the batch) changes {signal:.2g}x "
                f"from '{names[0]}' to '{names[-1]}'"
            )
    if survived is not None:
        message += (f"; the signal stays above 1/{survived:g} of its size along the run and the depth, a loss "
                    "that plain stacks at PyTorch's default init take over 4-8 layers and still train")
    if normalized:
        where = f"'{normalized}', a normalization" if normalized != "a normalization" else normalized
        message += f"; the run feeds {where}, so the forward signal does not depend on this scale"
    if branch:
        message += ("; the run is a residual branch (its output is added to a stream that carries the signal), "
                    + ("and a small branch is the recipe (GPT-2, Fixup, T-Fixup, layer scale)" if product < 1
                       else "which its weights' scale would outgrow, but it reads a normalized stream (pre-LN), so it adds a bounded "
                       "term to the stream instead of multiplying it block after block, and the stream meets a "
                       "normalization before the loss" if bounded
                       else "which its weights' scale would outgrow"))
    return Violation(
        location=names[0],
        message=message,
        fix=_fix(scales),
        severity=severity,
        locations=list(dict.fromkeys(s.use.weight.name for s in scales)),
    )
