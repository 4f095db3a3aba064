"""The inspector's hooks reduce each module output to statistics and keep no reference to it.

A hook that stashed an output (or a view of one, which holds its base) would keep every
activation of the forward alive at once: a model that trains would no longer fit to be
audited. Weak references to the outputs tell whether anything still holds them.
"""

import gc
import weakref
from typing import Callable, List, Tuple

import pytest
import torch
from torch import nn

from initaudit import audit


def watch_outputs(model: nn.Module, on_output: Callable[[int, nn.Module, torch.Tensor], None]) -> List:
    """Forward hooks (registered before the audit's, so they run first) on every submodule."""
    handles = []
    for index, module in enumerate(model.modules()):
        def hook(module, args, output, index=index):
            if isinstance(output, torch.Tensor):
                on_output(index, module, output)
        handles.append(module.register_forward_hook(hook))
    return handles


def model_and_input() -> Tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.LayerNorm(64), nn.ReLU(),
        nn.Sequential(nn.Linear(64, 64), nn.Tanh()),
        nn.Linear(64, 64), nn.GELU(),
        nn.Linear(64, 10),
    )
    return model, torch.randn(16, 32)


@pytest.mark.parametrize("no_backward", [False, True], ids=["backward", "no_backward"])
def test_no_module_output_outlives_the_audit(no_backward):
    model, x = model_and_input()
    refs: List[Tuple[int, str, weakref.ref]] = []
    handles = watch_outputs(model, lambda i, m, out: refs.append((i, type(m).__name__, weakref.ref(out))))
    try:
        report = audit(model, x, no_backward=no_backward)
    finally:
        for h in handles:
            h.remove()
    gc.collect()
    # every module ran once and was seen, the whole model included
    assert len(refs) == len(list(model.modules())), refs
    assert report.recording.call_outputs and all(o is not None for o in report.recording.call_outputs)
    alive = [(i, name) for i, name, ref in refs if ref() is not None]
    assert alive == [], f"module outputs still alive after audit(): {alive}"


def test_an_earlier_output_is_freed_while_the_forward_runs():
    """Under ``no_grad`` nothing but a hook could hold layer 0's output by the last layer."""
    torch.manual_seed(0)
    layers = []
    for _ in range(6):
        layers += [nn.Linear(64, 64), nn.ReLU()]
    model = nn.Sequential(*layers)
    x = torch.randn(16, 64)
    last = len(layers) - 1
    refs = {}
    seen_at_last: List[List[int]] = []

    def on_output(index, module, out):
        if index == 0:
            return  # the Sequential itself: its output is the last layer's
        position = index - 1  # model.modules() yields the Sequential first
        refs[position] = weakref.ref(out)
        if position == last:
            gc.collect()
            seen_at_last.append([p for p, ref in sorted(refs.items()) if ref() is not None])

    handles = watch_outputs(model, on_output)
    try:
        audit(model, x, no_backward=True)
    finally:
        for h in handles:
            h.remove()
    assert len(seen_at_last) == 1, "the last layer's hook did not run exactly once"
    alive = seen_at_last[0]
    # the last layer's input (the output before it) and its own output are held by the
    # forward itself; everything earlier must already be gone
    assert alive == [last - 1, last], f"outputs alive while layer {last} runs: {alive}"
    assert 0 not in alive


def test_factored_linear_layers_keep_neither_input_nor_output(monkeypatch):
    """The factored weight gradients (initaudit.factored) keep a Gram of each layer's input
    from the forward to the backward, not the input; watched through pre-hooks only, since
    another forward hook on a layer would stop it being factored."""
    from initaudit.record import factored

    torch.manual_seed(0)
    layers = []
    for _ in range(4):
        layers += [nn.Linear(128, 128), nn.ReLU()]
    model = nn.Sequential(*layers)
    refs = []

    def keep(module, args):
        refs.append((type(module).__name__, weakref.ref(args[0])))

    handles = [m.register_forward_pre_hook(keep) for m in model]
    planned = []
    real_plan = factored.LinearGradients.plan
    monkeypatch.setattr(factored.LinearGradients, "plan", lambda self, *a: planned.append(real_plan(self, *a)) or planned[-1])
    try:
        audit(model, torch.randn(8, 128))
    finally:
        for h in handles:
            h.remove()
    gc.collect()
    assert planned and len(planned[0]) == 4  # every weight was factored
    assert len(refs) == 8  # each Linear's input, each ReLU's input (a Linear's output)
    alive = [name for name, ref in refs if ref() is not None]
    assert alive == [], f"layer inputs or outputs still alive after audit(): {alive}"
