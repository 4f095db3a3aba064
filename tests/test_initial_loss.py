"""IA207: the loss at init of a classifier, read from its logits (record.logits), and of a regression,
against the loss of an all-zero output (record.probe.zero_output_loss)."""

import copy
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


def ia207_json(path, *args):
    """The CLI's JSON report of ``path:build`` with IA207 alone, and its exit code."""
    import json

    result = CliRunner().invoke(main, [f"{path}:build", "--select", "IA207", "--format", "json", *args])
    return json.loads(result.stdout), result.exit_code


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
    alone = audit(copy.deepcopy(model), x, classes=10, fix=True, fail_on="info", select=["IA207"])
    assert any(c.code == "IA207" for c in alone.fix.changes)  # its own line: the head by 1/spread
    assert "IA207" not in codes(alone)
    assert alone.recording.expected_initial_loss - math.log(10) < 1.0
    # with IA206's data fix too, LSUV changes the layer below the head first: the head is then
    # scaled on logits measured after it, not by the factor measured before
    fixed = audit(model, x, classes=10, fix=True, fail_on="info")
    assert "IA207" not in codes(fixed) and fixed.recording.expected_initial_loss - math.log(10) < 1.0
    assert any(c.name == "0.weight" for c in fixed.fix.changes) and any(c.name == "2.weight" for c in fixed.fix.changes)
    assert any(line.startswith("# IA207 initial-loss: 2, measured again") for line in fixed.fix.lines)


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


# --- with the batch's labels: a leak, and the class prior ---------------------------------

class TiedLM(nn.Module):
    """A language model whose output embedding is its input embedding, with a residual block:
    at init its stream still carries the input token, so the logit of that token is large."""

    def __init__(self, vocab=50, width=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.norm = nn.LayerNorm(width)

    def forward(self, ids):
        h = self.embed(ids)
        return self.norm(h + self.mlp(h)) @ self.embed.weight.t()


def lm_loss(labels):
    return lambda out, _x: F.cross_entropy(out.reshape(-1, out.shape[-1]), labels.reshape(-1), ignore_index=-100)


def test_labelled_loss_is_the_cross_entropy_and_its_shuffled_expectation():
    from initaudit.record.logits import labelled_loss

    torch.manual_seed(0)
    z, y = torch.randn(40, 5) * 2, torch.randint(0, 5, (40,))
    y[3] = -100  # ignored, as by F.cross_entropy
    loss, shuffled, noise, entropy, rows = labelled_loss(z, y).tolist()
    keep = y != -100
    assert rows == 39 and loss == pytest.approx(F.cross_entropy(z, y, ignore_index=-100).item(), rel=1e-6)
    # every row scored against every label of the batch: the mean over all permutations
    brute = torch.stack([F.cross_entropy(z[keep], label.repeat(39)) for label in y[keep]]).mean()
    assert shuffled == pytest.approx(brute.item(), rel=1e-6)
    p = torch.bincount(y[keep], minlength=5).double() / 39
    assert entropy == pytest.approx(-(p[p > 0] * p[p > 0].log()).sum().item(), rel=1e-9) and 0 < noise < 1


def test_labels_the_model_already_knows_at_init_are_a_leak():
    torch.manual_seed(0)
    model, ids = TiedLM(), torch.randint(0, 50, (8, 16))
    # the classic bug: the labels are the input tokens, not the next ones
    leaked = audit(model, ids, loss=lm_loss(ids), classes=50, labels=ids)
    (leak,) = [f for f in findings(leaked, "IA207") if "shuffled" in f.message]
    assert leak.severity == "warning" and leaked.recording.labelled_loss.loss < 0.01
    # the next token, which the input does not hold: no leak, though the logits are as large
    following = torch.cat([ids[:, 1:], torch.full((8, 1), -100)], dim=1)
    fine = audit(model, ids, loss=lm_loss(following), classes=50, labels=following)
    assert fine.recording.labelled_loss.rows == 8 * 15
    assert not [f for f in findings(fine, "IA207") if "shuffled" in f.message]


def test_a_hugging_face_language_model_given_its_own_labels_is_not_a_leak():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)  # one loss in both modes
    model = transformers.GPT2LMHeadModel(config)  # its output embedding is tied to its input
    ids = torch.randint(0, 64, (4, 16))
    # labels = input_ids is the convention: the model shifts them; read aligned they would leak
    report = audit(model, {"input_ids": ids, "labels": ids})
    labelled = report.recording.labelled_loss
    assert labelled is not None and labelled.rows == 4 * 15  # scored shifted, as the model does
    assert labelled.loss == pytest.approx(model(input_ids=ids, labels=ids).loss.item(), rel=1e-4)
    assert not [f for f in findings(report, "IA207") if "shuffled" in f.message]


def test_imbalanced_labels_get_the_output_bias_advice_and_balanced_ones_do_not():
    model, x = classifier(classes=2), torch.randn(64, 16)
    rare = (torch.arange(64) % 10 == 0).long()  # one in ten
    report = audit(model, x, loss=lambda out, _x: F.cross_entropy(out, rare), classes=2, labels=rare)
    (prior,) = [f for f in findings(report, "IA207") if "imbalanced" in f.message]
    assert prior.severity == "info" and prior.locations == ["2.bias"]
    assert report.recording.labelled_loss.prior_entropy < 0.4 < math.log(2)
    # with the bias at log p the loss is already the prior's entropy: nothing to advise
    freq = torch.bincount(rare, minlength=2).float() / 64
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.copy_(freq.log())
    at_prior = audit(model, x, loss=lambda out, _x: F.cross_entropy(out, rare), classes=2, labels=rare)
    assert not [f for f in findings(at_prior, "IA207") if "imbalanced" in f.message]
    balanced = torch.arange(64) % 2
    even = audit(classifier(classes=2), x, loss=lambda out, _x: F.cross_entropy(out, balanced), classes=2,
                 labels=balanced)
    assert even.recording.labelled_loss is not None and "IA207" not in codes(even)


def test_labels_from_the_factory_and_in_the_json_report(write_target):
    import json

    import jsonschema

    from conftest import ROOT

    path = write_target(
        "import torch\n"
        "from torch import nn\n"
        "def build(labels='good'):\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))\n"
        "    y = torch.randint(0, 4, (64,))\n"
        "    x = torch.randn(64, 16)\n"
        "    x[:, :4] = 30 * nn.functional.one_hot(y, 4)  # the label, written into the input\n"
        "    with torch.no_grad():\n"
        "        model[0].weight[:4, :4] = torch.eye(4)\n"
        "        model[2].weight[:, :4] = torch.eye(4)\n"
        "    return {'model': model, 'input': x, 'classes': 4, 'labels': y if labels == 'good' else y.float()}\n"
    )
    doc, exit_code = ia207_json(path)
    jsonschema.validate(doc, json.loads((ROOT / "initaudit" / "schema.json").read_text()))
    labelled = doc["initial_loss"]["labelled"]
    assert labelled["rows"] == 64 and labelled["loss"] < labelled["shuffled"] - 1
    assert exit_code == 1 and any("shuffled" in f["message"] for f in doc["findings"])
    bad = CliRunner().invoke(main, [f"{path}:build", "--factory-arg", "labels='float'"])
    assert bad.exit_code == 2 and "labels" in bad.stderr and "Traceback" not in bad.output


def test_the_cross_entropy_in_your_loss_names_the_classes_and_the_labels():
    model, x = classifier(head_std=3.0), torch.randn(64, 16)
    y = torch.arange(64) % 10
    # no classes declared: the loss's nll_loss node holds the log-probabilities and the labels
    report = audit(model, x, loss=lambda out, _x: F.cross_entropy(out, y) + 1e-4 * out.pow(2).mean())
    rec = report.recording
    assert rec.classes == 10 and any("above ln 10" in f.message for f in findings(report, "IA207"))
    assert rec.labelled_loss.rows == 64
    assert rec.labelled_loss.loss == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-5)
    # its ignore_index is honoured; a regression loss names no classes
    ignored = audit(model, x, loss=lambda out, _x: nn.CrossEntropyLoss(ignore_index=3)(out, y))
    assert ignored.recording.labelled_loss.rows == 64 - 7
    assert audit(model, x, loss=lambda out, _x: F.mse_loss(out, torch.zeros_like(out))).recording.classes is None
    # a leak found from the loss alone: the language model scored on its own input tokens
    torch.manual_seed(0)
    lm, ids = TiedLM(), torch.randint(0, 50, (8, 16))
    leaked = audit(lm, ids, loss=lm_loss(ids))
    assert leaked.recording.classes == 50 and any("shuffled" in f.message for f in findings(leaked, "IA207"))


# a regression: the loss at init against the loss of an all-zero output -----------------------------


def regressor(gain):
    """A 4-layer ReLU MLP with He's std times ``gain`` (1: He's own), 8 outputs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                          nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 8))
    for layer in model:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            layer.weight.data.mul_(gain)
    return model


def mse_against(y):
    return lambda out, _x: F.mse_loss(out, y)


def test_the_zero_output_loss_of_a_squared_error_is_the_targets_mean_square():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), 3 * torch.randn(64, 8)
    report = audit(regressor(1.0), x, loss=mse_against(y))
    assert report.recording.zero_output_loss == pytest.approx(float(y.double().pow(2).mean()), rel=1e-6)
    assert report.to_dict()["zero_output_loss"] == pytest.approx(report.recording.zero_output_loss)


def test_an_output_far_larger_than_the_targets_is_a_warning_and_a_moderate_one_info():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), torch.randn(64, 8)
    # each layer 3x He's std: the output is 3^4 = 81x what He's init gives, about 50x the targets
    (finding,) = findings(audit(regressor(3.0), x, loss=mse_against(y)), "IA207")
    assert finding.severity == "warning" and finding.location == "6"
    report = audit(regressor(3.0), x, loss=mse_against(y))
    ratio = report.recording.loss / report.recording.zero_output_loss
    assert ratio > 400 and f"{ratio:.3g}x the loss of an output of all zeros" in finding.message
    # 1.5x He's std per layer: about 5x He's output, a ratio between 10 and 400: info
    (mild,) = findings(audit(regressor(1.5), x, loss=mse_against(y)), "IA207")
    assert mild.severity == "info"


def test_a_regression_at_hes_init_or_without_a_loss_of_its_own_is_not_judged():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), torch.randn(64, 8)
    report = audit(regressor(1.0), x, loss=mse_against(y))
    assert report.recording.loss / report.recording.zero_output_loss < 10
    assert "IA207" not in codes(report)
    # the audit's own loss (a random projection) has no zero-output reference: nothing measured
    plain = audit(regressor(3.0), x)
    assert plain.recording.zero_output_loss is None and "IA207" not in codes(plain)


def test_a_loss_that_cannot_take_zeros_leaves_the_audit_alone():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), torch.randn(64, 8)

    def normalized(out, _x):  # a cosine loss: the zero output has no direction
        if not out.abs().sum():
            raise ValueError("zero output")
        return 1 - F.cosine_similarity(out, y).mean()

    report = audit(regressor(3.0), x, loss=normalized)
    assert report.recording.zero_output_loss is None and "IA207" not in codes(report)


def test_the_fix_scales_an_over_large_regression_head_to_the_targets_size():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), torch.randn(64, 8)
    model = regressor(1.0)
    model[6].weight.data.mul_(30)  # He's stack, the head alone 30x too large
    report = audit(model, x, loss=mse_against(y))
    assert report.recording.loss / report.recording.zero_output_loss > 400
    fixed = audit(model, x, loss=mse_against(y), fix=True, select=["IA207"])
    assert {c.name for c in fixed.fix.changes} == {"6.weight", "6.bias"}
    # the output is then about the targets' size: E[(f - y)^2] = E[y^2] + E[f^2], twice the zero output's
    ratio = fixed.recording.loss / fixed.recording.zero_output_loss
    assert 1.5 < ratio < 2.5 and "IA207" not in codes(fixed)


def test_a_regression_head_is_measured_again_after_the_layers_below_it_are_fixed():
    torch.manual_seed(1)
    x, y = torch.randn(64, 32), torch.randn(64, 8)
    model = regressor(3.0)  # every layer 3x He's: IA201 re-draws the stack, then the head is measured again
    fixed = audit(model, x, loss=mse_against(y), fix=True)
    assert any(line.startswith("# IA207 initial-loss: 6, measured again") for line in fixed.fix.lines)
    assert fixed.recording.loss / fixed.recording.zero_output_loss < 10 and "IA207" not in codes(fixed)


def test_a_regression_factory_with_its_loss_is_judged_from_the_command_line(write_target):
    path = write_target(
        "import torch\n"
        "from torch import nn\n"
        "from torch.nn import functional as F\n"
        "def build(head_scale=300.0):\n"
        "    torch.manual_seed(0)\n"
        "    model = nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 8))\n"
        "    model[2].weight.data.mul_(head_scale)\n"
        "    x, y = torch.randn(64, 32), torch.randn(64, 8)\n"
        "    return {'model': model, 'input': x, 'loss': lambda out, _x: F.mse_loss(out, y)}\n"
    )
    doc, exit_code = ia207_json(path)
    (finding,) = [f for f in doc["findings"] if f["code"] == "IA207"]
    assert finding["severity"] == "warning" and exit_code == 1
    assert doc["loss"] / doc["zero_output_loss"] > 400
    calm = CliRunner().invoke(main, [f"{path}:build", "--select", "IA207", "--factory-arg", "head_scale=1.0"])
    assert "IA207" not in calm.stdout and calm.exit_code == 0


def test_a_hugging_face_regression_head_is_judged_through_its_logits():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=1)  # one output: a regression (an STS score, a reward)
    model = BertForSequenceClassification(config)
    ids, y = torch.randint(0, 100, (16, 8)), torch.randn(16)

    def loss(out, _x):
        return F.mse_loss(out.logits.squeeze(-1), y)

    own = audit(model, ids, loss=loss)  # its own _init_weights: a head of std 0.02, an output near zero
    assert own.recording.zero_output_loss == pytest.approx(float(y.double().pow(2).mean()), rel=1e-5)
    assert "IA207" not in codes(own)
    with torch.no_grad():
        model.classifier.weight.mul_(10000)
    (finding,) = findings(audit(model, ids, loss=loss), "IA207")
    assert finding.severity == "warning" and finding.location == "classifier"
    fixed = audit(model, ids, loss=loss, fix=True, select=["IA207"])
    assert fixed.recording.loss / fixed.recording.zero_output_loss < 2.5
