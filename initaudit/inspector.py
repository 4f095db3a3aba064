"""Hook-based inspector: one forward and one backward, statistics of everything.

It records every parameter and floating-point buffer, every module's output on the
example input, and every parameter's first-step gradient, all on the device the model
is on, and leaves the model exactly as it found it (:mod:`initaudit.state`).
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Set, Tuple

import torch
from torch import nn

from . import activations, stats
from .errors import ForwardError, describe, user_frame
from .records import GradientRecord, ModuleRecord, OutputRecord, Recording, TensorRecord
from .state import preserved, seed_torch

LossFn = Callable[[Any, Any], torch.Tensor]

# gate blocks stacked along dim 0 of recurrent weights and biases
_GATES: Dict[type, int] = {nn.LSTM: 4, nn.LSTMCell: 4, nn.GRU: 3, nn.GRUCell: 3}
_GATED_PREFIXES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


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


def _names(items: Iterator[Tuple[str, Any]]) -> "OrderedDict[int, Tuple[Any, List[str]]]":
    by_id: "OrderedDict[int, Tuple[Any, List[str]]]" = OrderedDict()
    for name, obj in items:
        if obj is None:
            continue
        by_id.setdefault(id(obj), (obj, []))[1].append(name)
    return by_id


def _owner(name: str) -> Tuple[str, str]:
    module, _, attr = name.rpartition(".")
    return module, attr


def _call(model: nn.Module, example_input: Any) -> Any:
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


def inspect(
    model: nn.Module,
    example_input: Any,
    *,
    loss: Optional[LossFn] = None,
    seed: int = 0,
) -> Recording:
    """Record statistics of ``model`` on ``example_input``; the model is left untouched.

    The forward runs in training mode (a first training step), with every module's output
    reduced to a few statistics by a forward hook. The backward uses
    ``torch.autograd.grad``, so no parameter's ``.grad`` is written.
    """
    param_names = _names(model.named_parameters(remove_duplicate=False))
    buffer_names = _names(model.named_buffers(remove_duplicate=False))
    module_names = _names(model.named_modules(remove_duplicate=False))
    modules_by_id = {i: m for i, (m, _) in module_names.items()}

    deferred = stats.Deferred()
    calls: List[str] = []
    call_counts: Dict[int, int] = {}
    first_call: Dict[int, int] = {}
    output_meta: Dict[int, Tuple[Tuple[int, ...], str]] = {}
    running: List[int] = []  # modules whose forward has started and not returned
    handles = []

    def pre_hook(module: nn.Module, args: Any) -> None:
        running.append(id(module))

    def post_hook(module: nn.Module, args: Any, output: Any) -> None:
        key = id(module)
        if running and running[-1] == key:
            running.pop()
        call_counts[key] = call_counts.get(key, 0) + 1
        calls.append(module_names[key][1][0])
        if key in first_call:
            return
        first_call[key] = len(calls) - 1
        out = next(floating_tensors(output), None)
        if out is not None and not out.is_complex():
            output_meta[key] = (tuple(out.shape), str(out.dtype).replace("torch.", ""))
            deferred.add(("out", key), stats.output_summary(out))

    loss_value: Optional[torch.Tensor] = None
    grads: Dict[int, Optional[torch.Tensor]] = {}
    backward = False
    # values as the user left them, before a training-mode forward can touch a buffer
    tensors = _tensor_records(param_names, buffer_names, module_names, deferred)
    with preserved(model):
        try:
            for key, module in modules_by_id.items():
                handles.append(module.register_forward_pre_hook(pre_hook))
                handles.append(module.register_forward_hook(post_hook))
            model.train()
            seed_torch(seed)
            with torch.enable_grad():
                try:
                    output = _call(model, example_input)
                except Exception as exc:
                    where = _failing_module(running, module_names, modules_by_id)
                    raise ForwardError(
                        f"forward of {type(model).__name__} failed{where}: {describe(exc)}",
                        user_frame(exc),
                    ) from exc
                running.clear()
                for h in handles:
                    h.remove()
                handles.clear()
                try:
                    loss_value = loss(output, example_input) if loss else random_projection_loss(output, seed)
                except Exception as exc:
                    raise ForwardError(f"the loss function failed: {describe(exc)}", user_frame(exc)) from exc
                if loss_value is not None and not (
                    isinstance(loss_value, torch.Tensor) and loss_value.numel() == 1
                ):
                    raise ForwardError(
                        f"the loss function returned {type(loss_value).__name__}"
                        f"{tuple(loss_value.shape) if isinstance(loss_value, torch.Tensor) else ''},"
                        " expected a scalar tensor"
                    )
                trainable = [
                    (i, p)
                    for i, (p, _) in param_names.items()
                    if p.requires_grad and p.is_floating_point()
                ]
                if loss_value is not None and loss_value.requires_grad and trainable:
                    try:
                        result = torch.autograd.grad(
                            loss_value.reshape(()),
                            [p for _, p in trainable],
                            allow_unused=True,
                        )
                    except Exception as exc:
                        raise ForwardError(f"the backward failed: {describe(exc)}", user_frame(exc)) from exc
                    backward = True
                    grads = {i: g for (i, _), g in zip(trainable, result)}
                elif trainable:
                    backward = True  # the loss does not depend on any parameter
                    grads = {i: None for i, _ in trainable}
            _gradient_status(tensors, grads, backward, deferred)
            loss_scalar = None
            if loss_value is not None:
                deferred.add("loss", loss_value.detach().reshape(1).double())
            values = deferred.resolve()
        finally:
            for h in handles:
                h.remove()

    for key, record in tensors:
        _fill(record, values, key)
    if "loss" in values:
        loss_scalar = values["loss"][0]

    module_records = []
    for key, (module, names) in module_names.items():
        kind, act = activations.classify(module)
        record = ModuleRecord(
            names=names,
            type=type(module).__name__,
            kind=kind,
            activation=act.name if act else None,
            activation_param=act.param if act else 0.0,
            leaf=next(module.children(), None) is None,
            has_parameters=next(module.parameters(recurse=False), None) is not None,
            calls=call_counts.get(key, 0),
            first_call=first_call.get(key),
        )
        if ("out", key) in values:
            shape, dtype = output_meta[key]
            record.output = OutputRecord(shape, dtype, *values[("out", key)])
        module_records.append(record)

    called = {name for name in calls}
    for key, record in tensors:
        if record.kind != "parameter":
            continue
        if not record.floating:
            record.notes.append("not floating point: value and gradient rules not applied")
        elif not record.requires_grad:
            record.notes.append("frozen (requires_grad=False): gradient rules not applied")
        if record.module not in called and record.grad is None and record.floating:
            record.notes.append(f"not reached by the forward: module '{record.module}' was never called")

    parameterized = [
        m for m in module_records if m.has_parameters and m.first_call is not None
    ]
    output_layer = max(parameterized, key=lambda m: m.first_call).name if parameterized else None
    return Recording(
        tensors=[r for _, r in tensors],
        modules=module_records,
        call_order=calls,
        output_layer=output_layer,
        declared_ties=declared_ties(model),
        backward=backward,
        loss=loss_scalar,
    )


def _failing_module(running: List[int], module_names: Dict[int, Any], modules: Dict[int, nn.Module]) -> str:
    if not running:
        return ""
    key = running[-1]
    name = module_names[key][1][0]
    if name == "":
        return ""
    return f" in module '{name}' ({type(modules[key]).__name__})"


def _tensor_records(
    param_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    buffer_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    module_names: "OrderedDict[int, Tuple[Any, List[str]]]",
    deferred: stats.Deferred,
) -> List[Tuple[int, TensorRecord]]:
    modules_by_name = {}
    for module, names in module_names.values():
        for n in names:
            modules_by_name[n] = module
    records = []
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
                module_type=type(owner).__name__ if owner is not None else "",
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
            if floating:
                deferred.add(("param", key), stats.tensor_summary(t))
                gates = _GATES.get(type(owner)) if owner is not None else None
                if gates and attr.startswith(_GATED_PREFIXES) and t.shape[0] % gates == 0:
                    deferred.add(("gates", key), stats.chunk_means(t, gates))
            records.append((key, record))
    return records


def _gradient_status(
    records: List[Tuple[int, TensorRecord]],
    grads: Dict[int, Optional[torch.Tensor]],
    backward: bool,
    deferred: stats.Deferred,
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
            deferred.add(("grad", key), stats.gradient_summary(grads[key]))


def _fill(record: TensorRecord, values: Dict[Any, List[float]], key: int) -> None:
    summary = values.get(("param", key))
    if summary is not None:
        mean, std, lo, hi, zeros, nonfinite = summary
        record.mean, record.std, record.min, record.max = mean, std, lo, hi
        record.zero_fraction = zeros / record.numel if record.numel else None
        record.nonfinite = int(nonfinite)
    gates = values.get(("gates", key))
    if gates is not None:
        record.gate_means = gates
    grad = values.get(("grad", key))
    if grad is not None:
        record.grad = GradientRecord(norm=grad[0], std=grad[1], nonfinite=int(grad[2]))
