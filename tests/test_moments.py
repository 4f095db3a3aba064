"""Module outputs' moments reduced several at a time (initaudit.moments) against the
one-output reduction (stats.output_moments), which tests/test_stats.py checks by hand."""

import math

import pytest
import torch
from torch import nn

from initaudit import stats
from initaudit.record import inspector, moments, staging, transfer


def queued(outputs):
    """Each ``(tensor, nonlinearity)`` through OutputMoments, as the host rows by index."""
    deferred = transfer.Deferred()
    batcher = moments.OutputMoments(deferred)
    for index, (out, nonlinearity) in enumerate(outputs):
        batcher.add(index, out, nonlinearity)
    batcher.flush()
    return deferred.resolve()


def assert_rows_match(got, out, nonlinearity):
    expected = stats.output_moments(out, nonlinearity).tolist()
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-5, abs=1e-12)


def test_batched_rows_equal_one_output_at_a_time():
    torch.manual_seed(0)
    relu_out = torch.relu(torch.randn(16, 12))
    relu_out[:, 3] = 0.0  # a dead unit
    relu_out[:, 7] = 0.0
    offset = 1000.0 + 1e-3 * torch.randn(16, 12)  # a large shared offset, a tiny spread
    with_nan = torch.randn(16, 12)
    with_nan[2, 5] = math.nan
    dead_nan = torch.relu(torch.randn(16, 12))
    dead_nan[:, 0] = 0.0
    dead_nan[4, 0] = math.nan  # zero but for a NaN: not dead
    outputs = [
        (torch.randn(16, 12), None),
        (relu_out, "relu"),
        (offset, None),
        (with_nan, None),
        (dead_nan, "relu"),
        (torch.randn(16, 3, 4), None),  # same batch and features, another shape: viewed as 16 x 12
        (torch.randn(16, 12) * 3 - 1, "gelu"),
    ]
    rows = queued(outputs)
    for index, (out, nonlinearity) in enumerate(outputs):
        assert_rows_match(rows[index], out, nonlinearity)
    assert rows[1][5] == 2.0 and rows[4][5] == 0.0  # dead units, counted by hand
    # the large offset: std and per-feature std against float64 on the same float32 values
    exact = offset.double()
    _, std, _, feature_std = stats.output_from_moments(rows[2], offset.shape)
    assert std == pytest.approx(exact.std(correction=0).item(), rel=1e-3)
    assert feature_std == pytest.approx(exact.std(dim=0, correction=0).mean().item(), rel=1e-3)


def test_float64_and_float16_outputs_batch_in_their_own_dtype():
    torch.manual_seed(1)
    outputs = [(torch.randn(8, 10, dtype=torch.float64), None), (torch.randn(8, 10).half(), None),
               (torch.randn(8, 10, dtype=torch.float64), "relu"), (torch.randn(8, 10).half(), None)]
    rows = queued(outputs)
    for index, (out, nonlinearity) in enumerate(outputs):
        assert_rows_match(rows[index], out, nonlinearity)


def test_saturating_and_higher_dimensional_activations_are_reduced_alone(monkeypatch):
    torch.manual_seed(2)
    alone = []
    real = stats.output_moments
    monkeypatch.setattr(stats, "output_moments", lambda out, nl=None: alone.append(nl) or real(out, nl))
    outputs = [(torch.tanh(torch.randn(8, 6) * 4), "tanh"), (torch.sigmoid(torch.randn(8, 6)), "sigmoid"),
               (torch.relu(torch.randn(8, 3, 5)), "relu"), (torch.randn(8, 6), None)]
    rows = queued(outputs)
    assert alone == ["tanh", "sigmoid", "relu"]  # the plain output was batched
    monkeypatch.setattr(stats, "output_moments", real)
    for index, (out, nonlinearity) in enumerate(outputs):
        assert_rows_match(rows[index], out, nonlinearity)


def test_the_copy_keeps_the_values_the_hook_saw():
    x = torch.randn(8, 6)
    expected = stats.output_moments(x.clone()).tolist()
    deferred = transfer.Deferred()
    batcher = moments.OutputMoments(deferred)
    batcher.add("out", x, None)
    x.relu_()  # as an in-place activation after the layer would
    batcher.flush()
    assert deferred.resolve()["out"] == pytest.approx(expected)


def test_an_alias_gets_the_same_row_before_and_after_the_reduction():
    deferred = transfer.Deferred()
    batcher = moments.OutputMoments(deferred)
    x, y = torch.relu(torch.randn(8, 6)), torch.randn(8, 6)
    first = batcher.add("x", x, "relu")
    batcher.alias(first, "x again")  # still staged
    second = batcher.add("y", y, None)
    batcher.flush()
    batcher.alias(second, "y again")  # reduced already
    rows = deferred.resolve()
    assert rows["x again"] == rows["x"] and rows["y again"] == rows["y"]
    assert len(rows["x"]) == stats.OUTPUT_MOMENTS + 1 and len(rows["y"]) == stats.OUTPUT_MOMENTS


def test_full_matrices_and_more_shapes_than_kept_still_give_every_row(monkeypatch):
    monkeypatch.setattr(staging, "STAGED", 4 * 8 * 6)  # room for four 8 x 6 outputs per matrix
    torch.manual_seed(3)
    outputs = [(torch.randn(8, 6 + (i % 7)), "relu" if i % 2 else None) for i in range(40)]
    rows = queued(outputs)
    for index, (out, nonlinearity) in enumerate(outputs):
        assert_rows_match(rows[index], out, nonlinearity)


def test_an_output_larger_than_half_a_staging_matrix_is_reduced_alone(monkeypatch):
    monkeypatch.setattr(staging, "STAGED", 100)
    alone = []
    real = stats.output_moments
    monkeypatch.setattr(stats, "output_moments", lambda out, nl=None: alone.append(1) or real(out, nl))
    rows = queued([(torch.randn(8, 8), None), (torch.randn(4, 10), None), (torch.randn(4, 10), None)])
    assert alone == [1]  # 64 elements: no room for a second; 40: two fit
    assert len(rows) == 3


def test_an_audit_records_the_same_outputs_as_one_at_a_time(monkeypatch):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 30), nn.ReLU(inplace=True),
                          nn.Linear(30, 30), nn.Tanh(), nn.Sequential(nn.Linear(30, 10), nn.GELU()))
    x = torch.randn(64, 20)
    batched = inspector.inspect(model, x).call_outputs
    monkeypatch.setattr(staging.Staging, "add", lambda self, x, item: False)  # each alone
    alone = inspector.inspect(model, x).call_outputs
    assert len(batched) == len(alone) == 10
    for a, b in zip(batched, alone):
        for field in ("mean", "std", "zero_fraction", "feature_std", "dead_last", "dead_channel", "saturated"):
            va, vb = getattr(a, field), getattr(b, field)
            assert (va is None and vb is None) or (math.isnan(va) and math.isnan(vb)) or va == pytest.approx(vb, rel=1e-5)


@pytest.mark.parametrize("example", ["deep_mlp", "fix_deep_relu", "healthy_mlp", "lstm_forget", "shared_linear",
                                     "zero_hidden"])
def test_example_audits_find_the_same_with_every_tensor_reduced_alone(example, monkeypatch):
    """The shipped examples: the same findings (messages included) and output statistics
    with the hooks' small tensors staged as with each reduced alone."""
    from conftest import EXAMPLES

    from initaudit import audit
    from initaudit.load.inputs import make_input
    from initaudit.load.target import load_target

    target = load_target(f"{EXAMPLES / example}.py:build")
    x = target.example_input if target.example_input is not None else make_input(target.model)
    staged_adds = []
    real_add = staging.Staging.add
    monkeypatch.setattr(staging.Staging, "add", lambda self, t, item: staged_adds.append(1) or real_add(self, t, item))
    staged = audit(target.model, x, seed=1)
    assert staged_adds  # the comparison compares something
    monkeypatch.setattr(staging.Staging, "add", lambda self, t, item: False)
    alone = audit(target.model, x, seed=1)
    assert [(f.code, f.location, f.message) for f in staged.findings] == \
        [(f.code, f.location, f.message) for f in alone.findings]
    compared = 0
    for a, b in zip(staged.modules, alone.modules):
        assert a.name == b.name and (a.output is None) == (b.output is None)
        if a.output is None:
            continue
        for field in ("mean", "std", "zero_fraction", "feature_std", "dead_last", "dead_channel", "saturated"):
            va, vb = getattr(a.output, field), getattr(b.output, field)
            assert (va is None and vb is None) or (math.isnan(va) and math.isnan(vb)) or \
                va == pytest.approx(vb, rel=1e-5, abs=1e-12), (a.name, field)
        compared += 1
    assert compared


def test_a_column_varying_by_units_in_the_last_place_keeps_its_variance_whatever_the_summing_order():
    """A vanished signal behind a bias: 0.05 plus a few float32 ulps. The centred sum of
    squares is corrected for the rounding of the mean, so the staged reduction (a column of
    a wide matrix) and the lone one agree with float64 on the same float32 values."""
    torch.manual_seed(5)
    ulp = 0.05 * 2.0 ** -23
    out = (0.05 + ulp * torch.randint(-3, 4, (256, 1)).double()).float()
    exact = out.double()
    want = exact.std(correction=0).item()
    assert want > 0
    others = [(torch.randn(256, 1), None) for _ in range(5)]
    rows = queued(others + [(out, None)])
    staged = stats.output_from_moments(rows[5], out.shape)
    alone = stats.output_from_moments(stats.output_moments(out).tolist(), out.shape)
    for feature_std in (staged[3], alone[3]):
        assert feature_std == pytest.approx(want, rel=1e-3)
