"""The inspector records everything and leaves the model exactly as it found it."""

import dataclasses
import math
import random

import pytest
import torch
from conftest import he_init, mlp
from torch import nn

from initaudit import ForwardError, audit
from initaudit.record import inspector
from initaudit.record.probe import random_projection_loss


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_every_parameter_and_float_buffer_is_recorded_with_all_names():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.BatchNorm1d(4))
    rec = audit(model, torch.randn(16, 4)).recording
    params = {tuple(t.names) for t in rec.tensors if t.kind == "parameter"}
    assert params == {("0.weight", "2.weight"), ("0.bias", "2.bias"), ("3.weight",), ("3.bias",)}
    buffers = {t.name for t in rec.tensors if t.kind == "buffer"}
    # num_batches_tracked is an integer buffer: not a floating-point statistic
    assert buffers == {"3.running_mean", "3.running_var"}


def test_parameter_statistics_match_torch():
    model = nn.Conv2d(4, 6, 3, groups=2)
    with torch.no_grad():
        model.weight[0].zero_()
    rep = audit(model, torch.randn(2, 4, 8, 8))
    w = next(t for t in rep.parameters if t.attr == "weight")
    ref = model.weight.detach().double()
    assert w.mean == pytest.approx(ref.mean().item(), abs=1e-7)
    assert w.std == pytest.approx(ref.std(correction=0).item(), rel=1e-6)
    assert (w.min, w.max) == pytest.approx((ref.min().item(), ref.max().item()))
    assert w.zero_fraction == pytest.approx(1 / 6)  # one of six output filters zeroed
    assert (w.fan_in, w.fan_out) == (2 * 9, 6 * 9)
    assert w.shape == (6, 2, 3, 3) and w.dtype == "float32" and w.device == "cpu"


def test_first_step_gradient_equals_autograd_of_the_same_loss():
    model = mlp(3, width=16, inputs=8, outputs=3)
    x = torch.randn(32, 8)
    rep = audit(model, x, seed=7)
    out = model(x)
    loss = random_projection_loss(out, seed=7)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads):
        rec = next(t for t in rep.parameters if t.name == name)
        assert rec.grad.norm == pytest.approx(g.norm().item(), rel=1e-5)
        assert rec.grad_status == "ok"


def test_random_projection_has_variance_one_over_numel():
    out = torch.zeros(64, 100, requires_grad=True)
    loss = random_projection_loss(out, seed=0)
    (r,) = torch.autograd.grad(loss, out)
    assert r.std().item() == pytest.approx(1 / math.sqrt(out.numel()), rel=0.05)
    # seeded: the same seed gives the same projection, another seed another one
    (r2,) = torch.autograd.grad(random_projection_loss(out, seed=0), out)
    (r3,) = torch.autograd.grad(random_projection_loss(out, seed=1), out)
    assert torch.equal(r, r2) and not torch.equal(r, r3)


def test_module_outputs_are_recorded():
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
    rep = audit(model, torch.randn(128, 8))
    relu = next(m for m in rep.modules if m.type == "ReLU")
    assert relu.output.shape == (128, 32)
    assert 0.3 < relu.output.zero_fraction < 0.7  # about half of N(0, s) pre-activations
    assert relu.calls == 1 and relu.kind == "activation" and relu.activation == "relu"


def test_audit_leaves_the_model_exactly_as_found():
    model = ConvNet()
    model.eval()
    model.head.weight.grad = torch.ones_like(model.head.weight)
    existing = model.head.weight.grad
    model.conv.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 3, 8, 8)
    torch.manual_seed(99)
    random.seed(99)
    cpu_rng = torch.get_rng_state()
    py_rng = random.getstate()
    hooks = [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]

    audit(model, x)

    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k  # running_mean/var and num_batches_tracked included
    assert model.head.weight.grad is existing and torch.equal(existing, torch.ones_like(existing))
    assert model.conv.weight.grad is None
    assert not model.conv.bias.requires_grad and model.conv.weight.requires_grad
    assert all(not m.training for m in model.modules())
    assert torch.equal(torch.get_rng_state(), cpu_rng) and random.getstate() == py_rng
    assert [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()] == hooks


def test_forward_failure_restores_state_removes_hooks_and_names_the_module():
    model = ConvNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ForwardError) as info:
        audit(model, torch.randn(4, 5, 8, 8))  # 5 channels where conv takes 3
    assert "'conv' (Conv2d)" in str(info.value)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_same_seed_same_report():
    model = ConvNet()
    x = torch.randn(8, 3, 8, 8)
    a = audit(model, x, seed=3).to_dict()
    b = audit(model, x, seed=3).to_dict()
    c = audit(model, x, seed=4).to_dict()
    for d in (a, b, c):
        d["summary"].pop("seconds")
    assert a == b
    assert a["parameters"] != c["parameters"]  # dropout and projection differ


def test_tuple_dict_and_dataclass_outputs_all_contribute():
    @dataclasses.dataclass
    class Out:
        logits: torch.Tensor
        aux: torch.Tensor

    class Multi(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            if self.kind == "tuple":
                return a, (b, torch.zeros(1, dtype=torch.long))
            if self.kind == "dict":
                return {"a": a, "b": b}
            return Out(a, b)

    for kind in ("tuple", "dict", "dataclass"):
        rep = audit(Multi(kind), torch.randn(8, 4))
        assert all(t.grad_status == "ok" for t in rep.parameters), kind


def test_dict_input_is_passed_as_keywords():
    class KW(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(50, 8)
            self.lin = nn.Linear(8, 2)

        def forward(self, *, input_ids, scale=1.0):
            return self.lin(self.emb(input_ids)) * scale

    rep = audit(KW(), {"input_ids": torch.randint(0, 50, (4, 6)), "scale": 2.0})
    assert all(t.grad_status == "ok" for t in rep.parameters)


def test_unjudged_parameters_say_why():
    class Partial(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.frozen = nn.Linear(4, 4).requires_grad_(False)
            self.unused = nn.Linear(4, 4)
            self.register_parameter("steps", nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False))

        def forward(self, x):
            return self.used(self.frozen(x))

    rep = audit(Partial(), torch.randn(4, 4))
    by_name = {t.name: t for t in rep.parameters}
    assert set(by_name) == {"used.weight", "used.bias", "frozen.weight", "frozen.bias", "unused.weight", "unused.bias", "steps"}
    assert by_name["frozen.weight"].grad_status == "frozen"
    assert any("frozen" in n for n in by_name["frozen.weight"].notes)
    assert any("never called" in n for n in by_name["unused.weight"].notes)
    assert by_name["steps"].grad_status == "not-floating"
    assert any("not floating point" in n for n in by_name["steps"].notes)


def test_custom_loss_is_used():
    model = nn.Linear(4, 1)
    x = torch.randn(16, 4)
    rep = audit(model, x, loss=lambda out, inp: ((out - inp.sum(1, keepdim=True)) ** 2).mean())
    expected = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean().item()
    assert rep.recording.loss == pytest.approx(expected, rel=1e-5)


def test_inferred_input_when_none_given():
    rep = audit(mlp(3, width=16, inputs=8, init=he_init))
    first = rep.recording.module("0")
    assert first.output.shape == (64, 16)  # default batch 64, in_features 8


def test_audit_within_no_grad_still_gets_gradients():
    model = nn.Linear(4, 2)
    with torch.no_grad():
        rep = audit(model, torch.randn(8, 4))
    assert all(t.grad_status == "ok" for t in rep.parameters)


def test_device_argument_moves_the_model_and_back():
    model = nn.Linear(4, 2)
    rep = audit(model, torch.randn(8, 4), device="cpu")
    assert rep.device == "cpu" and model.weight.device.type == "cpu"


def test_the_parameter_pass_alone_records_what_the_audit_records():
    from initaudit.record.inspector import parameter_statistics

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LayerNorm(16), nn.Linear(16, 4))
    nn.init.zeros_(model[3].bias)
    alone = {t.name: t for t in parameter_statistics(model)}
    audited = {t.name: t for t in audit(model, torch.randn(4, 8)).recording.tensors}
    assert alone.keys() == audited.keys()
    for name, t in alone.items():
        a = audited[name]
        fields = ("mean", "std", "min", "max", "zero_fraction", "kurtosis", "ortho_offdiag", "ortho_spread")
        assert [getattr(t, f) for f in fields] == [getattr(a, f) for f in fields], name
    assert alone["3.bias"].zero_fraction == 1.0 and alone["2.weight"].std == 0.0


def test_an_audit_traces_each_module_once(monkeypatch):
    """Inferring the input and following the flow both read the trace: it is made once."""
    import torch.fx

    class Net(nn.Module):  # not a plain Sequential: traced for real
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    traced = []
    real = torch.fx.symbolic_trace
    monkeypatch.setattr(torch.fx, "symbolic_trace", lambda m, *a, **k: traced.append(m) or real(m, *a, **k))
    net = Net()
    audit(net)  # the input is inferred from the first layer, which needs the trace
    assert [m is net for m in traced] == [True]
    audit(net)  # a new audit traces anew: nothing is kept between audits
    assert len(traced) == 2


def test_a_container_passing_on_its_last_childs_output_is_reduced_once(monkeypatch):
    from initaudit.record import moments

    torch.manual_seed(0)
    # the in-place ReLU hands on the Linear's own tensor, changed: it must be reduced anew;
    # both Sequentials then hand on that tensor unchanged
    model = nn.Sequential(nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True)))
    reduced = []
    real = moments.OutputMoments.add  # every output queued for reduction, batched or not
    monkeypatch.setattr(moments.OutputMoments, "add", lambda self, *a: reduced.append(1) or real(self, *a))
    rec = inspector.inspect(model, torch.randn(32, 6))
    assert rec.call_order == ["0.0", "0.1", "0", ""]
    linear, relu, inner, outer = rec.call_outputs
    assert len(reduced) == 2
    assert relu.zero_fraction > 0.2 and linear.zero_fraction == 0.0 and linear.mean < relu.mean
    for container in (inner, outer):
        assert (container.mean, container.std, container.zero_fraction, container.feature_std) == \
            (relu.mean, relu.std, relu.zero_fraction, relu.feature_std)
        assert container.dead_last is None  # a container is no activation


def test_an_output_without_a_version_counter_is_reduced_every_time(monkeypatch):
    from initaudit.record import moments

    class InferenceBlock(nn.Module):
        def forward(self, x):
            with torch.inference_mode():  # an inference tensor keeps no version counter
                return x.detach() * 2

    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(InferenceBlock()))
    reduced = []
    real = moments.OutputMoments.add  # every output queued for reduction, batched or not
    monkeypatch.setattr(moments.OutputMoments, "add", lambda self, *a: reduced.append(1) or real(self, *a))
    rec = inspector.inspect(model, torch.randn(8, 4), run_backward=False)
    assert rec.call_order == ["0", "1.0", "1", ""]
    assert len(reduced) == 4  # no call could tell the block's tensor unchanged
    block, inner, outer = rec.call_outputs[1:]
    assert inner.mean == block.mean and outer.std == block.std  # reduced anew, alike
