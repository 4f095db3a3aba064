"""An audit never changes the model: property-based, over randomly generated architectures.

CI runs a modest number of examples; INITAUDIT_LONG=1 (or `pytest --long`) runs thousands.
"""

import os
import random

import numpy
import pytest
import torch
import torch.utils.checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from initaudit import audit

LONG = os.environ.get("INITAUDIT_LONG") == "1"
EXAMPLES = 2000 if LONG else 25

ACTIVATIONS = [nn.ReLU, nn.Tanh, nn.GELU, nn.SiLU, nn.Sigmoid, lambda: nn.LeakyReLU(0.1), nn.Identity]


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Checkpointed(nn.Module):
    """A residual body under reentrant checkpointing: a custom autograd Function whose backward
    writes its parameters' .grad itself (the audit then goes through .grad, and must put it back)."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + torch.utils.checkpoint.checkpoint(self.body, x, use_reentrant=True)


class DropPath(nn.Module):
    """Stochastic depth without parameters: found stochastic by behaviour, run deterministically."""

    def forward(self, x):
        if not self.training:
            return x
        return x * (torch.rand(x.shape[0], *([1] * (x.dim() - 1))) >= 0.5).to(x.dtype) * 2


class Recurrent(nn.Module):
    def __init__(self, cell, vocab, width):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.rnn = cell(width, width, batch_first=True)
        self.head = nn.Linear(width, 3)

    def forward(self, ids):
        return self.head(self.rnn(self.embed(ids))[0])


@st.composite
def architectures(draw):
    """(model, example input): MLP, CNN or recurrent stacks with shared and frozen parts."""
    kind = draw(st.sampled_from(["mlp", "cnn", "rnn"]))
    width = draw(st.sampled_from([4, 8, 16]))
    if kind == "rnn":
        model = Recurrent(draw(st.sampled_from([nn.LSTM, nn.GRU])), 20, width)
        x = torch.randint(0, 20, (4, 5))
    else:
        layers = []
        conv = kind == "cnn"
        channels = width
        layers.append(nn.Conv2d(3, width, 3, padding=1) if conv else nn.Linear(6, width))
        shared = None
        for _ in range(draw(st.integers(1, 4))):
            block_kind = draw(st.sampled_from(["layer", "norm", "dropout", "residual", "shared", "drop_path",
                                               "checkpoint"]))
            act = draw(st.sampled_from(ACTIVATIONS))()
            if block_kind == "layer":
                layer = nn.Conv2d(channels, width, 3, padding=1) if conv else nn.Linear(width, width)
                channels = width
                layers += [layer, act]
            elif block_kind == "norm":
                layers.append(nn.BatchNorm2d(channels) if conv else draw(st.sampled_from([nn.BatchNorm1d, nn.LayerNorm]))(width))
            elif block_kind == "dropout":
                layers.append(nn.Dropout(0.3))
            elif block_kind == "residual":
                body = nn.Conv2d(channels, channels, 3, padding=1) if conv else nn.Linear(width, width)
                layers.append(Residual(nn.Sequential(body, act)))
            elif block_kind == "drop_path":
                layers.append(DropPath())
            elif block_kind == "checkpoint":
                body = nn.Conv2d(channels, channels, 3, padding=1) if conv else nn.Linear(width, width)
                layers.append(Checkpointed(nn.Sequential(body, act)))
            else:
                shared = shared or (nn.Conv2d(channels, channels, 1) if conv else nn.Linear(width, width))
                layers += [shared, act]  # the same module object, possibly again later
        if conv:
            layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 3)]
            x = torch.randn(4, 3, 8, 8)
        else:
            layers.append(nn.Linear(width, 3))
            x = torch.randn(4, 6)
        model = nn.Sequential(*layers)
    params = list(model.parameters())
    for p in params:
        if draw(st.booleans()) and draw(st.booleans()):
            p.requires_grad_(False)
        elif draw(st.booleans()):
            p.grad = torch.full_like(p, 0.5)  # an earlier step's gradient: must survive untouched
    for m in model.modules():
        m.training = draw(st.booleans())
    return model, x


def snapshot(model):
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "grads": [(p, p.grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()],
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": numpy.random.get_state()[1].copy(),
    }


def assert_unchanged(model, before):
    after = model.state_dict(keep_vars=True)
    assert before["state"].keys() == after.keys()
    for key, value in before["state"].items():
        assert torch.equal(after[key].detach(), value), f"{key} changed"
    for p, grad, grad_value in before["grads"]:
        assert p.grad is grad, "a .grad object was replaced"
        if grad is not None:
            assert torch.equal(grad, grad_value), "an existing gradient changed"
    assert [p.requires_grad for p in model.parameters()] == before["requires_grad"]
    assert [m.training for m in model.modules()] == before["training"]
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()] == before["hooks"]
    assert torch.equal(torch.get_rng_state(), before["torch_rng"])
    assert random.getstate() == before["python_rng"]
    assert (numpy.random.get_state()[1] == before["numpy_rng"]).all()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(architectures(), st.integers(0, 3))
def test_audit_changes_nothing(arch, seed):
    model, x = arch
    torch.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed)
    before = snapshot(model)
    audit(model, x, seed=seed)
    assert_unchanged(model, before)


class Interrupting(nn.Module):
    """Updates BatchNorm's running statistics, then raises in the middle of the forward."""

    def __init__(self, exc):
        super().__init__()
        self.bn = nn.BatchNorm1d(4)
        self.lin = nn.Linear(4, 4)
        self.exc = exc

    def forward(self, x):
        x = self.bn(x)
        torch.rand(3)  # consumes the RNG before failing
        raise self.exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")], ids=["ctrl-c", "error"])
def test_audit_that_raises_or_is_interrupted_changes_nothing(exc):
    model = Interrupting(exc).eval()
    x = torch.randn(8, 4)
    before = snapshot(model)
    with pytest.raises(type(exc) if isinstance(exc, KeyboardInterrupt) else Exception):
        audit(model, x)
    assert_unchanged(model, before)
