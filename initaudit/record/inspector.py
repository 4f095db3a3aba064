"""Hook-based inspector: one forward and one backward, statistics of everything.

It records every parameter and floating-point buffer, every module's output on the
example input, and every parameter's first-step gradient, all on the device the model
is on, and leaves the model exactly as it found it (:mod:`initaudit.record.state`).

:func:`inspect` runs the pipeline of this package: tensor records (:mod:`.tensors`), hooks
on every module (:mod:`.hooks`), the loss and Jacobian probe (:mod:`.probe`), the backward
(:mod:`.backward`), the transfer to the host (:mod:`.resolve`) and module records
(:mod:`.modules`).
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

import torch
from torch import nn

from initaudit.core import knowledge
from initaudit.core.progress import SILENT, Progress
from initaudit.core.records import LabelledLoss, Recording, TensorRecord
from initaudit.record import dataflow, distributed, factored, flow, lookahead, transfer
from initaudit.record.backward import first_step_gradients, gradient_status
from initaudit.record.hooks import CallRecorder, forward_with_hooks
from initaudit.record.ignores import declared_ignores
from initaudit.record.modules import declared_init_std, declared_ties, module_records, output_record
from initaudit.record.logits import (cross_entropy_stats, find_cross_entropy, find_labels, find_logits, initial_loss,
                                     labelled_loss)
from initaudit.record.stochastic import Deterministic
from initaudit.record.step import OptimizerSpec, first_steps
from initaudit.record.probe import (LossFn, compute_loss, jacobian_gain, probe_input, random_projection_loss,
                                    zero_output_loss)
from initaudit.record.resolve import resolve
from initaudit.record.state import preserved, seed_torch
from initaudit.record.tensors import Tracked, note_unjudged, tensor_records
from initaudit.record.walk import call_model, names_by_id


def inspect(
    model: nn.Module,
    example_input: Any,
    *,
    loss: Optional[LossFn] = None,
    seed: int = 0,
    run_forward: bool = True,
    run_backward: bool = True,
    progress: Optional[Progress] = None,
    classes: Optional[int] = None,
    labels: Any = None,
    optimizer: Optional[OptimizerSpec] = None,
    steps: int = 1,
) -> Recording:
    """Record statistics of ``model`` on ``example_input``; the model is left untouched.

    ``run_forward=False`` records the parameters alone (no input needed: for models too
    large to run); ``run_backward=False`` runs the forward without gradients.

    The forward runs in training mode (a first training step), with every module's output
    reduced to a few statistics by a forward hook. The backward uses
    ``torch.autograd.grad``, so no parameter's ``.grad`` is written; the weights of linear
    layers that :mod:`~initaudit.record.factored` can stand in for get their gradient's
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
    deferred = transfer.Deferred()
    scalars = transfer.RunValues()  # the loss and the Jacobian gain, once on the host
    linear_grads = factored.LinearGradients() if run_forward and run_backward else None
    recorder = CallRecorder(module_names, deferred, linear_grads)
    # values as the user left them, before a training-mode forward can touch a buffer
    partials = distributed.Partials()
    tensors = tensor_records(param_names, buffer_names, module_names, deferred, partials)
    backward, grads, gain, gain_note, loss_value = False, {}, None, None, None
    stochastic_note: Optional[str] = None
    streams: List[int] = []
    call_reaches: List[Optional[str]] = []
    call_feeds: List[Optional[str]] = []
    call_ends: List[Optional[str]] = []
    sums: List[dataflow.ResidualSum] = []
    with preserved(model):
        if run_forward:
            progress.phase("forward")
            model.train()
            seed_torch(seed)
            x, leaves = probe_input(example_input) if run_backward else (example_input, [])
            calm = Deterministic(model, module_names)
            calm.attach()
            with torch.enable_grad() if run_backward else torch.no_grad():
                try:
                    output = forward_with_hooks(model, x, recorder)
                finally:
                    calm.detach()
                if calm.names:
                    stochastic_note = (f"{len(calm.names)} stochastic module(s) ran as in evaluation mode (dropout, "
                                       f"drop-path: no masks), so that no finding depends on the seed: "
                                       + ", ".join(calm.names[:5]) + (", ..." if len(calm.names) > 5 else ""))
                logits = find_logits(output, classes)
                if logits is not None:
                    classes = logits.shape[-1]
                    deferred.put(scalars, "initial_loss", initial_loss(logits))
                if run_backward:
                    progress.phase("backward")
                    loss_value = compute_loss(output, x, loss, seed)
                # your loss's cross-entropy names the classes and pairs the labels as it scores them
                scored = find_cross_entropy(loss_value) if loss is not None else None
                if scored is not None and logits is None and classes in (None, scored[0].shape[-1]):
                    classes = scored[0].shape[-1]
                    deferred.put(scalars, "initial_loss", initial_loss(scored[0]))
                    logits = scored[0]
                if scored is not None and scored[0].shape[-1] == classes:
                    deferred.put(scalars, "labelled_loss", cross_entropy_stats(*scored))
                elif logits is not None:
                    given = find_labels(example_input, labels)
                    own = output.get("loss") if isinstance(output, dict) else getattr(output, "loss", None)
                    stats = None if given is None else labelled_loss(
                        logits, given, own if isinstance(own, torch.Tensor) and own.numel() == 1 else None)
                    if stats is not None:
                        deferred.put(scalars, "labelled_loss", stats)
                if run_backward:
                    # read before the backward frees the graph
                    streams, call_reaches, call_feeds, call_ends, sums = note_uses(tensors, loss_value, param_names, recorder)
                    probed: Optional[List[Optional[torch.Tensor]]] = None
                    if loss is not None and leaves:
                        # a custom loss says nothing of the Jacobian: probe it with a projection of its own
                        probe = random_projection_loss(output, seed)
                        probed = []
                        if probe is not None:
                            probed = list(torch.autograd.grad(probe, leaves, allow_unused=True, retain_graph=True))
                    backward, grads, input_grads = first_step_gradients(loss_value, param_names, leaves, linear_grads)
                    input_grads = probed if probed is not None else input_grads
                    gain, gain_note = jacobian_gain(output, input_grads, sum(t.numel() for t in leaves))
                    # after the backward: a loss that draws random numbers leaves the gradients alone
                    zero = zero_output_loss(output, x, loss) if logits is None and scored is None else None
                    if zero is not None:
                        deferred.put(scalars, "zero_output_loss", zero, transfer.first)
            if gain is not None:
                deferred.put(scalars, "jacobian_gain", (gain * recorder.pooling).reshape(1), transfer.first)
                if recorder.pooling != 1.0:
                    gain_note = f"corrected for average pooling over {recorder.pooling:g} elements"
        if not run_backward:
            gain_note = "no backward was made"
        gradient_status(tensors, grads, backward, deferred, partials)
        if loss_value is not None:
            deferred.put(scalars, "loss", loss_value.detach().reshape(1).double(), transfer.first)
        resolve(deferred, partials, tensors, param_names, buffer_names, grads)
        if backward:
            look_past_first_step(model, x, loss, seed, tensors, param_names)
        stepped, skipped_steps = None, []
        if optimizer is not None and not (run_forward and run_backward):
            skipped_steps = ["an optimizer was given, but its steps need a forward and a backward: not taken"]
        elif optimizer is not None:
            progress.phase("optimizer steps")
            seed_torch(seed)
            # every layer's output change over the steps: two copies of the layer outputs of one
            # batch, the size of what a training step keeps for its backward
            watch = [name for name, m in model.named_modules() if knowledge.is_layer(m)]
            stepped = first_steps(model, x, loss, seed, optimizer, steps, watch=watch)
            for t in tensors:
                if t.record.name in stepped.updates:
                    t.record.update_ratio = stepped.updates[t.record.name]
        progress.phase("tracing")
        # torch.fx only for what the autograd graph did not place: a frozen layer, or no backward
        placed = loss_value is not None and loss_value.grad_fn is not None
        flows, traced = flow.analyze(model, only=undecided_modules(tensors) if placed else None)

    modules = module_records(module_names, recorder, ignores, flows)
    if run_forward:
        note_unjudged(tensors, set(recorder.calls))
    return Recording(
        tensors=[t.record for t in tensors],
        modules=modules,
        call_order=recorder.calls,
        call_outputs=[output_record(recorder, i) for i in range(len(recorder.calls))],
        declared_ties=declared_ties(model),
        declared_init_std=declared_init_std(_unwrapped_hf(model)),
        backward=backward,
        loss=scalars.loss,
        zero_output_loss=scalars.zero_output_loss,
        classes=classes if scalars.initial_loss is not None else None,
        expected_initial_loss=scalars.initial_loss[0] if scalars.initial_loss is not None else None,
        logit_std=scalars.initial_loss[1] if scalars.initial_loss is not None else None,
        labelled_loss=_labelled(scalars.labelled_loss),
        step_losses=stepped.losses if stepped is not None else None,
        step_optimizer=stepped.optimizer if stepped is not None else None,
        step_own_loss=stepped.own_loss if stepped is not None else False,
        step_output_changes=stepped.output_changes if stepped is not None else None,
        jacobian_gain=scalars.jacobian_gain,
        jacobian_note=gain_note,
        traced=traced,
        start_order=[module_names[key][1][0] for key in sorted(recorder.started, key=recorder.started.get)],
        stream_calls=streams,
        call_reaches=call_reaches,
        call_feeds=call_feeds,
        call_ends=call_ends,
        residual_sums=[list(s) for s in sums],
        unobserved=[m.name for m in modules if m.has_parameters and m.calls == 0] if run_forward else [],
        notes=(["a TorchScript module takes no forward hooks: parameters and gradients are audited, "
                "module outputs (and the signal rules) are not"] if recorder.scripted else []) + skipped_steps
              + ([stochastic_note] if stochastic_note else []),
    )


def look_past_first_step(model: nn.Module, x: Any, loss: Optional[LossFn], seed: int,
                         tensors: List[Tracked], param_names: Any) -> None:
    """Where a parameter's first-step gradient is exactly zero, or a weight's elements are all
    equal, record what the next steps make of it (:mod:`.lookahead`); nothing runs otherwise."""
    params = {key: record for key, record, _ in tensors
              if record.kind == "parameter" and record.requires_grad and record.floating and key in param_names}
    stuck = [key for key, r in params.items() if r.grad is not None and r.grad.norm == 0 and not r.grad.nonfinite]
    constant = [key for key, r in params.items()
                if r.ndim >= 2 and r.numel >= 2 and r.min is not None and r.min == r.max and r.min != 0]
    if not (stuck or constant):
        return
    trainable = {key: param_names[key][0] for key in params}

    def loss_of() -> Optional[torch.Tensor]:
        seed_torch(seed)  # the same dropout masks as the audit's forward
        return compute_loss(call_model(model, x), x, loss, seed)

    with torch.enable_grad():
        moves, spread = lookahead.look_ahead(loss_of, trainable, stuck, constant)
    for key, step in moves.items():
        params[key].moves_at_step = step
    for key, value in spread.items():
        params[key].grad_row_spread = value


def undecided_modules(tensors: List[Tracked]) -> Set[str]:
    """The modules holding a parameter that the autograd graph did not show being used (frozen,
    or off the loss's path), or whose product feeds a leaky ReLU (the graph does not hold its
    slope): what it consumes is left to torch.fx or the call order."""
    return {t.record.module for t in tensors if t.record.kind == "parameter"
            and (t.record.role is None or t.record.feeds == "leaky_relu")}


def note_uses(tensors: List[Tracked], loss_value: Optional[torch.Tensor], param_names: Any,
              recorder: CallRecorder) -> dataflow.CallFacts:
    """Write each parameter's dataflow use (:mod:`.dataflow`) into its record; return the calls
    whose output is a residual stream, each call's reaches, feeds and ends, and the residual sums (as
    ``dataflow.read``).
    A tensor the forward held in a module's place (FSDP2's unsharded parameter) stands for the
    module's parameter of that name."""
    nodes, recorder.output_nodes = recorder.output_nodes, []  # no reference to the graph outlives the walk
    if loss_value is None or loss_value.grad_fn is None:
        return [], [], [], [], []
    key_by_name = {name: key for key, (_, names) in param_names.items() for name in names}
    keys = {key: key for key in param_names}
    for held, (module_key, attr) in recorder.forward_parameters.items():
        module_name = recorder.module_names[module_key][1][0]
        key = key_by_name.get(f"{module_name}.{attr}" if module_name else attr)
        if key is not None:
            keys.setdefault(held, key)
    uses, facts = dataflow.read([loss_value], keys, nodes)
    for key, record, _ in tensors:
        use = uses.get(key)
        if record.kind != "parameter" or use is None:
            continue
        record.role, record.consumer_op, record.feeds, record.branch = use.role, use.op, use.feeds, use.branch
        record.normalized_by = use.normalized_by
        record.reaches, record.stream_reaches = use.reaches, use.stream_reaches
        record.input_normalized = use.input_normalized
        if use.input_call is not None and use.input_call < len(recorder.calls):
            record.input_from = recorder.calls[use.input_call]
        if use.fan_in is not None and record.module_type not in knowledge.LAYER_NAMES:
            record.layer_fan_in = use.fan_in  # a raw parameter in a product: the fan the product sums over
        record.next_weights = [param_names[k][1][0] for k in use.next_weights if k in param_names]
        if use.gradient_weights is not None:
            record.gradient_weights = [param_names[k][1][0] for k in use.gradient_weights if k in param_names]
    return facts


def _labelled(values: Optional[List[float]]) -> Optional[LabelledLoss]:
    """:func:`~initaudit.record.logits.labelled_loss`'s numbers, or ``None`` without a
    scored row."""
    if values is None or not values[4] >= 1:
        return None
    loss, shuffled, noise, entropy, rows = values
    return LabelledLoss(loss, shuffled, noise, entropy, int(rows))


def _unwrapped_hf(model: nn.Module) -> nn.Module:
    """The model, or the one submodule that declares its own init (a PEFT model's base, a
    wrapper holding a Hugging Face model as an attribute)."""
    if declared_init_std(model) is not None:
        return model
    declaring = [m for m in model.modules() if declared_init_std(m) is not None]
    return declaring[0] if declaring else model


def parameter_statistics(model: nn.Module) -> List[TensorRecord]:
    """The parameter pass alone, exactly as :func:`inspect` makes it (no forward, no rules).

    Every parameter's and floating buffer's summary, fingerprint statistics, clones and
    aliases; what ``--params-only`` reads, and what ``benchmarks/`` times against one read
    of the parameters.
    """
    param_names = names_by_id(model.named_parameters(remove_duplicate=False))
    buffer_names = names_by_id(model.named_buffers(remove_duplicate=False))
    module_names = names_by_id(model.named_modules(remove_duplicate=False))
    deferred, partials = transfer.Deferred(), distributed.Partials()
    tensors = tensor_records(param_names, buffer_names, module_names, deferred, partials)
    resolve(deferred, partials, tensors, param_names, buffer_names, {})
    return [t.record for t in tensors]
