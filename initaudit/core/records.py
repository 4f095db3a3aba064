"""What the inspector records and the rules read: plain data, no tensors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

from initaudit.core.numbers import finite_or_none


@dataclass
class GradientRecord:
    """First-step gradient of one parameter."""

    norm: float
    std: float
    nonfinite: int


@dataclass
class TensorRecord:
    """One parameter or floating-point buffer, under every name it is reachable by."""

    names: List[str]
    kind: str  # "parameter", "buffer", or "effective" (a parametrization's computed tensor)
    module: str  # owner module of names[0] ("" for the root)
    module_type: str
    attr: str
    shape: Tuple[int, ...]
    dtype: str
    device: str
    requires_grad: bool
    floating: bool
    numel: int
    mean: Optional[float] = None
    std: Optional[float] = None
    min: Optional[float] = None
    max: Optional[float] = None
    zero_fraction: Optional[float] = None
    nonfinite: int = 0
    subnormal: int = 0  # elements with 0 < |x| < finfo.tiny
    fan_in: Optional[int] = None
    fan_out: Optional[int] = None
    # the fan that sets the forward signal's scale; differs from fan_in for transposed convs
    layer_fan_in: Optional[int] = None
    # "ok", "none" (trainable but no gradient), "frozen", "not-floating", "buffer",
    # "not-run" (no backward was made)
    grad_status: str = "buffer"
    grad: Optional[GradientRecord] = None
    # per-gate means along dim 0 for recurrent weights and biases (i, f, g, o for LSTM)
    gate_means: Optional[List[float]] = None
    # recurrent weight_hh: [min, max] singular value of each gate block; vanilla RNN radius
    gate_singular_values: Optional[List[float]] = None
    spectral_radius: Optional[float] = None
    # shape of the distribution, for the init fingerprint (weights of 2+ dims)
    kurtosis: Optional[float] = None
    ortho_offdiag: Optional[float] = None
    ortho_spread: Optional[float] = None
    # how the forward uses it, from the autograd graph (record.dataflow; None: not reached)
    role: Optional[str] = None  # mixing, lookup, scale, offset, token, norm, recurrent, other
    consumer_op: Optional[str] = None  # the autograd node that consumes it, e.g. "AddmmBackward0"
    feeds: Optional[str] = None  # what that op's output reaches first: a nonlinearity, norm, add, ...
    branch: Optional[str] = None  # "residual" or "lora": that output is added to a stream
    next_weights: List[str] = field(default_factory=list)  # weights of the nearest products downstream
    reaches: Optional[str] = None  # where that output ends up: "branch", "norm", "output", joined by "+"
    # the weights of the nearest products on every path from that output to the loss (None: a
    # path reaches the loss without one): if all are zero, its first-step gradient is zero
    gradient_weights: Optional[List[str]] = None
    input_normalized: bool = False  # a product's activation operand is a normalization's output (pre-LN)
    stream_reaches: Optional[str] = None  # a residual branch's: where the stream it joins ends up, as reaches
    input_from: Optional[str] = None  # a product's weight: the module whose output the product reads
    # the batch normalization op its product's output goes straight into (record.dataflow): an
    # offset added there is removed again with each channel's batch mean
    normalized_by: Optional[str] = None
    # a look past the first step (record.lookahead), made only where the first one leaves it open:
    # for a first-step gradient that is exactly zero, the first later step whose gradient is not
    # (0: none within the look-ahead: stuck); for a weight with all elements equal, max |G - G[0]| / max |G|
    # over its gradient's rows (0: its units get the same gradient and stay alike)
    # with an optimizer (record.step): ||W after the first steps - W|| / ||W||
    update_ratio: Optional[float] = None
    moves_at_step: Optional[int] = None
    grad_row_spread: Optional[float] = None
    clones: List[str] = field(default_factory=list)  # distinct parameters with identical values
    aliases: List[str] = field(default_factory=list)  # distinct parameters sharing its memory
    notes: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        for key in ("mean", "std", "min", "max", "zero_fraction", "update_ratio"):
            d[key] = finite_or_none(d[key])
        if self.grad is not None:
            d["grad"] = {
                "norm": finite_or_none(self.grad.norm),
                "std": finite_or_none(self.grad.std),
                "nonfinite": self.grad.nonfinite,
            }
        for key in ("gate_means", "gate_singular_values"):
            if d[key] is not None:
                d[key] = [finite_or_none(v) for v in d[key]]
        for key in ("spectral_radius", "kurtosis", "ortho_offdiag", "ortho_spread", "grad_row_spread"):
            d[key] = finite_or_none(d[key])
        return d


@dataclass
class OutputRecord:
    """Statistics of a module's output on its first call."""

    shape: Tuple[int, ...]
    dtype: str
    mean: float
    std: float
    zero_fraction: float
    feature_std: float  # per-feature std across the batch, averaged over features
    # activations only: fraction of units dead (along the last dim / dim 1), of saturated outputs
    dead_last: Optional[float] = None
    dead_channel: Optional[float] = None
    saturated: Optional[float] = None


@dataclass
class ModuleRecord:
    """One module, under every name it is reachable by."""

    names: List[str]
    type: str
    kind: str  # layer, activation, norm, passthrough, other (see activations.classify)
    activation: Optional[str]  # nonlinearity name when kind == "activation"
    activation_param: float
    leaf: bool
    has_parameters: bool  # parameters of its own (not its children's)
    calls: int = 0
    first_call: Optional[int] = None  # position in the forward's call order
    output: Optional[OutputRecord] = None
    ignore: Dict[str, str] = field(default_factory=dict)  # its class's __initaudit_ignore__
    # what consumes its output (layers and norms): see flow.Flow
    consumer_kind: Optional[str] = None  # activation, norm, layer, output, opaque, unknown
    consumer: Optional[str] = None  # nonlinearity name, or the consuming node
    consumer_param: float = 0.0  # leaky_relu's slope
    consumer_method: Optional[str] = None  # "fx" (traced) or "hooks" (call order)
    residual: Optional[str] = None  # "residual" or "lora": its output is added to a skip

    @property
    def name(self) -> str:
        return self.names[0]

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        if self.output is not None:
            out = d["output"]
            out["shape"] = list(self.output.shape)
            for key in ("mean", "std", "zero_fraction", "feature_std", "dead_last", "dead_channel", "saturated"):
                out[key] = finite_or_none(out[key])
        return d


@dataclass
class LabelledLoss:
    """A classifier's loss at init on the batch's own class labels (record.logits)."""

    loss: float  # the mean cross-entropy of the labels
    shuffled: float  # its expectation with the labels permuted across the rows
    noise: float  # the std of that expectation's estimate: how far ``loss`` strays by chance
    prior_entropy: float  # H(p) of the labels' class frequencies: the loss with the bias at log p
    rows: int  # the rows scored (labels in [0, C))


@dataclass
class Recording:
    """Everything one inspection measured; the only thing rules see of the model."""

    tensors: List[TensorRecord]
    modules: List[ModuleRecord]
    call_order: List[str]  # module names, each call, in the order the calls returned
    call_outputs: List[Optional[OutputRecord]]  # output statistics of each of those calls
    declared_ties: Set[FrozenSet[str]]  # parameter-name sets the model itself declares tied
    backward: bool  # whether a backward was made
    loss: Optional[float] = None
    # the user's loss of an all-zero output (record.probe.zero_output_loss): a regression's loss
    # at init is measured against it; None for logits (ln C is theirs) or the audit's own loss
    zero_output_loss: Optional[float] = None
    # a classifier's logits at init (record.logits): how many classes, the expected
    # cross-entropy for a uniformly drawn label (ln C at best), and a row's logit std
    classes: Optional[int] = None
    # with an optimizer (record.step): the loss before each of its first steps and after the last
    step_losses: Optional[List[float]] = None
    step_optimizer: Optional[str] = None
    step_own_loss: bool = False  # the steps' loss is the user's, not the audit's random projection
    # with an optimizer: layer name -> RMS of its output's change over the steps, on the batch
    step_output_changes: Optional[Dict[str, float]] = None
    expected_initial_loss: Optional[float] = None
    logit_std: Optional[float] = None
    # with the batch's class labels (record.logits.labelled_loss): their cross-entropy at init
    labelled_loss: Optional[LabelledLoss] = None
    # tr(J^T J) / min(inputs, outputs) of the input-output Jacobian, from the backward's probe
    jacobian_gain: Optional[float] = None
    jacobian_note: Optional[str] = None  # why it is None
    traced: List[str] = field(default_factory=list)  # modules torch.fx traced ("" = the model)
    unobserved: List[str] = field(default_factory=list)  # parameterized modules no hook saw
    notes: List[str] = field(default_factory=list)  # what the inspector could not do, and why
    # each module (by its first name) once, in the order its forward first started: a module
    # starts before the modules it calls, and the last to start is nearest the output
    start_order: List[str] = field(default_factory=list)
    # the calls (indices into call_order) whose output is a residual stream: a sum x + f(x),
    # from the autograd graph (record.dataflow); empty without a backward
    stream_calls: List[int] = field(default_factory=list)
    # the std the model's own init draws its weights with, when it declares one: a Hugging
    # Face model's ``_init_weights`` with ``config.initializer_range``
    declared_init_std: Optional[float] = None
    # by call index: where the call's output ends up on the way to the loss ("branch", "norm",
    # "output", joined by "+"), matched to the graph by the node that made it; empty without a backward
    call_reaches: List[Optional[str]] = field(default_factory=list)
    # by call index: what the call's output reaches first (as TensorRecord.feeds); empty without a backward
    call_feeds: List[Optional[str]] = field(default_factory=list)
    # by call index: as call_reaches, but a normalization ends a path ("norm" alone: every path from
    # the output meets a norm before the loss, as a pre-LN stack's stream meets its final norm)
    call_ends: List[Optional[str]] = field(default_factory=list)
    # the residual sums x + f(x) in forward order, each [branch call, its constant factor, stream
    # call or None, earlier sum or None, the stream's constant factor] (record.dataflow.residual_sums):
    # the stream's size at each follows from the recorded outputs (analysis.streams); empty without a backward
    residual_sums: List[List[Any]] = field(default_factory=list)
    _module_index: Optional[Dict[str, ModuleRecord]] = field(default=None, init=False, repr=False, compare=False)

    @property
    def parameters(self) -> List[TensorRecord]:
        """Parameters, and the effective tensors of parametrized modules (judged like weights)."""
        return [t for t in self.tensors if t.kind in ("parameter", "effective")]

    def module(self, name: str) -> Optional[ModuleRecord]:
        """The module reachable as ``name``."""
        if self._module_index is None:
            self._module_index = {n: m for m in self.modules for n in m.names}
        return self._module_index.get(name)
