"""The audit makes a constant number of host transfers, however many parameters there are."""

import pytest
import torch
from torch import nn

from initaudit import audit
from initaudit.record import lookahead

PATCHED = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def count_transfers(model, x, monkeypatch):
    counts = {"n": 0}
    for name in PATCHED:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, __original=original, **kwargs):
            counts["n"] += 1
            return __original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    try:
        audit(model, x)
    finally:
        monkeypatch.undo()
    return counts["n"]


def wide(layers, width, init=None):
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
        if init is not None:
            init(blocks[-2].weight)
    return nn.Sequential(*blocks)


def orthogonal_he(weight):
    """Norm-preserving for ReLU: 250 layers keep a gradient everywhere (PyTorch's default init
    loses it to exact zeros there, which makes the audit look a few steps ahead)."""
    nn.init.orthogonal_(weight, gain=2 ** 0.5)


# 8 wide on 16 rows: weight gradients formed by autograd; 64 wide on 4 rows: from their
# factors (initaudit.factored), reduced in hooks during the backward
@pytest.mark.parametrize("width,rows", [(8, 16), (64, 4)], ids=["formed", "factored"])
def test_transfers_do_not_grow_with_the_number_of_parameters(monkeypatch, width, rows):
    torch.manual_seed(0)
    x = torch.randn(rows, width)
    one = nn.Sequential(nn.Linear(width, width, bias=False))  # 1 parameter
    many = wide(250, width, orthogonal_he)  # 500 parameters
    small, large = count_transfers(one, x, monkeypatch), count_transfers(many, x, monkeypatch)
    assert len(list(many.parameters())) == 500
    assert small >= 1  # the one transfer of all statistics is seen, so the patch counts
    assert small == large, (small, large)


def test_the_look_ahead_adds_one_transfer_per_step_whatever_the_number_of_stuck_parameters(monkeypatch):
    """PyTorch's default init loses a 250-layer ReLU stack's gradient to exact zeros, and the audit
    steps ahead to see whether they stay so: one transfer per step taken, not one per parameter."""
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    healthy = count_transfers(nn.Sequential(nn.Linear(8, 8, bias=False)), x, monkeypatch)
    torch.manual_seed(0)
    stuck = wide(250, 8)
    looked = count_transfers(stuck, x, monkeypatch)
    zero = [t for t in audit(stuck, x).recording.parameters if t.grad is not None and t.grad.norm == 0]
    assert len(zero) > 100 and all(t.moves_at_step is not None for t in zero)  # looked at, each
    assert healthy < looked <= healthy + lookahead.STEPS, (healthy, looked)
