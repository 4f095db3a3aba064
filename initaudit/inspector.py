"""Hook-based inspector: one forward and one backward, statistics of everything.

It records every parameter and floating-point buffer, every module's output on the
example input, and every parameter's first-step gradient, all on the device the model
is on, and leaves the model exactly as it found it (:mod:`initaudit.state`).
"""

from __future__ import annotations

import dataclasses
import math
import weakref
from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

import torch
from torch import nn

from . import activations, distributed, factored, fingerprint, flow, moments, stats
from .errors import ForwardError, describe, user_frame
from .records import GradientRecord, ModuleRecord, OutputRecord, Recording, TensorRecord
from .state import preserved, seed_torch
from .progress import SILENT, Progress
from .suppress import declared_ignores

LossFn = Callable[[Any, Any], torch.Tensor]

# gate blocks stacked along dim 0 of recurrent weights and biases
_GATES: Dict[type, int] = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3}
_GATED_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
_RECURRENT_BLOCKS: Dict[type, int] = {**_GATES, nn.RNN: 1, nn.RNNCell: 1}
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)



def floating_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every floating tensor in an output: a tensor, a tuple/list, a dict, a dataclass.

    ``ModelOutput`` of Hugging Face is an ``OrderedDict`` and a dataclass; it is walked as a
    dict so that each tensor is seen once.
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() or obj.is_complex():
            yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from floating_tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from floating_tensors(value)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from floating_tensors(getattr(obj, f.name))


def random_projection_loss(output: Any, seed: int) -> Optional[torch.Tensor]:
    """``sum_t (t * r_t).sum()`` over the output's floating tensors, ``r_t ~ N(0, 1/numel(t))``.

    A fixed random readout: its gradient with respect to the output is ``r``, an isotropic
    probe, so first-step gradients measure the network's Jacobian rather than an invented
    target. ``out.sum()`` would not do: its gradient is all ones, which a softmax or a
    normalization maps to exactly zero. Seeded with its own generator so that no global
    RNG is consumed. ``None`` when no floating output requires a gradient.
    """
    total = None
    generators: Dict[torch.device, torch.Generator] = {}
    for t in floating_tensors(output):
        if not t.requires_grad or t.numel() == 0 or t.is_complex():
            continue
        gen = generators.get(t.device)
        if gen is None:
            gen = torch.Generator(device=t.device)
            gen.manual_seed(seed)
            generators[t.device] = gen
        r = torch.randn(t.shape, generator=gen, device=t.device, dtype=torch.float32)
        r = (r / math.sqrt(t.numel())).to(t.dtype)
        term = (t * r).sum().float()
        total = term if total is None else total + term
    return total


def names_by_id(items: Iterator[Tuple[str, Any]]) -> "OrderedDict[int, Tuple[Any, List[str]]]":
    """``{id(obj): (obj, [every name it is reachable under])}`` in first-seen order (tied
    parameters and shared modules are one entry with several names)."""
    by_id: "OrderedDict[int, Tuple[Any, List[str]]]" = OrderedDict()
    for name, obj in items:
        if obj is None:
            continue
        by_id.setdefault(id(obj), (obj, []))[1].append(name)
    return by_id


def _owner(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def call_model(model: nn.Module, example_input: Any) -> Any:
    """``model(x)``, ``model(*x)`` for a tuple, ``model(**x)`` for a dict."""
    if isinstance(example_input, dict):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def declared_ties(model: nn.Module) -> Set[FrozenSet[str]]:
    """Parameter names the model itself declares tied: Hugging Face's input/output embeddings."""
    ties: Set[FrozenSet[str]] = set()
    get_in = getattr(model, "get_input_embeddings", None)
    get_out = getattr(model, "get_output_embeddings", None)
    if not (callable(get_in) and callable(get_out)):
        return ties
    try:
        emb_in, emb_out = get_in(), get_out()
    except Exception:  # a model whose accessors are not implemented declares nothing
        return ties
    w_in = getattr(emb_in, "weight", None)
    w_out = getattr(emb_out, "weight", None)
    if isinstance(w_in, nn.Parameter) and w_in is w_out:
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is w_in]
        ties.add(frozenset(names))
    return ties


class CallRecorder:
    """Forward hooks on every module: call order, and the first output of each as statistics.

    A hook reduces the output to a few numbers on its device at once and keeps no
    reference to the tensor. Pre-hooks keep the stack of modules whose forward is running,
    so that a failing forward can be blamed on the innermost one.
    """

    def __init__(
        self,
        module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
        deferred: stats.Deferred,
        linear_grads: Optional[factored.LinearGradients] = None,
    ) -> None:
        self.module_names = module_names
        self.deferred = deferred
        self.moments = moments.OutputMoments(deferred)  # outputs' moments, small ones in batches
        self.linear_grads = linear_grads  # the input side of linear layers' weight gradients
        self.calls: List[str] = []
        self.counts: Dict[int, int] = {}
        self.first_call: Dict[int, int] = {}
        self.started: Dict[int, int] = {}  # order in which modules first started their forward
        self.call_outputs: List[Optional[Tuple[Tuple[int, ...], str]]] = []
        # average pooling divides the Jacobian's squared norm by the window: undo it in the gain
        self.pooling = 1.0
        self.running: List[int] = []
        self.handles: List[Any] = []
        self.scripted = False
        # nonlinearity of each activation module, whose outputs also get dead/saturated counts
        self.nonlinearity: Dict[int, str] = {}
        self.call_nonlinearity: Dict[int, str] = {}  # by call index, for the calls of activations
        # the last output reduced, as (weak reference, version, handle of its queued moments),
        # so that a container passing on its last child's output unchanged does not reduce it again
        self.last_output: Optional[Tuple[Any, int, torch.Tensor]] = None
        for key, (module, _) in module_names.items():
            kind, act = activations.classify(module)
            if kind == activations.ACTIVATION and act is not None:
                self.nonlinearity[key] = act.name

    def attach(self) -> None:
        for module, _ in self.module_names.values():
            if isinstance(module, torch.jit.ScriptModule):
                self.scripted = True  # TorchScript takes no Python hooks
                continue
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.moments.flush()

    def _pre(self, module: nn.Module, args: Any) -> None:
        self.running.append(id(module))
        self.started.setdefault(id(module), len(self.started))

    def _post(self, module: nn.Module, args: Any, output: Any) -> None:
        key = id(module)
        if self.running and self.running[-1] == key:
            self.running.pop()
        self.counts[key] = self.counts.get(key, 0) + 1
        index = len(self.calls)
        self.calls.append(self.module_names[key][1][0])
        self.first_call.setdefault(key, index)
        if self.linear_grads is not None:
            self.linear_grads.on_call(module, args, output)
        out = next((t for t in floating_tensors(output) if not t.is_complex()), None)
        if out is None:
            self.call_outputs.append(None)
            return
        if isinstance(module, activations.AVERAGE_POOL_TYPES):
            first = next(floating_tensors(args), None)
            if first is not None and out.numel():
                self.pooling *= first.numel() / out.numel()
        self.call_outputs.append((tuple(out.shape), str(out.dtype).replace("torch.", "")))
        nonlinearity = self.nonlinearity.get(key)
        identity = _identity(out)
        last = self.last_output
        # compared by identity: weak references to tensors compare their values
        if nonlinearity is None and identity is not None and last is not None and last[0]() is out \
                and last[1] == identity[1]:
            handle = last[2]  # the same tensor, unchanged since: its moments lead the row already queued
            self.moments.alias(handle, ("call", index))
        else:
            handle = self.moments.add(("call", index), out, nonlinearity)
        self.last_output = (*identity, handle) if identity is not None else None
        if nonlinearity is not None:
            self.call_nonlinearity[index] = nonlinearity

    def failing_module(self) -> str:
        """`` in module 'name' (Type)`` for the innermost module still running, or ``""``."""
        if not self.running:
            return ""
        module, names = self.module_names[self.running[-1]]
        return f" in module '{names[0]}' ({distributed.type_name(module)})" if names[0] else ""


def _identity(t: torch.Tensor) -> Optional[Tuple[Any, int]]:
    """``(weak reference, version counter)`` of ``t``: the same object with the same version
    has not changed in place since. ``None`` where either is missing (an inference-mode
    tensor keeps no version; an unusual subclass may refuse weak references)."""
    try:
        return weakref.ref(t), t._version
    except (RuntimeError, TypeError):
        return None


def _forward(model: nn.Module, example_input: Any, recorder: CallRecorder) -> Any:
    recorder.attach()
    try:
        return call_model(model, example_input)
    except Exception as exc:
        raise ForwardError(
            f"forward of {type(model).__name__} failed{recorder.failing_module()}: {describe(exc)}",
            user_frame(exc),
        ) from exc
    finally:
        recorder.detach()


def _loss(output: Any, example_input: Any, loss: Optional[LossFn], seed: int) -> Optional[torch.Tensor]:
    try:
        value = loss(output, example_input) if loss else random_projection_loss(output, seed)
    except Exception as exc:
        raise ForwardError(f"the loss function failed: {describe(exc)}", user_frame(exc)) from exc
    if value is not None and not (isinstance(value, torch.Tensor) and value.numel() == 1):
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else ""
        raise ForwardError(f"the loss function returned {type(value).__name__}{shape}, expected a scalar tensor")
    return value


def probe_input(example_input: Any) -> Tuple[Any, List[torch.Tensor]]:
    """The input with each floating tensor replaced by a detached copy that requires grad.

    The backward then also yields ``J^T r``, the Jacobian's action on the loss's random
    projection, at no extra cost; the user's own tensors are not touched.
    """
    leaves: List[torch.Tensor] = []

    def swap(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() and obj.numel():
                leaf = obj.detach().requires_grad_(True)
                leaves.append(leaf)
                return leaf
            return obj
        if isinstance(obj, tuple):
            return tuple(swap(v) for v in obj)
        if isinstance(obj, list):
            return [swap(v) for v in obj]
        if isinstance(obj, dict):
            return {k: swap(v) for k, v in obj.items()}
        return obj

    return swap(example_input), leaves


def jacobian_gain(output: Any, input_grads: List[Optional[torch.Tensor]], input_numel: int) -> Tuple[Optional[torch.Tensor], Optional[str]]:
    """``tr(J^T J) / min(m, n)`` from one Hutchinson probe, or ``(None, why)``.

    With ``r ~ N(0, I/m)`` over the ``m`` output elements, ``E||J^T r||^2 = tr(J J^T) / m``,
    so ``tr(J^T J) = m ||J^T r||^2``. Divided by ``min(m, n)`` it is 1 when every singular
    value of the input-output Jacobian is 1 (dynamical isometry, Pennington et al. 2017),
    also for a Jacobian that is not square, where ``E||J v||^2 / E||v||^2`` is not.
    """
    outputs = [t for t in floating_tensors(output) if t.requires_grad and t.numel() and not t.is_complex()]
    if input_numel == 0:
        return None, "the input has no floating tensor (e.g. token ids)"
    if len(outputs) != 1:
        return None, f"the output has {len(outputs)} differentiable tensors, not one"
    grads = [g for g in input_grads if g is not None]
    if not grads:
        return None, "the output does not depend on the input"
    m = outputs[0].numel()
    squared = sum(g.detach().double().square().sum() for g in grads)
    return squared * m / min(m, input_numel), None


def _first_step_gradients(
    loss_value: Optional[torch.Tensor],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    leaves: List[torch.Tensor],
    linear_grads: Optional[factored.LinearGradients] = None,
) -> Tuple[bool, Dict[int, Any], List[Optional[torch.Tensor]]]:
    """``(backward_made, gradient by parameter id, gradient of each input leaf)``.

    A parameter's gradient is a tensor, ``None`` where the loss does not reach it, or, for
    the linear weights that ``linear_grads`` factors, the device row of
    :func:`~initaudit.factored.gradient_row` (wrapped in :class:`Factored`).
    """
    trainable = [(i, p) for i, (p, _) in param_names.items() if p.requires_grad and p.is_floating_point()]
    if loss_value is None or not loss_value.requires_grad:
        # the loss depends on no parameter
        return bool(trainable), {i: None for i, _ in trainable}, [None] * len(leaves)
    wrt = [p for _, p in trainable] + leaves
    sharded = any(distributed.is_dtensor(p) for p in wrt)
    skipped: Set[int] = set()
    if linear_grads is not None and not sharded:
        skipped = linear_grads.plan(loss_value, wrt)
        wrt = [t for t in wrt if id(t) not in skipped]
    try:
        if sharded:
            grads = _accumulated_gradients(loss_value, wrt)
        else:
            grads = torch.autograd.grad(loss_value.reshape(()), wrt, allow_unused=True) if wrt else ()
    except Exception as exc:
        raise ForwardError(f"the backward failed: {describe(exc)}", user_frame(exc)) from exc
    finally:
        if linear_grads is not None:
            linear_grads.close()
    computed = iter(grads)
    by_param: Dict[int, Any] = {}
    for i, p in trainable:
        if id(p) in skipped:
            row = linear_grads.rows.get(id(p)) if linear_grads is not None else None
            by_param[i] = Factored(row) if row is not None else None
        else:
            by_param[i] = next(computed)
    return bool(trainable), by_param, list(computed)


@dataclasses.dataclass
class Factored:
    """A weight's first-step gradient known by its statistics alone (:mod:`~initaudit.factored`)."""

    row: torch.Tensor  # [sum(G), ||G||^2, nonfinite(G)], float64, on the device


def _accumulated_gradients(loss_value: torch.Tensor, wrt: List[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """Gradients through ``.grad``, for sharded parameters (FSDP2) whose gradient is
    reduce-scattered into ``.grad`` by hooks that ``torch.autograd.grad`` does not run.

    ``.grad`` is cleared first so that nothing accumulates onto the user's; the caller's
    :func:`~initaudit.state.preserved` puts the user's ``.grad`` back afterwards.
    """
    for t in wrt:
        t.grad = None
    loss_value.reshape(()).backward()
    grads = [t.grad for t in wrt]
    for t in wrt:
        t.grad = None
    return grads


def inspect(
    model: nn.Module,
    example_input: Any,
    *,
    loss: Optional[LossFn] = None,
    seed: int = 0,
    run_forward: bool = True,
    run_backward: bool = True,
    progress: Optional[Progress] = None,
) -> Recording:
    """Record statistics of ``model`` on ``example_input``; the model is left untouched.

    ``run_forward=False`` records the parameters alone (no input needed: for models too
    large to run); ``run_backward=False`` runs the forward without gradients.

    The forward runs in training mode (a first training step), with every module's output
    reduced to a few statistics by a forward hook. The backward uses
    ``torch.autograd.grad``, so no parameter's ``.grad`` is written; the weights of linear
    layers that :mod:`~initaudit.factored` can stand in for get their gradient's
    statistics from two small Gram matrices instead of the gradient itself. Every statistic is
    computed on the device its tensor lives on and brought to the host in one transfer.
    """
    progress = progress or SILENT
    param_names = names_by_id(model.named_parameters(remove_duplicate=False))
    buffer_names = names_by_id(model.named_buffers(remove_duplicate=False))
    module_names = names_by_id(model.named_modules(remove_duplicate=False))
    progress.phase("parameter statistics")
    # a malformed suppression is the user's error: say so before running anything
    ignores = {key: declared_ignores(m) for key, (m, _) in module_names.items()}
    deferred = stats.Deferred()
    linear_grads = factored.LinearGradients() if run_forward and run_backward else None
    recorder = CallRecorder(module_names, deferred, linear_grads)
    # values as the user left them, before a training-mode forward can touch a buffer
    partials = distributed.Partials()
    tensors = _tensor_records(param_names, buffer_names, module_names, deferred, partials)
    backward, grads, gain, gain_note, loss_value = False, {}, None, None, None
    with preserved(model):
        progress.phase("tracing")
        flows, traced = flow.analyze(model)
        if run_forward:
            progress.phase("forward")
            model.train()
            seed_torch(seed)
            x, leaves = probe_input(example_input) if run_backward else (example_input, [])
            with torch.enable_grad() if run_backward else torch.no_grad():
                output = _forward(model, x, recorder)
                if run_backward:
                    progress.phase("backward")
                    loss_value = _loss(output, x, loss, seed)
                    probed: Optional[List[Optional[torch.Tensor]]] = None
                    if loss is not None and leaves:
                        # a custom loss says nothing of the Jacobian: probe it with a projection of its own
                        probe = random_projection_loss(output, seed)
                        probed = []
                        if probe is not None:
                            probed = list(torch.autograd.grad(probe, leaves, allow_unused=True, retain_graph=True))
                    backward, grads, input_grads = _first_step_gradients(loss_value, param_names, leaves, linear_grads)
                    input_grads = probed if probed is not None else input_grads
                    gain, gain_note = jacobian_gain(output, input_grads, sum(t.numel() for t in leaves))
            if gain is not None:
                deferred.add("jacobian", (gain * recorder.pooling).reshape(1))
                if recorder.pooling != 1.0:
                    gain_note = f"corrected for average pooling over {recorder.pooling:g} elements"
        if not run_backward:
            gain_note = "no backward was made"
        _gradient_status(tensors, grads, backward, deferred, partials)
        if loss_value is not None:
            deferred.add("loss", loss_value.detach().reshape(1).double())
        values = _resolve(deferred, partials, tensors, param_names, buffer_names, grads)

    modules = _module_records(module_names, recorder, values, ignores, flows)
    if run_forward:
        _note_unjudged(tensors, set(recorder.calls))
    return Recording(
        tensors=[r for _, r in tensors],
        modules=modules,
        call_order=recorder.calls,
        call_outputs=[_output(recorder, values, i) for i in range(len(recorder.calls))],
        output_layer=output_layer(model, module_names, recorder),
        declared_ties=declared_ties(model),
        backward=backward,
        loss=values["loss"][0] if "loss" in values else None,
        jacobian_gain=values["jacobian"][0] if "jacobian" in values else None,
        jacobian_note=gain_note,
        traced=traced,
        unobserved=[m.name for m in modules if m.has_parameters and m.calls == 0] if run_forward else [],
        notes=["a TorchScript module takes no forward hooks: parameters and gradients are audited, "
               "module outputs (and the signal rules) are not"] if recorder.scripted else [],
    )


def parameter_statistics(model: nn.Module) -> List[TensorRecord]:
    """The parameter pass alone, exactly as :func:`inspect` makes it (no forward, no rules).

    Every parameter's and floating buffer's summary, fingerprint statistics, clones and
    aliases; what ``--params-only`` reads, and what ``benchmarks/`` times against one read
    of the parameters.
    """
    param_names = names_by_id(model.named_parameters(remove_duplicate=False))
    buffer_names = names_by_id(model.named_buffers(remove_duplicate=False))
    module_names = names_by_id(model.named_modules(remove_duplicate=False))
    deferred, partials = stats.Deferred(), distributed.Partials()
    tensors = _tensor_records(param_names, buffer_names, module_names, deferred, partials)
    _resolve(deferred, partials, tensors, param_names, buffer_names, {})
    return [record for _, record in tensors]


def _resolve(
    deferred: stats.Deferred,
    partials: distributed.Partials,
    tensors: List[Tuple[Any, TensorRecord]],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> Dict[Any, List[float]]:
    """Bring every statistic to the host (one transfer, plus one for the few that need
    completing), fill the tensor records with them and relate clones and aliases."""
    values = deferred.resolve()
    _combine(values, partials)
    _exact_where_needed(values, tensors, param_names, buffer_names, grads)
    for key, record in tensors:
        _fill(record, values, key)
    _relate(tensors, param_names, values)
    return values


def _module_records(
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    recorder: CallRecorder,
    values: Dict[Any, List[float]],
    ignores: Dict[int, Dict[str, str]],
    flows: Dict[str, "flow.Flow"],
) -> List[ModuleRecord]:
    records = []
    for key, (module, names) in module_names.items():
        kind, act = activations.classify(module)
        record = ModuleRecord(
            names=names,
            type=distributed.type_name(module),
            kind=kind,
            activation=act.name if act else None,
            activation_param=act.param if act else 0.0,
            # a parametrized layer is still a leaf: its only child holds its parametrizations
            leaf=all(child == "parametrizations" for child, _ in module.named_children()),
            has_parameters=next(module.parameters(recurse=False), None) is not None,
            calls=recorder.counts.get(key, 0),
            first_call=recorder.first_call.get(key),
            ignore=ignores.get(key, {}),
        )
        if record.first_call is not None:
            record.output = _output(recorder, values, record.first_call)
        if isinstance(module, (nn.RNN, nn.RNNCell)):
            record.activation = module.nonlinearity
        found = flows.get(names[0])
        if found is not None and found.consumer != "unknown":
            record.consumer_kind = found.consumer
            record.consumer = found.activation.name if found.activation else found.via
            record.consumer_param = found.activation.param if found.activation else 0.0
            record.consumer_method = flow.FX
        elif kind in (activations.LAYER, activations.NORM):
            record.consumer_method = flow.HOOKS
        record.residual = found.residual if found is not None else None
        records.append(record)
    return records


def _output(recorder: CallRecorder, values: Dict[Any, List[float]], index: int) -> Optional[OutputRecord]:
    meta = recorder.call_outputs[index]
    if meta is None:
        return None
    shape, dtype = meta
    row = values[("call", index)]
    nonlinearity = recorder.call_nonlinearity.get(index)
    extra = ([None, None, None] if nonlinearity is None
             else stats.activation_from_counts(row[stats.OUTPUT_MOMENTS:], shape, nonlinearity))
    return OutputRecord(shape, dtype, *stats.output_from_moments(row, shape), *extra)


def output_layer(model: nn.Module, module_names: "OrderedDict[int, Tuple[Any, List[str]]]", recorder: CallRecorder) -> Optional[str]:
    """The model's head: of the modules holding a weight of 2+ dimensions of their own, the
    one whose forward started last. The root counts only when it is a single layer (a model
    holding a class token directly is not its own head)."""
    best: Optional[Tuple[int, str]] = None
    for key, (module, names) in module_names.items():
        if key not in recorder.started:
            continue
        if module is model and next(module.children(), None) is not None:
            continue
        if not any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            continue
        if best is None or recorder.started[key] > best[0]:
            best = (recorder.started[key], names[0])
    return best[1] if best else None


def _note_unjudged(tensors: List[Tuple[int, TensorRecord]], called: Set[str]) -> None:
    """Say in each parameter's notes why a rule could not judge it."""
    for _, record in tensors:
        if record.kind != "parameter":
            continue
        if not record.floating:
            record.notes.append("not floating point: value and gradient rules not applied")
        elif not record.requires_grad:
            record.notes.append("frozen (requires_grad=False): gradient rules not applied")
        if record.floating and record.grad is None and record.module not in called:
            record.notes.append(f"not reached by the forward: module '{record.module}' was never called")


def _tensor_records(
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    deferred: stats.Deferred,
    partials: distributed.Partials,
) -> List[Tuple[int, TensorRecord]]:
    modules_by_name = {}
    for module, names in module_names.values():
        for n in names:
            modules_by_name[n] = module
    records = []
    summarize: List[Tuple[int, torch.Tensor, bool]] = []  # (key, tensor, probed), queued after the loop
    shaped: List[Tuple[int, torch.Tensor]] = []  # weights whose fingerprint statistics are queued after it
    for kind, table in (("parameter", param_names), ("buffer", buffer_names)):
        for key, (t, names) in table.items():
            floating = t.is_floating_point()
            if kind == "buffer" and not floating:
                continue
            module_name, attr = _owner(names[0])
            owner = modules_by_name.get(module_name)
            fans = stats.fan_in_and_fan_out(t.shape)
            record = TensorRecord(
                names=names,
                kind=kind,
                module=module_name,
                module_type=distributed.type_name(owner) if owner is not None else "",
                attr=attr,
                shape=tuple(t.shape),
                dtype=str(t.dtype).replace("torch.", ""),
                device=str(t.device),
                requires_grad=bool(t.requires_grad),
                floating=floating,
                numel=t.numel(),
                fan_in=fans[0] if fans else None,
                fan_out=fans[1] if fans else None,
            )
            if isinstance(owner, _TRANSPOSED) and fans:
                # each output of a transposed conv sums in_channels / groups x kernel inputs
                record.layer_fan_in = owner.in_channels // owner.groups * (fans[0] // t.shape[1])
            else:
                record.layer_fan_in = record.fan_in
            if floating and distributed.is_sharded(t):
                _sharded_records(key, t, kind, record, partials)
            elif floating:
                t = distributed.local(t)  # a replicated DTensor is whole on every rank
                summarize.append((key, t, kind == "parameter" and t.numel() > 1))
                if kind == "parameter" and t.dim() >= 2 and t.numel() > 1:
                    shaped.append((key, t))
                gates = _GATES.get(type(owner)) if owner is not None else None
                if gates and attr.startswith(_GATED_PREFIXES) and t.shape[0] % gates == 0:
                    deferred.add(("gates", key), stats.chunk_means(t, gates))
                recurrent = _RECURRENT_BLOCKS.get(type(owner)) if owner is not None else None
                if recurrent and attr.startswith("weight_hh") and t.dim() == 2 and t.shape[0] % recurrent == 0:
                    deferred.add(("sv", key), stats.block_singular_values(t, recurrent))
                    if recurrent == 1 and t.shape[0] == t.shape[1]:
                        deferred.add(("rho", key), stats.spectral_radius(t).reshape(1))
            records.append((key, record))
    stats.queue_summaries(summarize, deferred)
    fingerprint.queue_shape_stats(shaped, deferred)
    records += _effective_records(module_names, deferred)
    return records


def _sharded_records(key: int, t: torch.Tensor, kind: str, record: TensorRecord, partials: distributed.Partials) -> None:
    """File the partial statistics of a sharded tensor's local piece, to be combined across ranks.

    The kurtosis is combined from power sums; the orthogonality test and the recurrent
    statistics need whole rows or blocks, which no rank holds, and are not computed.
    """
    piece = distributed.local(t)
    partials.add(("fast", key), t, *stats.partial_fast(piece))
    if kind == "parameter" and t.numel() > 1:
        partials.add(("probe", key), t, stats.probe(piece), torch.zeros(0, device=piece.device))
    if kind == "parameter" and t.dim() >= 2 and t.numel() > 1:
        partials.add(("moments", key), t, *stats.partial_moments(piece, t.numel()))
    groups = distributed.shard_groups(t)
    ranks = math.prod(torch.distributed.get_world_size(g) for g in groups)
    record.notes.append(f"sharded over {ranks} ranks ({', '.join(str(p) for p in t.placements)}): statistics "
                        "combined across ranks; orthogonality and recurrent-gate statistics not computed")


def _combine(values: Dict[Any, List[float]], partials: distributed.Partials) -> None:
    """Put the combined statistics of sharded tensors among ``values``, in the local layouts."""
    for (what, key), (sums, mins) in partials.resolve().items():
        if what == "fast":
            values[("fast", key)] = stats.from_partial_fast(sums, mins)
        elif what == "probe":
            values[("probe", key)] = sums
        elif what == "moments":
            values[("shape", key)] = [stats.kurtosis_from_moments(sums), None, None]
        elif what == "gradfast":
            values[("gradfast", key)] = sums


def _effective_records(
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    deferred: stats.Deferred,
) -> List[Tuple[int, TensorRecord]]:
    """The effective tensors of parametrized modules (``parametrize``, ``weight_norm``,
    ``spectral_norm``): what the layer computes with, named as the layer uses it, with a
    note naming the trainable originals. The value rules and IA201 judge these."""
    from torch.nn.utils import parametrize

    records = []
    for module, names in module_names.values():
        if not parametrize.is_parametrized(module):
            continue
        for attr, plist in module.parametrizations.items():
            was_training = module.training
            module.eval()  # spectral_norm's power iteration runs (and writes buffers) only in training
            try:
                with torch.no_grad():
                    value = getattr(module, attr).detach()
            finally:
                module.train(was_training)
            originals = [f"{names[0]}.parametrizations.{attr}.{n}" if names[0] else f"parametrizations.{attr}.{n}"
                         for n, _ in plist.named_parameters(recurse=False)]
            fans = stats.fan_in_and_fan_out(value.shape)
            name = f"{names[0]}.{attr}" if names[0] else attr
            record = TensorRecord(
                names=[name], kind="effective", module=names[0], module_type=type(module).__name__, attr=attr,
                shape=tuple(value.shape), dtype=str(value.dtype).replace("torch.", ""), device=str(value.device),
                requires_grad=False, floating=value.is_floating_point(), numel=value.numel(),
                fan_in=fans[0] if fans else None, fan_out=fans[1] if fans else None,
                grad_status="effective",
            )
            record.layer_fan_in = record.fan_in
            record.notes.append(
                f"effective {attr} of a parametrization ({', '.join(type(p).__name__ for p in plist)}); "
                f"trainable original(s): {', '.join(originals)}"
            )
            key = ("effective", name)
            if record.floating:
                deferred.add(("param", key), stats.tensor_summary(value))  # small and rare: exact
                if value.dim() >= 2 and value.numel() > 1:
                    deferred.add(("shape", key), fingerprint.shape_stats(value))
            records.append((key, record))
    return records


def _relate(
    records: List[Tuple[int, TensorRecord]],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    values: Dict[Any, List[float]],
) -> None:
    """Fill ``clones`` (bit-identical values) and ``aliases`` (shared memory) of parameters.

    Clones are bucketed by shape, dtype, mean, std and a few probed elements, and only
    tensors in one bucket are compared element by element, so the cost stays linear in
    the bytes. Constant tensors (zero biases, unit gains) are not clones of each other.
    """
    by_key = {key: record for key, record in records if record.kind == "parameter"}
    aliased = _aliases(by_key, param_names)
    buckets: Dict[Tuple[Any, ...], List[int]] = {}
    for key, record in by_key.items():
        probe = values.get(("probe", key))
        if probe is None or record.min is None or record.min == record.max or record.nonfinite:
            continue
        bucket = (record.shape, record.dtype, values[("param", key)][0], values[("param", key)][1], *probe)
        buckets.setdefault(bucket, []).append(key)
    for keys in buckets.values():
        # each tensor is compared with one member of each set of equal tensors found so far:
        # a bucket of k copies costs k - 1 comparisons, not k (k - 1) / 2
        classes: List[List[int]] = []
        for key in keys:
            tensor = param_names[key][0].detach()
            for members in classes:
                first = param_names[members[0]][0].detach()
                if _equal(tensor, first):
                    members.append(key)
                    break
            else:
                classes.append([key])
        for members in classes:
            if len(members) < 2 or _two_valued(by_key[members[0]]):
                continue
            for a in members:
                by_key[a].clones += [by_key[b].name for b in members if b != a and (a, b) not in aliased]


def _equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical values; sharded tensors compare their pieces and agree across ranks."""
    if distributed.is_sharded(a) or distributed.is_sharded(b):
        return distributed.is_sharded(a) and distributed.is_sharded(b) and distributed.all_equal(a, b)
    a, b = distributed.local(a), distributed.local(b)
    return a.device == b.device and torch.equal(a, b)


def _two_valued(record: TensorRecord) -> bool:
    """Whether a tensor holds only its min and max: a deliberate pattern (a forget-gate slice
    of ones among zeros), not a random draw that was copied.

    By the Bhatia-Davis inequality ``Var <= (max - mean)(mean - min)``, with equality exactly
    when every value is ``min`` or ``max``; read from the recorded summary, no pass needed.
    """
    if record.std is None or record.mean is None or record.min is None or record.max is None:
        return False
    bound = (record.max - record.mean) * (record.mean - record.min)
    return bound > 0 and record.std ** 2 >= bound * (1 - 1e-4)


def _byte_span(t: torch.Tensor) -> Optional[Tuple[int, int]]:
    """``[first, last)`` byte addresses a tensor's elements can occupy in its storage."""
    if t.numel() == 0 or t.device.type == "meta" or t.is_sparse:
        return None
    try:
        base = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # wrapper tensors have no storage of their own
        return None
    reach = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    start = base + t.storage_offset() * t.element_size()
    return start, start + (reach + 1) * t.element_size()


def _element_offsets(t: torch.Tensor) -> torch.Tensor:
    """Storage offsets of every element: ``offset + sum_i index_i * stride_i``."""
    offsets = torch.tensor([t.storage_offset()], dtype=torch.int64)
    for size, stride in zip(t.shape, t.stride()):
        offsets = (offsets[:, None] + torch.arange(size, dtype=torch.int64)[None, :] * stride).reshape(-1)
    return offsets


def _aliases(by_key: Dict[int, TensorRecord], param_names: "OrderedDict[int, Tuple[Any, List[str]]]") -> Set[Tuple[int, int]]:
    """Fill ``aliases`` of parameters whose elements share memory; returns the pairs.

    Byte spans rule out most pairs at once; two strided views whose spans overlap (two
    column blocks of one matrix) are compared element by element.
    """
    spans = []
    for key in by_key:
        if distributed.is_dtensor(param_names[key][0]):
            continue  # its local piece's memory says nothing of another rank's
        span = _byte_span(param_names[key][0])
        if span is not None:
            spans.append((span[0], span[1], key))
    spans.sort()
    pairs: Set[Tuple[int, int]] = set()
    for i, (start, end, key) in enumerate(spans):
        for other_start, _, other in spans[i + 1:]:
            if other_start >= end:
                break
            a, b = param_names[key][0], param_names[other][0]
            if not (a.is_contiguous() and b.is_contiguous()) and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr():
                if a.element_size() != b.element_size() or not bool(torch.isin(_element_offsets(a), _element_offsets(b)).any()):
                    continue
            by_key[key].aliases.append(by_key[other].name)
            by_key[other].aliases.append(by_key[key].name)
            pairs |= {(key, other), (other, key)}
    return pairs


def _gradient_status(
    records: List[Tuple[int, TensorRecord]],
    grads: Dict[int, Any],
    backward: bool,
    deferred: stats.Deferred,
    partials: distributed.Partials,
) -> None:
    for key, record in records:
        if record.kind != "parameter":
            continue
        if not record.floating:
            record.grad_status = "not-floating"
        elif not record.requires_grad:
            record.grad_status = "frozen"
        elif not backward:
            record.grad_status = "not-run"
        elif grads.get(key) is None:
            record.grad_status = "none"
        else:
            record.grad_status = "ok"
            grad = grads[key]
            if isinstance(grad, Factored):
                deferred.add(("gradfactored", key), grad.row)
                continue
            fast = stats.gradient_fast(distributed.local(grad))
            if distributed.is_sharded(grad):
                partials.add(("gradfast", key), grad, fast, fast.new_zeros(0))
            else:
                deferred.add(("gradfast", key), fast)


def _exact_where_needed(
    values: Dict[Any, List[float]],
    tensors: List[Tuple[Any, TensorRecord]],
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    grads: Dict[int, Any],
) -> None:
    """Turn fast summaries into ``("param", key)`` and ``("grad", key)`` values, completing
    the few that need it, in one more transfer for all of them.

    Tensors with NaN or Inf, or whose variance cancels (a large mean, or a constant such as
    a norm gain), get the exact two-pass summary; tensors that may hold zeros or subnormals
    (a zero bias) get those counted. A model with neither needs no second transfer. Sharded
    tensors do the same on their pieces, combined across ranks.
    """
    redo = stats.Deferred()
    partials = distributed.Partials()
    counted: Dict[Any, List[float]] = {}
    exact: Dict[Any, Tuple[float, float]] = {}
    for key, record in tensors:
        rows = values.pop(("fast", key), None)
        if rows is not None:
            tensor = (param_names.get(key) or buffer_names.get(key))[0]
            fast = stats.combine_fast(tensor.numel(), rows)
            sharded = distributed.is_sharded(tensor)
            piece = distributed.local(tensor)
            if stats.needs_exact(fast):
                if sharded:
                    exact[key] = (float(tensor.numel()), fast[0])
                    partials.add(("param", key), tensor, *stats.partial_exact(piece, fast[0]))
                else:
                    redo.add(("param", key), stats.tensor_summary(piece))
            elif stats.needs_counts(fast, tensor.dtype):
                counted[key] = fast
                if sharded:
                    partials.add(("counts", key), tensor, *stats.partial_counts(piece))
                else:
                    redo.add(("counts", key), stats.small_counts(piece))
            else:
                values[("param", key)] = stats.from_fast(fast)
        row = values.pop(("gradfactored", key), None)
        if row is not None:
            values[("grad", key)] = factored.gradient_from_row(record.numel, row, record.dtype)
        sums = values.pop(("gradfast", key), None)
        if sums is None:
            continue
        grad = grads[key]
        n = grad.numel()  # of the whole, also for a sharded gradient
        summary = stats.gradient_from_fast(n, sums)
        if summary is not None:
            values[("grad", key)] = summary
        elif distributed.is_sharded(grad):
            mean = sums[0] / max(n, 1)
            exact[("grad", key)] = (n, mean)
            partials.add(("grad", key), grad, *stats.partial_gradient_exact(distributed.local(grad), mean))
        else:
            redo.add(("grad", key), stats.gradient_summary(distributed.local(grad)))
    done = redo.resolve()
    for (what, key), (sums, mins) in partials.resolve().items():
        if what == "param":
            n, mean = exact[key]
            done[("param", key)] = stats.from_partial_exact(n, mean, sums, mins)
        elif what == "counts":
            done[("counts", key)] = sums
        else:
            n, _ = exact[("grad", key)]
            squares, centred, nonfinite = sums
            done[("grad", key)] = [math.sqrt(squares), math.sqrt(centred / max(n, 1)), nonfinite]
    for key, fast in counted.items():
        values[("param", key)] = stats.from_fast(fast, done.pop(("counts", key)))
    values.update(done)


def _fill(record: TensorRecord, values: Dict[Any, List[float]], key: int) -> None:
    summary = values.get(("param", key))
    if summary is not None:
        mean, std, lo, hi, zeros, nonfinite, subnormal = summary
        record.mean, record.std, record.min, record.max = mean, std, lo, hi
        record.zero_fraction = zeros / record.numel if record.numel else None
        record.nonfinite = int(nonfinite)
        record.subnormal = int(subnormal)
    if ("shape", key) in values:
        record.kurtosis, record.ortho_offdiag, record.ortho_spread = values[("shape", key)]
        found = fingerprint.identify(record)
        record.init = found.describe() if found is not None else None
        record.init_call = found.call("{w}") if found is not None and found.family != "constant" else None
    if ("sv", key) in values:
        record.gate_singular_values = values[("sv", key)]
    if ("rho", key) in values:
        record.spectral_radius = values[("rho", key)][0]
    gates = values.get(("gates", key))
    if gates is not None:
        record.gate_means = gates
    grad = values.get(("grad", key))
    if grad is not None:
        record.grad = GradientRecord(norm=grad[0], std=grad[1], nonfinite=int(grad[2]))
