"""IA207: the loss at init of a classifier, read from its logits (record.logits)."""

import math

import pytest
import torch
from click.testing import CliRunner
from conftest import codes, findings
from torch import nn
from torch.nn import functional as F

from initaudit import audit
from initaudit.cli import main
from initaudit.record.logits import find_logits, initial_loss


def classifier(head_std=None, classes=10):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, classes))
    if head_std is not None:
        nn.init.normal_(model[2].weight, std=head_std)
    return model


def test_expected_loss_is_the_mean_cross_entropy_over_every_label():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 11) * 3
    rows = logits.reshape(-1, 11)
    # brute force: the cross-entropy of each row for each possible label, averaged
    every = torch.stack([F.cross_entropy(rows, torch.full((rows.shape[0],), c), reduction="none")
                         for c in range(11)]).mean()
    expected, spread = initial_loss(logits).tolist()
    assert expected == pytest.approx(float(every), rel=1e-6)
    assert spread == pytest.approx(float(rows.double().std(dim=1, correction=0).mean()), rel=1e-6)
    # equal logits: exactly ln C, the floor
    assert initial_loss(torch.zeros(3, 11))[0].item() == pytest.approx(math.log(11))


def test_logits_are_read_from_a_logits_field_or_a_declared_class_count():
    out = torch.randn(4, 10)
    assert find_logits(out) is None  # a plain tensor: a regression, unless declared
    assert find_logits(out, classes=10) is out
    assert find_logits(out, classes=5) is None
    assert find_logits({"logits": out}) is out


def test_an_over_large_head_is_reported_with_a_fix_that_brings_the_loss_to_ln_c():
    model = classifier(head_std=3.0)
    x = torch.randn(64, 16)
    report = audit(model, x, classes=10)
    (finding,) = findings(report, "IA207")
    assert finding.severity == "info" and finding.location == "2" and "mul_(" in finding.fix
    assert report.recording.expected_initial_loss - math.log(10) > 5
    fixed = audit(model, x, classes=10, fix=True, fail_on="info")
    assert any(c.code == "IA207" for c in fixed.fix.changes)
    assert "IA207" not in codes(fixed)
    assert fixed.recording.expected_initial_loss - math.log(10) < 1.0


def test_logits_so_large_the_softmax_is_one_hot_are_a_warning():
    report = audit(classifier(head_std=3e3), torch.randn(64, 16), classes=10)
    assert findings(report, "IA207")[0].severity == "warning"


def test_default_init_and_regressions_are_not_reported():
    x = torch.randn(64, 16)
    report = audit(classifier(), x, classes=10)
    assert "IA207" not in codes(report) and report.recording.classes == 10
    # no classes declared and no logits field: nothing to compare with ln C
    report = audit(classifier(head_std=3.0), x)
    assert report.recording.classes is None and "IA207" not in codes(report)


def test_a_hugging_face_model_is_read_through_its_logits():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2))
    ids = torch.randint(0, 64, (4, 16))
    report = audit(model, ids)
    assert report.recording.classes == 64 and "IA207" not in codes(report)  # its own init: near ln 64
    assert report.recording.expected_initial_loss - math.log(64) < 0.5


def test_classes_from_the_command_line_and_the_factory(write_target):
    path = write_target(
        "import torch\n"
        "from torch import nn\n"
        "def build(classes=None):\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 10))\n"
        "    nn.init.normal_(model[2].weight, std=3.0)\n"
        "    out = {'model': model, 'input': torch.randn(32, 16)}\n"
        "    return {**out, 'classes': classes} if classes is not None else out\n"
    )
    plain = CliRunner().invoke(main, [f"{path}:build", "--select", "IA207"])
    assert "IA207" not in plain.stdout
    flag = CliRunner().invoke(main, [f"{path}:build", "--select", "IA207", "--classes", "10"])
    assert "IA207" in flag.stdout and flag.exit_code == 0  # info by default
    declared = CliRunner().invoke(main, [f"{path}:build", "--select", "IA207", "--factory-arg", "classes=10",
                                         "--fail-on", "info"])
    assert "IA207" in declared.stdout and declared.exit_code == 1
    bad = CliRunner().invoke(main, [f"{path}:build", "--factory-arg", "classes=1"])
    assert bad.exit_code == 2 and "classes" in bad.stderr


def test_the_json_report_holds_the_loss_at_init():
    import json

    import jsonschema

    from conftest import ROOT

    report = audit(classifier(head_std=3.0), torch.randn(64, 16), classes=10)
    doc = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(doc, json.loads((ROOT / "initaudit" / "schema.json").read_text()))
    assert doc["initial_loss"]["classes"] == 10
    assert doc["initial_loss"]["expected"] > doc["initial_loss"]["ln_classes"] + 5
    assert json.loads(json.dumps(audit(classifier(), torch.randn(8, 16)).to_dict()))["initial_loss"] is None
