"""Each rule: a positive and a negative case built from a real nn.Module."""

import math

import pytest
import torch
from conftest import codes, findings, he_init, mlp
from torch import nn

from initaudit import audit
from initaudit.analysis.graph import layer_runs
from initaudit.analysis.scales import recommended_std


def xavier_init(layer):
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)


# IA101 zero-weight ---------------------------------------------------------------------------

def test_ia101_zero_hidden_weight_is_an_error():
    model = mlp(3, width=32, inputs=8, init=he_init)
    nn.init.zeros_(model[2].weight)
    (f,) = findings(audit(model), "IA101")
    assert f.severity == "error" and f.location == "2.weight"
    assert f.fix == 'nn.init.kaiming_normal_(model[2].weight, nonlinearity="relu")'


def test_ia101_zero_output_layer_is_info():
    model = mlp(3, width=32, inputs=8, init=he_init)
    nn.init.zeros_(model[4].weight)
    (f,) = findings(audit(model), "IA101")
    assert f.severity == "info" and "output layer" in f.message


def test_ia101_zero_biases_are_fine():
    model = mlp(3, width=32, inputs=8, init=he_init)  # he_init zeroes every bias
    assert "IA101" not in codes(audit(model))


# IA102 constant-weight -----------------------------------------------------------------------

def test_ia102_constant_weight_that_stays_symmetric():
    """The layer above weighs every unit alike (identical columns), so every unit of the constant
    layer gets the same gradient row and they never become different."""
    torch.manual_seed(0)
    model = mlp(4, width=32, inputs=8, init=he_init)
    nn.init.constant_(model[2].weight, 1.0)
    with torch.no_grad():
        model[4].weight.copy_(torch.randn(32, 1).expand(32, 32) / 32 ** 0.5)
    (f,) = findings(audit(model), "IA102")
    assert f.severity == "error" and f.location == "2.weight"
    assert f.fix is not None


def test_ia102_constant_weight_under_random_layers_is_information():
    """Random weights above a constant layer give its units different gradient rows: the first
    step tells them apart (the trainability benchmark's constant-hidden nets mostly train)."""
    torch.manual_seed(0)
    model = mlp(4, width=32, inputs=8, init=he_init)
    nn.init.constant_(model[2].weight, 1.0)
    report = audit(model)
    (f,) = findings(report, "IA102")
    assert f.severity == "info" and "rows of its first-step gradient differ" in f.message
    (record,) = [t for t in report.recording.parameters if t.name == "2.weight"]
    assert record.grad_row_spread > 0.1


def test_ia102_not_for_norm_gains_or_random_weights():
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 2))
    assert "IA102" not in codes(audit(model))  # LayerNorm.weight is all ones, and 1-D


# IA103 non-finite-parameter ------------------------------------------------------------------

def test_ia103_nan_weight_and_inf_buffer():
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight[3, 2] = float("nan")
        model[1].running_var[0] = float("inf")
    found = {f.location: f for f in findings(audit(model), "IA103")}
    assert set(found) == {"0.weight", "1.running_var"}
    assert all(f.severity == "error" for f in found.values())
    assert found["1.running_var"].fix == "model[1].reset_running_stats()"


def test_ia103_leaves_an_additive_mask_of_minus_infinity_alone_but_not_nan():
    class Causal(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)
            self.register_buffer("mask", torch.triu(torch.full((4, 4), float("-inf")), diagonal=1))

        def forward(self, x):  # x: (batch, 4, 8)
            scores = x @ x.transpose(1, 2) + self.mask
            return self.proj(torch.softmax(scores, dim=-1) @ x)

    model = Causal()
    assert "IA103" not in codes(audit(model, torch.randn(2, 4, 8)))
    model.mask[0, 0] = float("nan")  # a NaN is never a mask
    assert [f.location for f in findings(audit(model, torch.randn(2, 4, 8)), "IA103")] == ["mask"]


def test_ia103_finite_model():
    assert "IA103" not in codes(audit(mlp(3, width=16, inputs=8)))


# IA201 variance-mismatch ---------------------------------------------------------------------

def test_ia201_default_init_ratio_is_one_over_sqrt6_under_relu():
    # PyTorch's default U(+-1/sqrt(fan_in)) has std 1/sqrt(3 fan_in); He asks sqrt(2/fan_in)
    model = mlp(3, width=512, inputs=512)
    run = layer_runs(audit(model).recording)[0]
    scale = recommended_std(run[1])
    assert scale.ratio == pytest.approx(1 / math.sqrt(6), rel=0.03)


def test_ia201_default_init_shallow_is_info():
    (f,) = findings(audit(mlp(2)), "IA201")
    assert f.severity == "info"


def test_ia201_default_init_deep_is_warning():
    (f,) = findings(audit(mlp(20, width=512, inputs=512)), "IA201")
    assert f.severity == "warning"
    # square hidden layers drawn orthogonal with ReLU's gain (the scale of He, LSUV's pre-init)
    assert "relu" in f.message and "orthogonal_(" in f.fix and "gain=1.414" in f.fix
    # the 19 hidden layers; a head smaller than LeCun's scale only makes the logits small at init
    assert len(f.locations) == 19 and "38.weight" not in f.locations


def test_ia201_glorot_under_relu_30_layers_is_warning():
    # each layer is only 0.71x He (within 2x); the product over 30 layers is what hurts
    model = mlp(30, width=256, inputs=256, init=xavier_init)
    run = layer_runs(audit(model).recording)[0]
    assert recommended_std(run[5]).ratio == pytest.approx(1 / math.sqrt(2), rel=0.05)
    (f,) = findings(audit(model), "IA201")
    assert f.severity == "warning"


def test_ia201_glorot_under_tanh_is_fine():
    model = mlp(10, width=256, inputs=256, act=nn.Tanh, init=xavier_init)
    assert "IA201" not in codes(audit(model))


def test_ia201_he_init_is_fine():
    assert "IA201" not in codes(audit(mlp(20, init=he_init)))


def test_ia201_one_layer_far_off_is_warning():
    model = mlp(4, width=64, inputs=64, init=he_init)
    with torch.no_grad():
        model[2].weight.mul_(30)
    (f,) = findings(audit(model), "IA201")
    assert f.severity == "warning" and "'2'" in f.message and "too large" in f.message


def test_ia201_normalized_layers_are_info_at_most():
    # ResNet-style: every conv feeds a BatchNorm; default init is off for ReLU, but harmless
    layers = []
    for cin, cout in [(3, 16)] + [(16, 16)] * 8:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        with torch.no_grad():
            conv.weight.mul_(0.01)  # 100x+ too small: a warning were it not normalized
        layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    nn.init.xavier_uniform_(model[-1].weight)
    rep = audit(model, torch.randn(8, 3, 16, 16))
    assert codes(rep, "warning") == [] and codes(rep, "error") == []
    assert "IA201" in codes(rep, "info")


def test_ia201_leaky_relu_slope_is_used():
    model = nn.Sequential(nn.Linear(256, 256), nn.LeakyReLU(0.3), nn.Linear(256, 256), nn.LeakyReLU(0.3), nn.Linear(256, 2))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=0.3, nonlinearity="leaky_relu")
    nn.init.xavier_uniform_(model[-1].weight)
    assert "IA201" not in codes(audit(model))


def test_ia201_conv_fan_in_includes_receptive_field():
    conv = nn.Conv2d(8, 16, 5)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(16 * 28 * 28, 2))
    nn.init.xavier_uniform_(model[-1].weight)
    rep = audit(model)
    run = layer_runs(rep.recording)[0]
    assert run[0].weight.fan_in == 8 * 25
    assert recommended_std(run[0]).ratio == pytest.approx(1.0, rel=0.05)


# IA301 no-gradient ---------------------------------------------------------------------------

class Branches(nn.Module):
    def __init__(self, detach=False, use_extra=True):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.extra = nn.Linear(4, 4)
        self.detach, self.use_extra = detach, use_extra

    def forward(self, x):
        a = self.a(x)
        if self.detach:
            a = a.detach()
        out = self.b(a)
        return out + self.extra(x) if self.use_extra else out


def test_ia301_never_called_module():
    found = findings(audit(Branches(use_extra=False), torch.randn(8, 4)), "IA301")
    assert {f.location for f in found} == {"extra.weight", "extra.bias"}
    assert all("never called" in f.message and f.severity == "error" for f in found)


def test_ia301_detached_path():
    found = findings(audit(Branches(detach=True), torch.randn(8, 4)), "IA301")
    assert {f.location for f in found} == {"a.weight", "a.bias"}
    assert all("detached" in f.message for f in found)


def test_ia301_not_for_connected_or_frozen_parameters():
    model = Branches(use_extra=False)
    model.extra.requires_grad_(False)
    assert "IA301" not in codes(audit(model, torch.randn(8, 4)))


# IA303 non-finite-gradient -------------------------------------------------------------------

class SqrtHead(nn.Module):
    def __init__(self, eps):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        nn.init.zeros_(self.lin.bias)
        self.eps = eps

    def forward(self, x):
        return (self.lin(x).abs() + self.eps).sqrt()  # d sqrt(u)/du is infinite at u = 0


def test_ia303_infinite_gradient():
    x = torch.randn(8, 4)
    x[0] = 0  # lin(x[0]) == 0 exactly
    (f,) = [f for f in findings(audit(SqrtHead(0.0), x), "IA303") if f.location == "lin.weight"]
    assert f.severity == "error"


def test_ia303_finite_gradient():
    x = torch.randn(8, 4)
    x[0] = 0
    assert "IA303" not in codes(audit(SqrtHead(1.0), x))


# IA401 shared-parameter ----------------------------------------------------------------------

def test_ia401_layer_reused_in_sequential():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    (f,) = findings(audit(model, torch.randn(4, 8)), "IA401")
    assert f.severity == "warning"
    assert set(f.locations) == {"0.weight", "2.weight", "0.bias", "2.bias"}


def test_ia401_modulelist_times_four():
    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(8, 8)] * 4)

        def forward(self, x):
            for b in self.blocks:
                x = torch.relu(b(x))
            return x

    (f,) = findings(audit(Stack(), torch.randn(4, 8)), "IA401")
    assert {n for n in f.locations if n.endswith("weight")} == {f"blocks.{i}.weight" for i in range(4)}


def test_ia401_declared_ties_are_not_reported():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer)
    rep = audit(model, torch.randn(4, 8), tied=["0.weight=2.weight", ("0.bias", "2.bias")])
    assert "IA401" not in codes(rep)


def test_ia401_distinct_layers_are_fine():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    assert "IA401" not in codes(audit(model, torch.randn(4, 8)))


def test_ia401_model_declared_embedding_tie_is_info():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(100, 16)
            self.lm_head = nn.Linear(16, 100, bias=False)
            self.lm_head.weight = self.embed.weight

        def get_input_embeddings(self):
            return self.embed

        def get_output_embeddings(self):
            return self.lm_head

        def forward(self, ids):
            return self.lm_head(self.embed(ids))

    (f,) = findings(audit(TinyLM()), "IA401")
    assert f.severity == "info" and set(f.locations) == {"embed.weight", "lm_head.weight"}


# IA501 forget-bias-unset ---------------------------------------------------------------------

def test_ia501_default_lstm_every_layer_and_direction():
    model = nn.LSTM(8, 16, num_layers=2, bidirectional=True, batch_first=True)
    found = findings(audit(model), "IA501")
    assert sorted(f.location for f in found) == [
        "bias_ih_l0", "bias_ih_l0_reverse", "bias_ih_l1", "bias_ih_l1_reverse",
    ]
    assert all(f.severity == "info" for f in found)  # PyTorch's default trains (the benchmark's LSTMs)


def test_ia501_forget_in_name_recipe_is_caught():
    model = nn.LSTM(8, 16)
    for name, p in model.named_parameters():
        if "forget" in name:
            nn.init.ones_(p)
        elif "bias" in name:
            nn.init.zeros_(p)
    assert len(findings(audit(model), "IA501")) == 1


def _set_forget(lstm, ih, hh):
    hidden = lstm.hidden_size
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih"):
                p[hidden:2 * hidden] = ih
            elif name.startswith("bias_hh"):
                p[hidden:2 * hidden] = hh


def test_ia501_forget_bias_set_is_fine():
    model = nn.LSTM(8, 16, num_layers=2)
    _set_forget(model, 1.0, 0.0)
    assert "IA501" not in codes(audit(model))
    _set_forget(model, 0.5, 0.5)  # both biases count: effective 1.0
    assert "IA501" not in codes(audit(model))
    _set_forget(model, 0.3, 0.0)  # effective 0.3 < 0.5
    assert len(findings(audit(model), "IA501")) == 2


def test_ia501_lstm_cell_and_its_fix():
    class Cell(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(8, 16)

        def forward(self, x):
            h, c = self.cell(x)
            return h

    model = Cell()
    (f,) = findings(audit(model, torch.randn(4, 8)), "IA501")
    assert f.location == "cell.bias_ih"
    namespace = {"torch": torch, "model": model}
    exec(f.fix, namespace)  # the suggested fix, run as a user would paste it
    assert model.cell.bias_ih[16:32].eq(1).all() and model.cell.bias_hh[16:32].eq(0).all()
    assert "IA501" not in codes(audit(model, torch.randn(4, 8)))


# regressions found in review -----------------------------------------------------------------

def test_ia101_head_is_found_when_the_root_holds_a_parameter():
    class WithToken(nn.Module):
        def __init__(self):
            super().__init__()
            self.token = nn.Parameter(torch.randn(1, 1, 16))  # a class token on the root
            self.body = nn.Linear(16, 16)
            self.head = nn.Linear(16, 3)
            nn.init.zeros_(self.head.weight)

        def forward(self, x):
            x = torch.cat([self.token.expand(x.shape[0], 1, 16), x], dim=1)
            return self.head(torch.relu(self.body(x)))

    rep = audit(WithToken(), torch.randn(4, 5, 16))
    assert rep.analysis.output_layer == "head"
    (f,) = findings(rep, "IA101")
    assert f.severity == "info"


def test_ia201_leaves_constant_weights_to_ia102():
    model = mlp(3, width=32, inputs=8, init=he_init)
    nn.init.constant_(model[2].weight, 0.37)
    rep = audit(model)
    assert "IA102" in codes(rep) and "IA201" not in codes(rep)


def test_ia401_suggested_ties_silence_it():
    layer = nn.Linear(8, 8)
    model = nn.Sequential(layer, nn.ReLU(), layer, nn.ReLU(), layer)
    (f,) = findings(audit(model, torch.randn(4, 8)), "IA401")
    hint = f.message.split("declare it with ", 1)[1]
    ties = [arg for arg in hint.split() if arg != "--tied"]
    assert ties == ["0.weight=2.weight=4.weight", "0.bias=2.bias=4.bias"]
    assert "IA401" not in codes(audit(model, torch.randn(4, 8), tied=ties))


def test_ia401_tie_between_two_modules_is_not_called_a_reused_module():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 8)
            self.out = nn.Linear(8, 20, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids):
            return self.out(self.embed(ids))

    (f,) = findings(audit(Tied()), "IA401")
    assert "one Parameter is reachable under several names" in f.message
    assert "module Embedding" not in f.message


def test_ia201_signal_of_a_repeated_layer_uses_each_call():
    # one tanh-free linear layer applied 12 times with a 0.5x weight: the signal halves each time
    class Repeat(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(64, 64, bias=False)
            nn.init.orthogonal_(self.layer.weight, gain=0.5)

        def forward(self, x):
            for _ in range(12):
                x = self.layer(x)
            return x

    (f,) = findings(audit(Repeat(), torch.randn(256, 64)), "IA201")
    # element std 0.5/sqrt(64) against LeCun's 1/sqrt(64): r = 0.5 per call, 0.5**12 = 0.00024
    # over the 12 calls; the measured signal from the first call's output to the last's: 0.5**11
    assert f.severity == "warning"
    assert "a run of 12 layer calls" in f.message
    assert "compounded over the run: 0.00024x" in f.message
    assert "changes 0.00049x" in f.message


def test_ia201_fan_out_mode_is_accepted():
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 2))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    nn.init.xavier_uniform_(model[-1].weight)
    run = layer_runs(audit(model).recording)[0]
    scale = recommended_std(run[0])
    assert scale.mode == "fan_out" and scale.ratio == pytest.approx(1.0, rel=0.05)
    assert "IA201" not in codes(audit(model))


def test_ia201_transposed_conv_uses_its_real_fan():
    up = nn.ConvTranspose2d(64, 8, 4, stride=2, padding=1)
    # He for the forward pass: each output sums in_channels * kernel inputs (ignoring stride)
    nn.init.normal_(up.weight, std=math.sqrt(2 / (64 * 16)))
    model = nn.Sequential(up, nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1))
    rep = audit(model, torch.randn(4, 64, 8, 8))
    use = layer_runs(rep.recording)[0][0]
    assert use.weight.fan_in == 8 * 16 and use.weight.layer_fan_in == 64 * 16
    assert recommended_std(use).ratio == pytest.approx(1.0, rel=0.05)


def test_every_parameterized_module_is_observed_even_in_eval_mode():
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()
    rep = audit(model, torch.randn(4, 6, 32))
    # the eval-mode fast path would skip the submodules' forwards; the audit runs in train mode
    assert rep.recording.module("layers.1.linear2").calls == 1
    # MultiheadAttention reads out_proj's weight itself, never calling it: listed, not hidden
    assert rep.recording.unobserved == ["layers.0.self_attn.out_proj", "layers.1.self_attn.out_proj"]
    assert all(not m.training for m in model.modules())
