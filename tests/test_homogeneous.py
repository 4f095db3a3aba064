"""A scale too large in a classifier of ReLU-like layers is judged by the size of its logits
(analysis.homogeneous): IA201, IA203 and IA206 are information while IA207's expected loss at
init stays within its line, warnings beyond it and wherever a layer saturates."""

import pytest
import torch
from torch import nn

from initaudit import audit
from initaudit.analysis.homogeneous import homogeneous_classifier
from initaudit.analysis.model import analyze

GROWTH = ("IA201", "IA203", "IA206")


def conv_classifier(activation, depth, gain):
    """``depth`` 3x3 convolutions of 16 channels, global average pooling and a 4-class head, every
    weight drawn at ``gain`` times its nonlinearity's textbook std (He for ReLU, Glorot's 5/3 for
    tanh), biases zero."""
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 16, 3, padding=1), activation()]
    for _ in range(depth - 1):
        layers += [nn.Conv2d(16, 16, 3, padding=1), activation()]
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                if m is model[-1]:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="linear")
                elif activation is nn.Tanh:
                    nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain("tanh"))
                else:
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(gain)
                nn.init.zeros_(m.bias)
    return model


@pytest.fixture(scope="module")
def images():
    return torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def warned(report):
    return sorted({f.code for f in report.findings if f.severity in ("warning", "error")})


def test_a_relu_classifier_drawn_4x_too_large_is_judged_by_its_logits(images):
    model = conv_classifier(nn.ReLU, depth=4, gain=4.0)
    as_classifier = audit(model, images, classes=4, seed=0)
    assert warned(as_classifier) == []
    growth = [f for f in as_classifier.findings if f.code in GROWTH]
    assert {f.code for f in growth} == set(GROWTH)  # still reported, as information
    assert all(f.severity == "info" for f in growth)
    assert any("positively homogeneous" in f.message for f in growth if f.code == "IA203")
    # the logits are large but within IA207's line: its own finding is information too
    excess = as_classifier.recording.expected_initial_loss - torch.log(torch.tensor(4.0)).item()
    assert 10 < excess < 1000
    # without `classes` the audit cannot see the logits: the growth is judged by itself
    plain = audit(model, images, seed=0)
    assert set(GROWTH) <= set(warned(plain))


def test_a_relu_classifier_whose_logits_are_too_large_is_still_warned(images):
    report = audit(conv_classifier(nn.ReLU, depth=12, gain=4.0), images, classes=4, seed=0)
    assert {"IA201", "IA203", "IA206", "IA207"} <= set(warned(report))


def test_a_saturating_classifier_is_not_judged_by_its_logits(images):
    model = conv_classifier(nn.Tanh, depth=4, gain=8.0)
    report = audit(model, images, classes=4, seed=0)
    assert not homogeneous_classifier(analyze(report.recording))
    assert "IA206" in warned(report)  # tanh saturates: the harm is inside, the logits are small
    relu = audit(conv_classifier(nn.ReLU, depth=4, gain=8.0), images, classes=4, seed=0)
    assert homogeneous_classifier(analyze(relu.recording))


class ResidualClassifier(nn.Module):
    """A residual ReLU block on the image itself, ``x + conv(relu(conv(x)))``, then a conv, pooling
    and a head: the skip and the branch scale by different powers of a common factor, so their
    sum is not ``c^L f(x)`` (the skip is the input: no layer's output forks into it)."""

    def __init__(self):
        super().__init__()
        self.branch = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 3, 3, padding=1))
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = x + self.branch(x)
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_a_residual_relu_classifier_is_not_judged_by_its_logits(images):
    torch.manual_seed(0)
    report = audit(ResidualClassifier(), images, classes=4, seed=0)
    assert not homogeneous_classifier(analyze(report.recording))


def test_the_fix_leaves_a_relu_classifier_whose_logits_train_alone(images):
    model = conv_classifier(nn.ReLU, depth=4, gain=4.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    audit(model, images, classes=4, seed=0, fix=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_head_of_a_classifier_whose_layers_are_redrawn_is_scaled_on_the_new_logits(images):
    # IA207's factor (1 / the logits' spread, about 1e-7 here) is measured before the fix; once
    # IA201 re-draws the layers below the head, the logits are measured again instead
    model = conv_classifier(nn.ReLU, depth=12, gain=4.0)
    report = audit(model, images, classes=4, seed=0, fix=True)
    assert warned(report) == []
    head = model[-1].weight
    textbook = (1 / head.shape[1]) ** 0.5
    assert head.std().item() > 0.05 * textbook  # not the stale 1e-7 factor
    assert report.recording.expected_initial_loss < torch.log(torch.tensor(4.0)).item() + 1.0
    assert any("measured again" in line for line in report.fix.lines)
