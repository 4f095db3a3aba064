"""Signal-propagation, gradient, value and recurrent rules: positive and negative cases."""

import copy
import math
import re

import pytest
import torch
from conftest import codes, findings, he_init, mlp
from torch import nn

from initaudit import audit
from initaudit.load import trace
from initaudit.record import flow

# IA101 deliberate zero patterns (torch.fx) ----------------------------------------------------

class Residual(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.fc1.weight, nonlinearity="relu")
        nn.init.zeros_(self.fc2.weight)  # Fixup / ZerO: the branch starts as zero

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(x)))


class LoRALinear(nn.Module):
    def __init__(self, width=32, rank=4):
        super().__init__()
        self.base = nn.Linear(width, width).requires_grad_(False)
        self.A = nn.Linear(width, rank, bias=False)
        self.B = nn.Linear(rank, width, bias=False)
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.base(x) + self.B(self.A(x)) * 0.5


def test_ia101_zero_last_layer_of_residual_branch_is_info():
    model = nn.Sequential(Residual(), Residual(), nn.Linear(32, 3))
    found = findings(audit(model, torch.randn(16, 32)), "IA101")
    assert {f.location for f in found} == {"0.fc2.weight", "1.fc2.weight"}
    assert all(f.severity == "info" and "residual branch" in f.message for f in found)


def test_ia101_lora_b_is_info():
    model = nn.Sequential(LoRALinear(), nn.ReLU(), nn.Linear(32, 2))
    (f,) = findings(audit(model, torch.randn(16, 32)), "IA101")
    assert f.location == "0.B.weight" and f.severity == "info" and "LoRA" in f.message


def test_ia101_zero_in_a_plain_stack_is_an_error_when_nothing_moves_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)  # relu(0 x + 0) = 0, where ReLU passes no gradient: stuck
    (f,) = findings(audit(model, torch.randn(16, 32)), "IA101")
    assert f.severity == "error" and "its own first-step gradient" in f.message


def test_ia101_zero_in_a_plain_stack_that_moves_at_the_first_step_is_information():
    """PyTorch's default bias keeps relu(0 x + b) alive for the units with b > 0: the zero
    layer's own gradient is not zero, so it moves at step 1 (zero hidden layers train in the
    trainability benchmark: 28 of 31)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    nn.init.zeros_(model[2].weight)
    report = audit(model, torch.randn(16, 32))
    (f,) = findings(report, "IA101")
    assert f.severity == "info" and "moves at step 1" in f.message
    (below,) = findings(report, "IA302")
    assert below.caused_by == "IA101 2.weight" and "0.weight" in below.locations


def test_functional_activation_is_found_by_fx():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(128, 128) for _ in range(12))
            for layer in self.layers:
                nn.init.kaiming_normal_(layer.weight, a=0.2, nonlinearity="leaky_relu")
                nn.init.zeros_(layer.bias)

        def forward(self, x):
            for layer in self.layers:
                x = torch.nn.functional.leaky_relu(layer(x), 0.2)
            return x

    rep = audit(Functional(), torch.randn(64, 128))
    layer = rep.recording.module("layers.3")
    assert (layer.consumer_kind, layer.consumer, layer.consumer_method) == ("activation", "leaky_relu", "fx")
    assert layer.consumer_param == pytest.approx(0.2)
    # judged against leaky_relu's gain: He-initialized, so nothing to report
    assert "IA201" not in codes(rep)


def test_untraceable_model_falls_back_to_hook_order():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.act = nn.ReLU()
            self.b = nn.Linear(16, 2)

        def forward(self, x):
            if x.sum() > -1e9:  # data-dependent: fx cannot trace it
                x = self.act(self.a(x))
            return self.b(x)

    rep = audit(Branchy(), torch.randn(8, 16))
    assert rep.recording.traced == []
    assert rep.recording.module("a").consumer_method == "hooks"  # what the call order found
    # the autograd graph decides above both, and the JSON says so
    assert rep.to_dict()["modules"][1]["consumer_method"] == "autograd"
    assert rep.to_dict()["modules"][1]["consumer"] == "relu"
    # without a backward there is no graph: the call order decides
    rep = audit(Branchy(), torch.randn(8, 16), no_backward=True)
    assert rep.to_dict()["modules"][1]["consumer_method"] == "hooks"


# IA104 uninitialized-memory --------------------------------------------------------------------

def test_ia104_huge_and_subnormal_values():
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(16, 16) * 1e8)  # 4e8x the expected 1/sqrt(16)
        model[2].weight.copy_(torch.randn(16, 16) * 1e-40)  # float32 subnormals
    found = {f.location: f for f in findings(audit(model, torch.randn(4, 16)), "IA104")}
    assert set(found) == {"0.weight", "2.weight"}
    assert "subnormal" in found["2.weight"].message and found["0.weight"].severity == "error"


def test_ia104_ordinary_init_is_fine():
    assert "IA104" not in codes(audit(mlp(4, width=64, inputs=16)))


# IA105 cloned-init -----------------------------------------------------------------------------

def test_ia105_transformer_encoder_layers_are_clones_that_part_at_step_one():
    """nn.TransformerEncoder deep-copies one initialized layer: the copies sit at different depths,
    their first-step gradients differ, and the first step makes them different: information."""
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    model = nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False)
    found = findings(audit(model, torch.randn(4, 6, 32)), "IA105")
    assert found and all(f.severity == "info" and "gradients differ" in f.message for f in found)
    groups = {tuple(sorted(f.locations)) for f in found}
    assert ("layers.0.linear1.weight", "layers.1.linear1.weight", "layers.2.linear1.weight") in groups
    # constant tensors (LayerNorm gains, zero biases) are never clones
    assert not any("norm1.weight" in n for f in found for n in f.locations)


class TwinHeads(nn.Module):
    """Two heads on the same features, summed: a deep copy of the first is the second."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
        self.head_a = nn.Linear(32, 4)
        self.head_b = copy.deepcopy(self.head_a)

    def forward(self, x):
        h = self.body(x)
        return self.head_a(h) + self.head_b(h)


def test_ia105_parallel_copies_that_stay_copies_are_a_warning():
    """Same input, same gradient from the sum: the copies get the same gradient at every step."""
    torch.manual_seed(0)
    found = findings(audit(TwinHeads(), torch.randn(8, 16)), "IA105")
    assert found and {f.severity for f in found} == {"warning"}
    assert any("head_a.weight" in f.locations and "head_b.weight" in f.locations for f in found)


def test_ia105_independent_copies_are_fine():
    first = nn.Linear(16, 16)
    second = copy.deepcopy(first)
    second.reset_parameters()
    model = nn.Sequential(first, nn.ReLU(), second)
    assert "IA105" not in codes(audit(model, torch.randn(4, 16)))


# IA402 aliased-storage -------------------------------------------------------------------------

def test_ia402_parameters_sharing_memory():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = nn.Parameter(a.weight.data)  # a new Parameter over the same memory
    model = nn.Sequential(a, nn.ReLU(), b)
    (f,) = findings(audit(model, torch.randn(4, 8)), "IA402")
    assert set(f.locations) == {"0.weight", "2.weight"}
    assert "IA401" not in codes(audit(model, torch.randn(4, 8)))  # two Parameter objects


def test_ia402_copies_are_fine():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = nn.Parameter(a.weight.detach().clone())
    assert "IA402" not in codes(audit(nn.Sequential(a, nn.ReLU(), b), torch.randn(4, 8)))


# IA601 zero-norm-scale -------------------------------------------------------------------------

def test_ia601_generic_loop_zeroes_layernorm_gain():
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 2))
    for p in model.parameters():  # the popular loop
        nn.init.xavier_uniform_(p) if p.dim() > 1 else nn.init.zeros_(p)
    (f,) = findings(audit(model, torch.randn(8, 16)), "IA601")
    assert f.location == "1.weight" and f.severity == "warning"


def test_ia601_zero_init_residual_is_info():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(8)
            nn.init.zeros_(self.bn.weight)  # torchvision's zero_init_residual

        def forward(self, x):
            return torch.relu(x + self.bn(self.conv(x)))

    (f,) = findings(audit(nn.Sequential(Block(), Block()), torch.randn(4, 8, 8, 8)), "IA601")[:1]
    assert f.severity == "info" and "residual" in f.message


def test_ia601_default_norms_are_fine():
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 2))
    assert "IA601" not in codes(audit(model, torch.randn(8, 16)))


# IA202 / IA203 signal --------------------------------------------------------------------------

def test_ia202_sees_the_lost_input_while_the_rms_looks_fine():
    # 20 layers, 512 wide, PyTorch's default init (REFERENCES.md: mean square ~3e-4, variance
    # across the batch ~1e-16)
    torch.manual_seed(0)
    model = mlp(20, width=512, inputs=512)
    rep = audit(model, torch.randn(256, 512))
    (f,) = findings(rep, "IA202")
    assert f.severity == "warning"
    last = rep.recording.module("38").output  # the last hidden Linear's output
    mean_square = last.mean ** 2 + last.std ** 2
    assert mean_square > 1e-5  # the raw magnitude is held up by the biases...
    assert last.feature_std ** 2 < 1e-12  # ...while the input-dependent part is gone


def test_ia202_not_for_he_init():
    assert "IA202" not in codes(audit(mlp(20, width=256, inputs=256, init=he_init)))


def test_ia203_signal_exploding():
    def too_large(layer):
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        layer.weight.data.mul_(2.0)  # 2x He: the std doubles at every layer
        nn.init.zeros_(layer.bias)

    (f,) = findings(audit(mlp(8, width=256, inputs=256, init=too_large)), "IA203")
    assert f.severity == "warning"
    # the overall std doubles per layer; its input-dependent part grows a little slower,
    # since part of the growth goes into per-feature offsets (the ReLU outputs' mean)
    factor = float(re.search(r"about ([0-9.]+)x per layer", f.message).group(1))
    assert 1.5 < factor <= 2.0


def test_ia203_not_for_he_init():
    assert "IA203" not in codes(audit(mlp(8, width=256, inputs=256, init=he_init)))


# IA204 dead-units ------------------------------------------------------------------------------

def test_ia204_dead_relu_units():
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].bias[:48] = -100.0  # 48 of 64 units can never fire
    (f,) = findings(audit(model, torch.randn(64, 16)), "IA204")
    assert f.location == "0" and f.message.startswith("75% of the units")
    # the 16 alive units carry the gradient: information, not a warning
    assert f.severity == "info" and "the units still alive carry the gradient" in f.message


def test_ia204_a_layer_with_every_unit_dead_is_a_warning():
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    with torch.no_grad():
        model[2].bias.fill_(-100.0)  # no unit of the second layer can fire: nothing reaches the first
    report = audit(model, torch.randn(64, 16))
    (f,) = findings(report, "IA204")
    assert f.location == "2" and f.severity == "warning" and "no gradient reaches the layers below" in f.message


def test_ia204_dead_conv_channels():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 30 * 30, 2))
    with torch.no_grad():
        model[0].bias[:6] = -100.0
    (f,) = findings(audit(model, torch.randn(8, 3, 32, 32)), "IA204")
    assert f.message.startswith("75% of the channels")


def test_ia204_not_for_healthy_relu():
    assert "IA204" not in codes(audit(mlp(6, width=128, inputs=64, init=he_init)))


# IA205 saturated-units -------------------------------------------------------------------------

def test_ia205_saturated_tanh_and_sigmoid():
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Sigmoid(), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].weight.normal_(0, 1.0)  # 8x too large for tanh: pre-activations of std 8
        model[2].bias.fill_(10.0)  # sigmoid pinned near 1
    found = {f.location: f for f in findings(audit(model, torch.randn(64, 64)), "IA205")}
    assert set(found) == {"0", "2"}


def test_ia205_not_for_glorot_tanh():
    model = mlp(4, width=64, inputs=64, act=nn.Tanh)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    assert "IA205" not in codes(audit(model))


# IA206 jacobian-gain ---------------------------------------------------------------------------

def test_jacobian_gain_estimate_matches_the_exact_value():
    # for a Linear layer the Jacobian of each example is W: tr(J^T J) / min(m, n) = ||W||_F^2 / 32
    layer = nn.Linear(32, 32)
    rep = audit(layer, torch.randn(512, 32))
    exact = layer.weight.detach().square().sum().item() / 32
    assert rep.recording.jacobian_gain == pytest.approx(exact, rel=0.1)


def test_ia206_deep_default_init():
    (f,) = findings(audit(mlp(20, width=256, inputs=256)), "IA206")
    assert f.severity == "info" and f.location == "(model)"  # info since the trainability benchmark


def test_ia206_not_for_he_init_nor_for_average_pooling():
    assert "IA206" not in codes(audit(mlp(12, width=256, inputs=256, init=he_init)))
    cnn = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for m in cnn:
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    rep = audit(cnn, torch.randn(8, 3, 16, 16))
    assert "average pooling" in rep.recording.jacobian_note
    assert 0.1 <= rep.recording.jacobian_gain <= 10
    assert "IA206" not in codes(rep)


def test_jacobian_gain_is_not_computed_for_token_ids():
    model = nn.Sequential(nn.Embedding(50, 8), nn.Linear(8, 4))
    rep = audit(model)
    assert rep.recording.jacobian_gain is None and "token ids" in rep.recording.jacobian_note


# IA302 zero-gradient, IA304 / IA305 gradient trends --------------------------------------------

def test_ia302_zero_gradients_below_a_zero_weight():
    model = mlp(4, width=32, inputs=8, init=he_init)
    nn.init.zeros_(model[4].weight)
    report = audit(model)
    by_cause = {f.caused_by: f for f in findings(report, "IA302")}
    # what lies below the zero weight is its consequence, listed under its IA101
    below = by_cause["IA101 4.weight"]
    assert {"0.weight", "2.weight", "0.bias", "2.bias"} <= set(below.locations) and below.severity == "info"
    order = [(f.code, f.location) for f in report.findings]
    root, mine = order.index(("IA101", "4.weight")), order.index(("IA302", below.location))
    # right under its root, among the root's other consequences (the dead units, the lost signal)
    assert root < mine and all(f.caused_by == "IA101 4.weight" for f in report.findings[root + 1:mine + 1])
    # and the head's weight, which sees only relu(0 x + 0) = 0 from it
    assert "6.weight" in below.locations
    # relu(0 x + 0) is 0, where ReLU passes no gradient: the zero layer itself is stuck for
    # that other reason (dead units); the head's bias learns
    (above,) = [f for f in findings(report, "IA302") if f.caused_by is None]
    assert set(above.locations) == {"4.weight", "4.bias"} and above.severity == "warning"


def test_ia302_not_for_healthy():
    assert "IA302" not in codes(audit(mlp(4, width=32, inputs=8, init=he_init)))


def test_ia304_gradient_vanishing_in_deep_default_mlp():
    (f,) = findings(audit(mlp(20, width=256, inputs=256)), "IA304")
    assert f.location == "0.weight" and "shrinks" in f.message


def test_ia305_gradient_exploding_through_a_scaled_shortcut():
    class Shortcut(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(32, 8)
            self.body = mlp(4, width=32, inputs=32, outputs=8, init=he_init)

        def forward(self, x):
            return 1000.0 * self.first(x) + self.body(x)  # the first layer's gradient is 1000x

    (f,) = findings(audit(Shortcut(), torch.randn(16, 32)), "IA305")
    assert f.location == "first.weight" and "grows" in f.message


def test_ia304_ia305_not_for_he_init():
    rep = audit(mlp(12, width=256, inputs=256, init=he_init))
    assert "IA304" not in codes(rep) and "IA305" not in codes(rep)


# IA502 / IA503 recurrent -----------------------------------------------------------------------

def test_ia502_default_lstm_is_not_orthogonal():
    found = findings(audit(nn.LSTM(16, 32)), "IA502")
    assert [f.location for f in found] == ["weight_hh_l0"] and found[0].severity == "info"


def test_ia502_orthogonal_gate_blocks_are_fine():
    lstm = nn.LSTM(16, 32)
    with torch.no_grad():
        for gate in range(4):
            nn.init.orthogonal_(lstm.weight_hh_l0[gate * 32:(gate + 1) * 32])
    assert "IA502" not in codes(audit(lstm))


def test_ia503_spectral_radius():
    rnn = nn.RNN(16, 64)
    with torch.no_grad():
        rnn.weight_hh_l0.copy_(torch.linalg.qr(torch.randn(64, 64))[0] * 1.5)  # radius exactly 1.5
    (f,) = findings(audit(rnn), "IA503")
    assert "1.5" in f.message and "explode" in f.message
    with torch.no_grad():
        rnn.weight_hh_l0.mul_(0.1 / 1.5)  # radius 0.1 with tanh: forgets within steps
    (f,) = findings(audit(rnn), "IA503")
    assert "vanishing memory" in f.message


def test_ia503_not_for_default_or_relu():
    assert "IA503" not in codes(audit(nn.RNN(16, 64)))  # radius about 0.58
    relu_rnn = nn.RNN(16, 64, nonlinearity="relu")
    with torch.no_grad():
        relu_rnn.weight_hh_l0.mul_(0.1)
    assert "IA503" not in codes(audit(relu_rnn))


# regressions found in review --------------------------------------------------------------------

class Views(nn.Module):
    def __init__(self, first, second):
        super().__init__()
        base = torch.randn(8, 8)
        self.a = nn.Parameter(first(base))
        self.b = nn.Parameter(second(base))

    def forward(self, x):
        return x * (self.a.sum() + self.b.sum())


def test_ia402_strided_views_are_compared_element_by_element():
    overlapping = Views(lambda w: w[:, :4], lambda w: w[7:])  # share row 7's first four elements
    assert "IA402" in codes(audit(overlapping, torch.randn(4, 8)))
    disjoint = Views(lambda w: w[:, :4], lambda w: w[:, 4:])  # interleaved spans, no common element
    assert "IA402" not in codes(audit(disjoint, torch.randn(4, 8)))


def test_aliased_parameters_are_not_also_reported_as_clones():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = nn.Parameter(a.weight.data)
    rep = audit(nn.Sequential(a, nn.ReLU(), b), torch.randn(4, 8))
    assert "IA402" in codes(rep) and "IA105" not in codes(rep)


def test_ia304_not_fooled_by_global_average_pooling():
    layers = []
    for cin, cout in [(3, 32), (32, 32), (32, 32), (32, 32)]:
        conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    rep = audit(model, torch.randn(16, 3, 32, 32))
    assert "IA304" not in codes(rep) and "IA305" not in codes(rep)


def test_ia105_fix_redraws_each_copy_the_way_it_was_drawn():
    torch.manual_seed(0)
    model = TwinHeads()
    x = torch.randn(8, 16)
    found = findings(audit(model, x), "IA105")
    weight_fixes = [f.fix for f in found if "head_a.weight" in f.locations]
    assert "kaiming_uniform_(model.head_b.weight, a=math.sqrt(5))" in weight_fixes[0]
    namespace = {"nn": nn, "math": math, "torch": torch, "model": model}
    for f in found:
        exec(f.fix, namespace)  # as a user would paste it
    assert "IA105" not in codes(audit(model, x))


def test_sequential_chain_reads_as_the_fx_trace_does(monkeypatch):
    """A plain nn.Sequential's graph is built without tracing; it must decide every consumer
    exactly as a real torch.fx trace of the same model does."""

    model = nn.Sequential(
        nn.Linear(8, 16), nn.Dropout(0.1), nn.LeakyReLU(0.2),
        nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16), nn.Tanh()),
        nn.Flatten(), nn.Linear(16, 16), nn.Linear(16, 4),
    )
    assert trace.Chain.of(model) is not None
    built, built_traced = flow.analyze(model)
    monkeypatch.setattr(trace.Chain, "of", classmethod(lambda cls, module: None))
    traced, traced_names = flow.analyze(model)
    assert built_traced == traced_names == [""]
    assert {k: v.describe() for k, v in built.items()} == {k: v.describe() for k, v in traced.items()}
    assert {k: v.residual for k, v in built.items()} == {k: v.residual for k, v in traced.items()}
    assert built["0"].describe().startswith("leaky_relu") and built["3.0"].consumer == "norm"


def test_sequential_with_a_custom_module_is_traced_for_real():

    class Scale(nn.Module):
        def forward(self, x):
            return torch.relu(x) * 2

    assert trace.Chain.of(nn.Sequential(nn.Linear(4, 4), Scale())) is None
    flows, _ = flow.analyze(nn.Sequential(nn.Linear(4, 4), Scale()))
    assert flows["0"].describe().startswith("relu")  # seen inside Scale by the real trace


def test_ia105_leaves_copies_of_a_two_valued_pattern_alone_though_they_are_recorded_as_clones():
    """Bit-identical identity matrices are a deliberate pattern, not a copied random draw: the
    recording states the fact (clones), the rule judges it (no IA105)."""
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    nn.init.eye_(model[0].weight)
    nn.init.eye_(model[2].weight)
    rep = audit(model, torch.randn(32, 16))
    by_name = {t.name: t for t in rep.recording.tensors}
    assert by_name["0.weight"].clones == ["2.weight"]
    assert "IA105" not in {f.code for f in rep.findings}
    nn.init.normal_(model[2].weight)
    model[0].weight.data.copy_(model[2].weight.data)  # a random draw copied: reported
    assert "IA105" in {f.code for f in audit(model, torch.randn(32, 16)).findings}


def test_dead_units_and_a_lost_signal_at_a_zero_layer_hang_under_its_ia101():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 2))
    nn.init.zeros_(model[2].weight)
    nn.init.zeros_(model[2].bias)
    report = audit(model, torch.randn(64, 32))
    (dead,) = findings(report, "IA204")
    assert dead.caused_by == "IA101 2.weight"
    (lost,) = findings(report, "IA202")
    assert lost.caused_by == "IA101 2.weight"
    order = [(f.code, f.location) for f in report.findings]
    root = order.index(("IA101", "2.weight"))
    assert {order.index(("IA204", dead.location)), order.index(("IA202", lost.location))} <= set(range(root + 1, len(order)))
