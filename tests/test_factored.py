"""Linear weights' first-step gradients from their factors (initaudit.factored).

Every statistic is checked against the gradient formed the ordinary way: ``D^T X`` by hand
for the formulas, ``torch.autograd.grad`` of the audit's own loss for whole audits. Which
weights are factored is read from the inspector's own gradient step, so each case that must
not be factored (a layer reused, a tied or otherwise shared weight, a hooked one) is seen to
fall back, and its gradient is still checked.
"""

import math
from typing import Dict, List

import pytest
import torch
from torch import nn

from initaudit import audit
from initaudit.record import backward, factored, hooks, staging, transfer, walk
from initaudit.record.probe import probe_input, random_projection_loss
from initaudit.stats import reduce


def formed(d: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return d.double().T @ x.double()


def row_of(d: torch.Tensor, x: torch.Tensor) -> List[float]:
    numel = d.shape[1] * x.shape[1]
    return factored.gradient_row(factored.factors(d), factored.factors(x), numel).tolist()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sum_and_squared_norm_equal_the_formed_gradient(dtype):
    torch.manual_seed(0)
    d, x = torch.randn(16, 40, dtype=dtype), torch.relu(torch.randn(16, 24, dtype=dtype))
    total, squares, nonfinite = row_of(d, x)
    g = formed(d, x)
    assert total == pytest.approx(g.sum().item(), rel=1e-5, abs=1e-9)
    assert squares == pytest.approx(g.square().sum().item(), rel=1e-6)
    assert nonfinite == 0


def test_nonfinite_count_equals_the_formed_gradients():
    torch.manual_seed(0)
    d, x = torch.randn(6, 5), torch.randn(6, 7)
    x[2, 3] = math.nan  # input column 3: every G[:, 3]
    d[4, 1] = math.inf  # output column 1: every G[1, :], also where it meets an exact 0
    x[4, 6] = 0.0
    d[0, 2] = -math.inf
    g = d.T @ x  # float32, as autograd forms it
    expected = int((~torch.isfinite(g)).sum())
    assert expected == 5 * 7 - (5 - 2) * (7 - 1)  # by hand: rows 1 and 2, column 3
    assert row_of(d, x)[2] == expected
    norm, std, nonfinite = factored.gradient_from_row(35, row_of(d, x))
    assert nonfinite == expected and math.isnan(norm) and math.isnan(std)


def test_finite_columns_are_counted_exactly_however_large_their_values(monkeypatch):
    """A column of huge finite values whose plain float32 sum overflows is still finite;
    counted a block of columns at a time, as for inputs wider than one slice."""
    x = torch.ones(4, 9)
    x[:, 2] = 3e38  # the column sum, 1.2e39, is no float32
    x[1, 5] = math.inf
    x[3, 7] = math.nan
    assert not torch.isfinite(x[:, 2].sum())
    for slice_elements in (1 << 19, 8, 1):  # one block; two columns per block; one
        monkeypatch.setattr(reduce, "_SLICE_CPU", slice_elements)
        assert int(factored.factors(x)[2]) == 9 - 2


def test_exact_zero_gradient_stays_exactly_zero():
    """IA302 asks for ``norm == 0``: rows where either factor is zero add nothing, not rounding."""
    d, x = torch.randn(8, 32), torch.randn(8, 16)
    d[:4] = 0.0
    x[4:] = 0.0
    assert torch.equal(formed(d, x), torch.zeros(32, 16, dtype=torch.float64))
    total, squares, _ = row_of(d, x)
    assert total == 0.0 and squares == 0.0


def test_std_of_a_nearly_constant_gradient_float32_unknown_float64_kept():
    torch.manual_seed(0)
    noise = 3e-4  # var / second moment about 2e-8: below float32 Grams, within float64 ones
    d = torch.ones(8, 32, dtype=torch.float64) + noise * torch.randn(8, 32, dtype=torch.float64)
    x = torch.ones(8, 16, dtype=torch.float64) + noise * torch.randn(8, 16, dtype=torch.float64)
    g = formed(d, x)
    assert g.std(unbiased=False).item() / g.abs().mean().item() < 1e-3  # the entries nearly equal
    norm32, std32, _ = factored.gradient_from_row(g.numel(), row_of(d.float(), x.float()), "float32")
    assert norm32 == pytest.approx(g.norm().item(), rel=1e-6)
    assert math.isnan(std32)  # its digits are gone in float32 Grams: said, not guessed
    norm64, std64, _ = factored.gradient_from_row(g.numel(), row_of(d, x), "float64")
    assert std64 == pytest.approx(g.std(unbiased=False).item(), rel=1e-3)


def test_worthwhile_by_hand():
    """2 N (in + out) <= in out, and 8 N^2 <= in out."""
    assert factored.worthwhile(64, 1024, 1024)  # 2*64*2048 = 262144 <= 1048576; 8*4096 = 32768 <= 1048576
    assert not factored.worthwhile(256, 768, 768)  # 2*256*1536 = 786432 > 589824
    assert factored.worthwhile(256, 768, 3072)  # 2*256*3840 = 1966080 <= 2359296; 8*65536 = 524288 <= 2359296
    assert not factored.worthwhile(512, 1024, 1024)  # 2*512*2048 = 2097152 > 1048576
    assert not factored.worthwhile(8, 4096, 4)  # 2*8*4100 = 65600 > 16384: a narrow output
    assert not factored.worthwhile(0, 8, 8)


# --- whole audits ------------------------------------------------------------------------------


def first_step(model: nn.Module, x: torch.Tensor, leaves: bool = True) -> Dict[str, object]:
    """The inspector's gradient step, as ``inspect`` makes it: parameter name -> gradient
    (a tensor, or ``backward.Factored`` for a factored weight)."""
    names = walk.names_by_id(model.named_modules(remove_duplicate=False))
    params = walk.names_by_id(model.named_parameters(remove_duplicate=False))
    linear_grads = factored.LinearGradients()
    recorder = hooks.CallRecorder(names, transfer.Deferred(), linear_grads)
    with torch.enable_grad():
        probe, found = probe_input(x) if leaves else (x, [])
        out = hooks.forward_with_hooks(model, probe, recorder)
        loss = random_projection_loss(out, seed=0)
        _, grads, _ = backward.first_step_gradients(loss, params, found, linear_grads)
    return {params[key][1][0]: g for key, g in grads.items()}


def factored_names(model: nn.Module, x: torch.Tensor, leaves: bool = True) -> List[str]:
    return sorted(n for n, g in first_step(model, x, leaves).items() if isinstance(g, backward.Factored))


def assert_audit_gradients_match_autograd(model: nn.Module, x: torch.Tensor) -> None:
    report = audit(model, x, seed=3)
    loss = random_projection_loss(model(x), seed=3)
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    for (name, _), g in zip(named, grads):
        record = next(t for t in report.parameters if name in t.names)
        assert g is not None and record.grad is not None, name
        reference = g.double()
        assert record.grad.norm == pytest.approx(reference.norm().item(), rel=1e-5), name
        assert record.grad.std == pytest.approx(reference.std(unbiased=False).item(), rel=1e-4), name
        assert record.grad.nonfinite == int((~torch.isfinite(g)).sum()), name


def wide_mlp(depth: int = 3, width: int = 128, inplace: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layers: List[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU(inplace=inplace)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize("inplace", [False, True], ids=["relu", "inplace-relu"])
def test_a_wide_mlp_is_factored_and_its_gradients_match_autograd(inplace):
    model, x = wide_mlp(inplace=inplace), torch.randn(8, 128)
    assert factored_names(model, x) == ["0.weight", "2.weight", "4.weight"]
    assert_audit_gradients_match_autograd(model, x)


@pytest.mark.parametrize("staged", ["staged", "alone", "small-matrices"])
def test_staged_and_unstaged_factors_agree_with_autograd(monkeypatch, staged):
    """Inputs and output gradients staged several at a time (staging.py), each alone, and in
    matrices so small that they fill, and more shapes than are kept at once evict."""
    if staged == "alone":
        monkeypatch.setattr(staging.Staging, "add", lambda self, x, item: False)
    elif staged == "small-matrices":
        monkeypatch.setattr(staging, "STAGED", 2 * 8 * 256)
    torch.manual_seed(0)
    widths = [128, 160, 192, 224, 256, 288, 128]
    layers: List[nn.Module] = []
    for fan_in, fan_out in zip(widths, widths[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    model, x = nn.Sequential(*layers), torch.randn(8, 128)
    assert factored_names(model, x) == sorted(f"{2 * i}.weight" for i in range(6))
    assert_audit_gradients_match_autograd(model, x)


def test_a_sequence_input_is_factored_over_all_its_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(96, 192), nn.GELU(), nn.Linear(192, 96))
    x = torch.randn(2, 5, 96)  # 10 rows through each layer
    assert factored_names(model, x) == ["0.weight", "2.weight"]
    assert_audit_gradients_match_autograd(model, x)


def test_a_narrow_or_large_batch_layer_is_not_factored():
    model, x = wide_mlp(depth=2, width=16), torch.randn(32, 16)
    assert factored_names(model, x) == []
    assert_audit_gradients_match_autograd(model, x)


def test_a_layer_called_twice_is_not_factored():
    torch.manual_seed(0)
    shared = nn.Linear(128, 128)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), shared, nn.ReLU(), shared)
    x = torch.randn(8, 128)
    assert factored_names(model, x) == ["0.weight"]
    assert_audit_gradients_match_autograd(model, x)


def test_a_tied_weight_is_not_factored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh(), nn.Linear(128, 128))
    model[4].weight = model[2].weight
    x = torch.randn(8, 128)
    assert factored_names(model, x) == ["0.weight"]
    assert_audit_gradients_match_autograd(model, x)


class AlsoUsesTheWeight(nn.Module):
    """Calls its layer once and uses the layer's weight once more itself."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(128, 128)
        self.out = nn.Linear(128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(x)) + x @ self.fc.weight)


def test_a_weight_used_outside_its_layer_is_not_factored():
    torch.manual_seed(0)
    model, x = AlsoUsesTheWeight(), torch.randn(8, 128)
    assert factored_names(model, x) == ["out.weight"]
    assert_audit_gradients_match_autograd(model, x)


def test_hooked_layers_and_weights_are_not_factored():
    model, x = wide_mlp(), torch.randn(8, 128)
    model[0].register_forward_hook(lambda m, a, out: out * 2.0)  # replaces the output
    model[2].weight.register_hook(lambda g: g * 3.0)  # changes the gradient
    assert factored_names(model, x) == ["4.weight"]
    assert_audit_gradients_match_autograd(model, x)


def test_a_layer_with_nothing_asked_for_behind_it_is_not_factored():
    """No bias and an input that needs no gradient: if its weight were left out of the
    backward, nothing would make autograd reach its node, and its hook would never run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128, bias=False), nn.ReLU(), nn.Linear(128, 128))
    x = torch.randn(8, 128)
    assert factored_names(model, x, leaves=False) == ["2.weight"]
    grads = first_step(model, x, leaves=False)
    reference = torch.autograd.grad(random_projection_loss(model(x), seed=0), model[0].weight)[0]
    assert torch.allclose(grads["0.weight"], reference)
    assert factored_names(model, x, leaves=True) == ["0.weight", "2.weight"]  # the probed input is asked for


def test_a_half_precision_layer_is_not_factored():
    """float16 gradients can overflow where float64 Grams would not: formed as before."""
    model, x = wide_mlp().to(torch.bfloat16), torch.randn(8, 128, dtype=torch.bfloat16)
    assert factored_names(model, x) == []


def test_the_factored_gradient_reports_nonfinite_like_autograd():
    model, x = wide_mlp(), torch.randn(8, 128)
    with torch.no_grad():
        model[2].weight[5, 7] = math.inf  # every later activation and gradient turns non-finite
    report = audit(model, x, seed=3)
    loss = random_projection_loss(model(x), seed=3)
    grads = torch.autograd.grad(loss, [model[0].weight, model[4].weight])
    for name, g in zip(("0.weight", "4.weight"), grads):
        record = next(t for t in report.parameters if t.name == name)
        assert record.grad.nonfinite == int((~torch.isfinite(g)).sum()) > 0, name


def test_a_transformer_layer_factors_its_feed_forward_and_matches_autograd():
    """The GPT-2 shape's case in small: linear1 and linear2 are factored; the attention's
    projections are not (MultiheadAttention uses its weights directly, not by calling them)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(64, 4, 256, dropout=0.0, batch_first=True, norm_first=True)
    model = nn.Sequential(layer, nn.Linear(64, 64))
    x = torch.randn(2, 5, 64)  # 10 rows
    assert factored_names(model, x) == ["0.linear1.weight", "0.linear2.weight", "1.weight"]
    assert_audit_gradients_match_autograd(model, x)


class Checkpointed(nn.Module):
    """A block recomputed in the backward (non-reentrant activation checkpointing): its
    layers' forward hooks run a second time while the backward runs."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 128))
        self.head = nn.Linear(128, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        return self.head(torch.tanh(checkpoint(self.block, x, use_reentrant=False)))


def test_activation_checkpointing_gradients_match_autograd():
    torch.manual_seed(0)
    model, x = Checkpointed(), torch.randn(8, 128)
    assert factored_names(model, x) == ["block.0.weight", "block.2.weight", "head.weight"]
    assert_audit_gradients_match_autograd(model, x)


@pytest.mark.parametrize("example", ["deep_mlp", "healthy_mlp"])
def test_example_audits_find_the_same_with_gradients_formed(example, monkeypatch):
    """The shipped examples whose layers are factored: the same findings, and the same
    gradient norms and stds to float32 rounding, as with every gradient formed by autograd."""
    from conftest import EXAMPLES

    from initaudit.load.inputs import make_input
    from initaudit.load.target import load_target

    target = load_target(f"{EXAMPLES / example}.py:build")  # one model and input for both audits
    x = target.example_input if target.example_input is not None else make_input(target.model)
    assert factored_names(target.model, x)  # the comparison compares something

    def audited():
        return audit(target.model, x, seed=1)

    factored_report = audited()
    monkeypatch.setattr(factored, "worthwhile", lambda *args: False)
    formed_report = audited()
    assert [(f.code, f.location, f.message) for f in factored_report.findings] == \
        [(f.code, f.location, f.message) for f in formed_report.findings]
    for a, b in zip(factored_report.parameters, formed_report.parameters):
        assert a.name == b.name and a.grad_status == b.grad_status
        if b.grad is not None and b.grad.norm:
            assert a.grad.norm == pytest.approx(b.grad.norm, rel=1e-5), a.name
            assert a.grad.std == pytest.approx(b.grad.std, rel=1e-4), a.name


def test_a_custom_loss_is_what_the_factored_gradients_follow():
    """With ``loss=``, the Jacobian probe's own backward runs first through the same nodes;
    the hooks, registered after it, must see the loss's output gradients only."""
    model, x = wide_mlp(), torch.randn(8, 128)
    loss = lambda out, inp: (out - 1.0).square().mean()  # noqa: E731
    report = audit(model, x, loss=loss)
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss(model(x), x), [p for _, p in named])
    for (name, _), g in zip(named, grads):
        record = next(t for t in report.parameters if t.name == name)
        assert record.grad.norm == pytest.approx(g.double().norm().item(), rel=1e-5), name
        assert record.grad.std == pytest.approx(g.double().std(unbiased=False).item(), rel=1e-4), name


class _NoGradient(torch.autograd.Function):
    """Doubles its input and hands back an undefined gradient for it."""

    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return None


def test_an_undefined_output_gradient_gives_no_weight_gradient_like_autograd(monkeypatch):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(128, 128)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.c(_NoGradient.apply(self.b(h)) + h)

    torch.manual_seed(0)
    model, x = Net(), torch.randn(8, 128)
    planned = []
    real_plan = factored.LinearGradients.plan
    monkeypatch.setattr(factored.LinearGradients, "plan",
                        lambda self, *a: planned.append(real_plan(self, *a)) or planned[-1])
    # b's weight is left to its layer's hook, which is handed an undefined gradient
    assert factored_names(model, x) == ["a.weight", "c.weight"]
    assert id(model.b.weight) in planned[0]
    reference = dict(zip([n for n, _ in model.named_parameters()],
                         torch.autograd.grad(random_projection_loss(model(x), seed=3), list(model.parameters()),
                                             allow_unused=True)))
    assert reference["b.weight"] is None and reference["a.weight"] is not None
    report = audit(model, x, seed=3)
    for name, g in reference.items():
        record = next(t for t in report.parameters if name in t.names)
        assert (record.grad is None) == (g is None), name
    assert {f.location for f in report.findings if f.code == "IA301"} == {"b.weight", "b.bias"}
