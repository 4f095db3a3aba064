"""The audit makes a constant number of host transfers, however many parameters there are."""

import pytest
import torch
from torch import nn

from initaudit import audit

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


def wide(layers, width):
    blocks = []
    for _ in range(layers):
        blocks += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*blocks)


# 8 wide on 16 rows: weight gradients formed by autograd; 64 wide on 4 rows: from their
# factors (initaudit.factored), reduced in hooks during the backward
@pytest.mark.parametrize("width,rows", [(8, 16), (64, 4)], ids=["formed", "factored"])
def test_transfers_do_not_grow_with_the_number_of_parameters(monkeypatch, width, rows):
    torch.manual_seed(0)
    x = torch.randn(rows, width)
    one = nn.Sequential(nn.Linear(width, width, bias=False))  # 1 parameter
    many = wide(250, width)  # 500 parameters
    small, large = count_transfers(one, x, monkeypatch), count_transfers(many, x, monkeypatch)
    assert len(list(many.parameters())) == 500
    assert small >= 1  # the one transfer of all statistics is seen, so the patch counts
    assert small == large, (small, large)
