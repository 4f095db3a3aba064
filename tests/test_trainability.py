"""The trainability benchmark: its stored labels reproduce, and its scoring arithmetic is right."""

import json
import math
import sys

import pytest
from conftest import ROOT

BENCH = ROOT / "benchmarks" / "trainability"
sys.path.insert(0, str(BENCH))

import run  # noqa: E402
from configs import config  # noqa: E402
from train import label  # noqa: E402


def stored():
    return json.loads((BENCH / "labels.json").read_text())["labels"]


def cheapest(rows, count_per_label=3, budget_s=15.0):
    """A few quick configurations of each label, from as many families as the budget allows."""
    chosen = []
    for wanted in ("fails", "trains"):
        families = set()
        for row in sorted((r for r in rows if r["label"] == wanted), key=lambda r: r["seconds"]):
            if row["config"]["family"] in families or sum(r["seconds"] for r in chosen) + row["seconds"] > budget_s:
                continue
            families.add(row["config"]["family"])
            chosen.append(row)
            if len(families) == count_per_label:
                break
    return chosen


def test_the_stored_labels_reproduce():
    rows = cheapest(stored())
    assert {r["label"] for r in rows} == {"fails", "trains"}
    assert len({r["config"]["family"] for r in rows}) >= 3
    for row in rows:
        assert config(row["config"]["index"]) == row["config"]  # the generator is deterministic
        again = label(row["config"])
        assert again["label"] == row["label"], row["config"]
        for new, old in zip(again["losses"], row["losses"]):
            assert (new is None and old is None) or new == pytest.approx(old, rel=1e-4), row["config"]


def test_another_draw_is_the_same_recipe_with_other_weights():
    import torch
    from configs import build
    from tasks import task_for

    cfg = config(429)  # a 4-conv CNN drawn at twice He's std
    task = task_for(cfg)
    labelled, again, other = (build(cfg, task, draw=d).state_dict() for d in (0, 0, 1))
    assert all(torch.equal(labelled[k], again[k]) for k in labelled)  # draw 0 is the labelled model
    assert labelled.keys() == other.keys()
    weights = [k for k in labelled if k.endswith("weight") and labelled[k].dim() > 1]
    assert weights and all(labelled[k].shape == other[k].shape for k in labelled)
    assert not any(torch.equal(labelled[k], other[k]) for k in weights)
    for k in weights:  # the same init scheme: the same std within sampling error
        assert other[k].std().item() == pytest.approx(labelled[k].std().item(), rel=0.35), k


def test_the_stored_labels_keep_their_procedure():
    document = json.loads((BENCH / "labels.json").read_text())
    assert document["procedure"]["threshold"] == 0.5 and len(document["procedure"]["runs"]) == 6
    for row in document["labels"]:
        finite = [loss for loss in row["losses"] if loss is not None]
        trains = bool(finite) and min(finite) < 0.5 * row["baseline"]
        assert (row["label"] == "trains") == trains, row["config"]


def test_auc_is_the_mann_whitney_statistic():
    assert run.auc([3, 2, 1, 0], [True, True, False, False]) == 1.0
    assert run.auc([0, 1, 2, 3], [True, True, False, False]) == 0.0
    assert run.auc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    assert run.auc([2, 0, 1], [True, False, True]) == 1.0
    assert run.auc([1, 2], [True, True]) is None


def test_the_split_is_fixed_by_index_and_holds_every_family_on_both_sides():
    calibrate = [i for i in range(24) if run.in_split(i, "calibrate")]
    report = [i for i in range(24) if run.in_split(i, "report")]
    assert calibrate == [*range(0, 6), *range(12, 18)] and report == [*range(6, 12), *range(18, 24)]
    for side in (calibrate, report):
        assert {config(i)["family"] for i in side} == set(run.FAMILIES)
    assert all(run.in_split(i, "all") for i in range(24))


def test_the_extended_range_holds_every_kind_on_both_sides():
    from configs import EXTENDED_FROM, EXTENDED_KINDS

    def kind(i):
        cfg = config(i)
        return cfg.get("arch", cfg["family"])

    indices = range(EXTENDED_FROM, EXTENDED_FROM + 24)
    for split in ("calibrate", "report"):
        assert {kind(i) for i in indices if run.in_split(i, split)} == set(EXTENDED_KINDS)
    assert {config(i)["family"] for i in indices} == {"hf", "transformer", "cnn"}


def test_scoring_counts_precision_and_recall_of_the_warnings():
    rows = [
        {"label": "fails", "findings": [("IA202", "warning")], "proxy": 3.0},
        {"label": "fails", "findings": [], "proxy": 2.0},
        {"label": "trains", "findings": [("IA206", "warning"), ("IA101", "info")], "proxy": 1.0},
        {"label": "trains", "findings": [("IA101", "info")], "proxy": 0.0},
    ]
    s = run.score(rows)
    assert (s["precision"], s["recall"]) == (0.5, 0.5)
    assert s["proxy_auc"] == 1.0 and s["auc"] == 0.5  # fails score 1, 0; trains 1, 0
    assert s["per_rule"] == {"IA202": {"fails": 1}, "IA206": {"trains": 1}}
    assert not math.isnan(s["auc"])


def test_the_reference_targets_are_made_from_the_tasks_own_inputs():
    """``reference.py``'s harder targets read the very inputs the labels were trained on: the
    channel statistics are the offsets and scales the images task drew (its per-channel means
    follow the offsets), and the teacher's classes come from the regression task's targets."""
    import reference
    import tasks
    import torch

    stats = reference.channel_statistics()
    images = tasks.images()
    assert torch.equal(stats.inputs, images.inputs) and stats.targets.shape == (tasks.EXAMPLES, 6)
    means = images.inputs.mean(dim=(2, 3))  # offset + scale * (noise averaged over 144 pixels)
    for channel in range(3):
        pair = torch.stack([means[:, channel], stats.targets[:, channel]])
        assert torch.corrcoef(pair)[0, 1] > 0.99
    classes = reference.teacher_classes()
    regression = tasks.regression()
    assert torch.equal(classes.inputs, regression.inputs)
    assert torch.equal(classes.targets, regression.targets.argmax(dim=1))
    # the trivial loss of a classifier that predicts the class frequencies: at most ln 8
    assert 0 < classes.baseline <= math.log(8) + 1e-9
