"""Branches that read a normalized stream, and streams that meet a norm before the loss."""

import torch
from conftest import findings
from torch import nn

from initaudit import audit


class PreNorm(nn.Module):
    """``h = h + fc2(relu(fc1(LN(h))))`` per block, with or without a final norm before the head."""

    def __init__(self, final_norm: bool, d: int = 64, blocks: int = 3, std: float = 4.0) -> None:
        super().__init__()
        self.embed = nn.Linear(8, d)
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(blocks))
        self.fc1 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(d, d) for _ in range(blocks))
        self.final = nn.LayerNorm(d) if final_norm else nn.Identity()
        self.head = nn.Linear(d, 4)
        for layer in [*self.fc1, *self.fc2]:
            nn.init.normal_(layer.weight, std=std)  # 32x LeCun's 1/sqrt(64)

    def forward(self, x):
        h = self.embed(x)
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            h = h + fc2(torch.relu(fc1(norm(h))))
        return self.head(self.final(h))


def test_a_large_branch_on_a_normalized_stream_that_meets_a_final_norm_is_information():
    """Each branch reads LN(h), so it adds a bounded term; the final norm rescales the sum."""
    torch.manual_seed(0)
    report = audit(PreNorm(final_norm=True), torch.randn(32, 8))
    found = findings(report, "IA201")
    assert found and {f.severity for f in found} == {"info"}
    assert "reads a normalized stream" in found[0].message
    assert all(f.severity == "info" for f in findings(report, "IA203"))
    fc1 = next(t for t in report.recording.parameters if t.name == "fc1.0.weight")
    fc2 = next(t for t in report.recording.parameters if t.name == "fc2.0.weight")
    assert fc1.input_normalized and not fc2.input_normalized
    assert fc2.stream_reaches == "norm"


def test_the_same_branches_whose_stream_reaches_the_head_unnormalized_are_a_warning():
    """Without the final norm the head reads a stream hundreds of times its input's size."""
    torch.manual_seed(0)
    report = audit(PreNorm(final_norm=False), torch.randn(32, 8))
    assert "warning" in {f.severity for f in findings(report, "IA201")}
    assert "warning" in {f.severity for f in findings(report, "IA203")}
    fc2 = next(t for t in report.recording.parameters if t.name == "fc2.0.weight")
    assert fc2.stream_reaches is not None and "output" in fc2.stream_reaches.split("+")


def too_large_stack(norm_before_head: bool) -> nn.Sequential:
    """Eight ReLU layers drawn at twice He's std (4x the variance each), optionally a LayerNorm
    between the last hidden layer and the head."""
    layers = []
    for _ in range(8):
        layer = nn.Linear(64, 64)
        nn.init.normal_(layer.weight, std=2 * (2 / 64) ** 0.5)
        layers += [layer, nn.ReLU()]
    if norm_before_head:
        layers.append(nn.LayerNorm(64))
    return nn.Sequential(*layers, nn.Linear(64, 4))


def test_ia206_a_huge_gain_that_reaches_the_head_is_a_warning():
    torch.manual_seed(0)
    report = audit(too_large_stack(False), torch.randn(32, 64))
    (f,) = findings(report, "IA206")
    assert report.recording.jacobian_gain > 1000 and f.severity == "warning"


def test_ia206_a_huge_gain_before_a_head_that_reads_a_norm_is_information():
    """Hugging Face's MobileNet v1 at its own init: the measured gain is far above 10 (about 340;
    above 1000 while its classifier's dropout of p=0.999 still scaled it in training mode), but
    its classifier reads the last BatchNorm through a ReLU6 and global pooling, which sets its
    scale."""
    from corpus import CORPUS

    model, example = CORPUS["hf-mobilenet-v1"]()
    report = audit(model, example)
    (f,) = findings(report, "IA206")
    assert report.recording.jacobian_gain > 100 and f.severity == "info"
    head = next(t for t in report.recording.parameters if t.name == "classifier.weight")
    assert head.input_normalized


# IA202: a representation that collapsed onto one vector ------------------------------------------

def ln_stack(activation, depth: int = 16, width: int = 128, he: bool = False) -> nn.Sequential:
    """``Linear -> (LayerNorm -> activation -> Linear) x depth``: the norms hold every layer's
    output at unit size whatever happens to its dependence on the input."""
    torch.manual_seed(0)
    layers = [nn.Linear(32, width)]
    for _ in range(depth):
        layers += [nn.LayerNorm(width), activation(), nn.Linear(width, width if _ < depth - 1 else 4)]
    model = nn.Sequential(*layers)
    for layer in model:
        if he and isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return model


def test_ia202_a_deep_sigmoid_stack_with_layernorm_collapses_onto_one_vector():
    # sigmoid's outputs share a large positive mean, PyTorch's default init maps it on, and the
    # examples' differences shrink layer after layer (the ordered phase); LayerNorm keeps the size.
    # The trainability benchmark's configuration 12 is this net: no optimizer gets it to learn.
    model = ln_stack(nn.Sigmoid)
    report = audit(model, torch.randn(64, 32))
    (f,) = findings(report, "IA202")
    assert f.severity == "warning" and f.location == "47" and "nearly the same vector" in f.message
    head = next(t for t in report.recording.parameters if t.name == "48.weight")
    assert head.input_from == "47"
    read = report.recording.module("47").output
    assert read.feature_std < 1e-4 * (read.std ** 2 + read.mean ** 2) ** 0.5  # the measured fact itself


def test_ia202_no_collapse_in_a_relu_stack_with_layernorm():
    assert not findings(audit(ln_stack(nn.ReLU, he=True), torch.randn(64, 32)), "IA202")
    assert not findings(audit(ln_stack(nn.Tanh), torch.randn(64, 32)), "IA202")


class PooledCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Sigmoid(),
                                  nn.Conv2d(16, 16, 3, padding=1), nn.Sigmoid())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.pool(self.conv(x)).flatten(1))


def test_ia202_the_input_of_a_pooled_head_is_what_the_pool_averages():
    # averaging a sigmoid's map over 16x16 positions leaves little that varies per example, by
    # design: the representation judged is the pool's input
    report = audit(PooledCNN(), torch.randn(32, 3, 16, 16))
    head = next(t for t in report.recording.parameters if t.name == "head.weight")
    assert head.input_from == "conv.3"
    assert not findings(report, "IA202")
