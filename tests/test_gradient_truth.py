"""Gradient findings that match what training sees (issue 21): gradients a custom autograd
Function writes itself; stochastic layers; structural zeros."""

import pytest
import torch
from conftest import codes, findings
from torch import nn
from torch.utils.checkpoint import checkpoint

from initaudit import audit


class ReversibleAdd(torch.autograd.Function):
    """``y = x + f(x)`` computed without a graph and recomputed in the backward, which calls
    ``torch.autograd.backward`` itself: ``f``'s parameters get their gradient through
    ``.grad`` only, as in reversible layers (RevNet, Reformer)."""

    @staticmethod
    def forward(ctx, x, f, *params):
        ctx.f = f
        ctx.save_for_backward(x)
        with torch.no_grad():
            return x + f(x)

    @staticmethod
    def backward(ctx, grad_y):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            torch.autograd.backward(x + ctx.f(x), grad_y)
        return (x.grad, None) + (None,) * len(list(ctx.f.parameters()))


class Reversible(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x):
        return ReversibleAdd.apply(x, self.f, *self.f.parameters())


class Checkpointed(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))

    def forward(self, x):
        return x + checkpoint(self.f, x, use_reentrant=True)  # the reentrant form: its own backward


class Unused(nn.Module):
    """A block with a parameter the forward never uses: a true IA301 next to the others."""

    def __init__(self, block):
        super().__init__()
        self.block, self.spare = block, nn.Linear(16, 16)

    def forward(self, x):
        return self.block(x)


@pytest.mark.parametrize("block", [Reversible, Checkpointed])
def test_gradients_a_custom_function_writes_itself_are_seen(block):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), Unused(block(16)), block(16), nn.Linear(16, 4))
    x = torch.randn(32, 8)
    # the user's .grad, which the audit's .backward() must put back exactly
    model(x).sum().backward()
    held = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters() if p.grad is not None}
    report = audit(model, x)
    no_gradient = {f.location for f in findings(report, "IA301")}
    assert no_gradient == {"1.spare.weight", "1.spare.bias"}, no_gradient  # only the parameter truly unused
    grads = {t.name: t.grad for t in report.recording.parameters}
    assert grads["2.f.0.weight"] is not None and grads["2.f.0.weight"].norm > 0
    for n, p in model.named_parameters():
        if n in held:
            assert p.grad is held[n][0] and torch.equal(p.grad, held[n][1]), n
        else:
            assert p.grad is None, n
    # the optimizer's first step moves them too
    stepped = audit(model, x, optimizer="SGD(lr=0.1)")
    assert next(t for t in stepped.recording.parameters if t.name == "1.block.f.0.weight").update_ratio > 0


class DropPath(nn.Module):
    """Stochastic depth as libraries write it (no parameters, a per-example mask in training)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = (torch.rand(x.shape[0], *([1] * (x.dim() - 1))) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    def __init__(self, width, p):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Dropout(0.3), nn.Linear(width, width))
        self.drop = DropPath(p)

    def forward(self, x):
        return x + self.drop(self.f(x))


def stochastic_depth_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), *[Block(16, 0.5) for _ in range(6)], nn.Linear(16, 3))


def gradient_findings(report):
    return sorted((f.code, f.location) for f in report.findings if f.code.startswith("IA3"))


def test_gradient_findings_do_not_depend_on_the_seed_of_dropout_and_drop_path():
    model, x = stochastic_depth_net(), torch.randn(2, 8)  # a batch of two: a block is often dropped for both
    reports = [audit(model, x, seed=seed) for seed in range(5)]
    assert all(gradient_findings(r) == gradient_findings(reports[0]) for r in reports), \
        [gradient_findings(r) for r in reports]
    assert gradient_findings(reports[0]) == []  # every block trains
    note = next(n for n in reports[0].notes if "stochastic" in n)
    assert note.startswith("12 stochastic") and "1.f.2" in note  # 6 dropouts by class, 6 drop-paths by behaviour
    # modes as they were: every module still in training mode after the audit
    assert all(m.training for m in model.modules())
    # normalization still sees the batch: a BatchNorm's running statistics are the audit's to restore
    bn = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), DropPath(0.5), nn.Linear(16, 3))
    before = bn[1].running_mean.clone()
    audit(bn, torch.randn(4, 8))
    assert torch.equal(bn[1].running_mean, before) and all(m.training for m in bn.modules())


def test_stochastic_depth_whose_rate_grows_from_zero_is_found_in_every_block_that_drops():
    # stochastic depth's rate grows linearly with the depth, from 0 at the first block: one
    # verdict per kind of module (class and attributes), so the first, deterministic, decides
    # nothing for the others
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), *[Block(16, 0.1 * i) for i in range(6)], nn.Linear(16, 3))
    for block in model[1:7]:
        block.f[2].p = 0.0  # only the drop-paths here
    note = next(n for n in audit(model, torch.randn(2, 8)).notes if "stochastic" in n)
    assert note.startswith("5 stochastic") and "2.drop" in note and "1.drop" not in note


class CountingGELU(nn.Module):
    """A library's activation module (no parameters, not a torch class): deterministic."""

    calls = 0

    def forward(self, x):
        CountingGELU.calls += 1
        return torch.nn.functional.gelu(x)


def test_a_library_activation_used_in_every_block_is_tested_once():
    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(8) for m in (nn.Linear(16, 16), CountingGELU())], nn.Linear(16, 3))
    x = torch.randn(4, 16)
    CountingGELU.calls = 0
    model(x)
    plain = CountingGELU.calls  # 8: one call each
    CountingGELU.calls = 0
    report = audit(model, x)
    assert not any("stochastic" in n for n in report.notes)
    # the audit's forward, and the behavioural test (two calls) of the first one only
    assert plain == 8 and CountingGELU.calls == plain + 2


def test_a_deterministic_parameter_free_module_is_left_as_it_is():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    report = audit(model, torch.randn(4, 8))
    assert not any("stochastic" in n for n in report.notes)


@pytest.mark.parametrize("norm", [nn.BatchNorm2d, nn.InstanceNorm2d])
def test_a_bias_before_a_batch_norm_cannot_train_whatever_the_last_bit(norm):
    verdicts = set()
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), norm(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), norm(8),
                              nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 4))
        report = audit(model, torch.randn(4, 3, 8, 8), seed=seed)
        found = [f for f in findings(report, "IA302")]
        verdicts.add(tuple((f.severity, tuple(f.locations)) for f in found))
        (f,) = found
        assert "normalized away" in f.message and "'1'" in f.message and f.severity == "info"
        assert report.ok("warning")
    assert verdicts == {(("info", ("0.bias",)),)}


def test_a_bias_before_a_layer_norm_trains_and_is_not_reported():
    # LayerNorm subtracts the mean over the features, which a per-feature bias is not constant along
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 4))
    report = audit(model, torch.randn(16, 8))
    assert "IA302" not in codes(report)
    assert next(t for t in report.recording.parameters if t.name == "0.bias").grad.norm > 1e-3


class Attention(nn.Module):
    """Single-head self-attention with separate projections: the key's bias adds ``q . b_k`` to
    every score of a row, which the softmax over positions removes."""

    def __init__(self, width=32):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) / x.shape[-1] ** 0.5
        return x + self.o(torch.softmax(scores, dim=-1) @ self.v(x))


def test_a_bias_whose_gradient_cancels_is_one_verdict_whatever_the_last_bit():
    verdicts = set()
    for seed in range(4):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(8, 32), Attention(), nn.LayerNorm(32), nn.Linear(32, 4))
        report = audit(model, torch.randn(4, 10, 8), seed=seed)
        grad = next(t.grad.norm for t in report.recording.parameters if t.name == "1.k.bias")
        assert grad < 1e-6  # zero in exact arithmetic: rounding, or exactly zero
        verdicts.add(tuple((f.severity, tuple(f.locations)) for f in findings(report, "IA302")))
        assert report.ok("warning")
    assert verdicts == {(("info", ("1.k.bias",)),)}  # the query's and value's biases train
