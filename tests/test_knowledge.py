"""The one module of model knowledge, checked against what PyTorch's modules really do;
and the shared pieces beside it: the forward's calls, the number cells, atomic writes."""

import math
import os

import pytest
import torch
from torch import nn

from initaudit import audit, stats
from initaudit.analysis.graph import forward_calls, forward_layers, split_at_average_pools
from initaudit.core import knowledge
from initaudit.core.files import write_atomically, write_text_atomically
from initaudit.core.numbers import short_number
from initaudit.fixing.fixer import save_state_dict

RECURRENT = [nn.LSTM, nn.LSTMCell, nn.GRU, nn.GRUCell, nn.RNN, nn.RNNCell]


# families --------------------------------------------------------------------------------------

def test_layer_types_are_linear_and_the_convolutions():
    assert knowledge.LAYER_TYPES == (
        nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    )
    assert knowledge.is_layer(nn.Conv2d(3, 4, 3)) and knowledge.is_layer(nn.LazyLinear(4))
    assert not knowledge.is_layer(nn.Embedding(5, 3)) and not knowledge.is_layer(nn.LSTM(3, 4))
    assert not knowledge.is_layer(None)


def test_family_names_are_the_class_names():
    assert knowledge.CONV_NAMES == {
        "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    }
    assert {"BatchNorm2d", "LayerNorm", "GroupNorm", "SyncBatchNorm"} <= knowledge.NORM_NAMES
    assert "Linear" not in knowledge.NORM_NAMES and "Linear" not in knowledge.CONV_NAMES
    assert knowledge.EMBEDDING_NAMES == {"Embedding", "EmbeddingBag"}
    assert knowledge.RECURRENT_NAMES == {"RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell"}
    # a name is a family member only as the class itself: no prefix matching
    assert "ConvBlock" not in knowledge.CONV_NAMES and "LSTMStack" not in knowledge.RECURRENT_NAMES


@pytest.mark.parametrize("module, dims", [
    (nn.Conv1d(2, 3, 3), 1), (nn.Conv3d(2, 3, 3), 3), (nn.ConvTranspose2d(2, 3, 3), 2),
    (nn.BatchNorm2d(4), 2), (nn.BatchNorm3d(4), 3), (nn.Linear(2, 3), None), (nn.LayerNorm(4), None),
])
def test_spatial_dims_are_what_the_module_convolves_over(module, dims):
    assert knowledge.spatial_dims(module) == dims
    if dims is not None:
        channels = getattr(module, "in_channels", None) or module.num_features
        module.eval()(torch.ones((1, channels) + (5,) * dims))  # an input of that many spatial dims is accepted
        with pytest.raises((RuntimeError, ValueError)):
            module(torch.ones((1, channels) + (5,) * (dims + 1)))  # one more is not


# recurrent gates -------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", RECURRENT)
def test_gate_count_is_how_pytorch_stacks_the_weights(cls):
    hidden = 5
    module = cls(3, hidden)
    stacked = [name for name, _ in module.named_parameters() if knowledge.is_gate_stacked(name)]
    assert stacked and len(stacked) == len(list(module.parameters()))
    for name in stacked:
        assert getattr(module, name).shape[0] == knowledge.gate_count(cls) * hidden
    # the class and the recorded type name agree
    assert knowledge.gate_names(cls) == knowledge.gate_names(cls.__name__) != ""


def test_gate_names_of_other_modules_and_subclasses_are_empty():
    class MyLSTM(nn.LSTM):
        pass

    assert knowledge.gate_names(nn.Linear) == "" and knowledge.gate_count("Linear") == 0
    assert knowledge.gate_count(MyLSTM) == 0  # by the exact class: a subclass may lay its weights out otherwise
    assert knowledge.gate_count(type(None)) == 0
    assert [knowledge.gate_names(c) for c in (nn.LSTM, nn.GRU, nn.RNN)] == ["ifgo", "rzn", "h"]


def test_forget_gate_index_is_the_block_that_gates_the_cell_state():
    # zero weights, and a very negative bias on the block said to be the forget gate: the cell
    # state is then forgotten (c' = f c + i g = 0 c + 0.5 tanh(0) = 0); on any other block it stays
    hidden = 4
    cell = nn.LSTMCell(3, hidden)
    forget = knowledge.forget_gate(nn.LSTMCell)
    assert forget == knowledge.forget_gate("LSTM") == 1
    with torch.no_grad():
        for p in cell.parameters():
            p.zero_()
        cell.bias_ih[forget * hidden:(forget + 1) * hidden] = -100.0
    c0 = torch.ones(1, hidden)
    _, c1 = cell(torch.zeros(1, 3), (torch.zeros(1, hidden), c0))
    assert torch.allclose(c1, torch.zeros(1, hidden))
    assert knowledge.forget_gate("GRU") is None and knowledge.forget_gate(nn.RNN) is None
    assert knowledge.forget_gate("Linear") is None


def test_gate_stacked_attributes():
    for attr in ("weight_ih", "weight_hh_l0", "bias_ih_l1_reverse", "bias_hh"):
        assert knowledge.is_gate_stacked(attr)
    for attr in ("weight", "bias", "weight_hr_l0"):  # an LSTM's projection is one block
        assert not knowledge.is_gate_stacked(attr)


def test_recurrent_nonlinearity():
    assert knowledge.recurrent_nonlinearity(nn.RNN(3, 4, nonlinearity="relu")) == "relu"
    assert knowledge.recurrent_nonlinearity(nn.RNNCell(3, 4)) == "tanh"
    assert knowledge.recurrent_nonlinearity(nn.LSTM(3, 4)) is None
    assert knowledge.recurrent_nonlinearity(nn.Tanh()) is None


# fans of a transposed convolution --------------------------------------------------------------

@pytest.mark.parametrize("in_channels, out_channels, kernel, groups", [(6, 4, 3, 2), (5, 2, 3, 1), (8, 8, (2, 3), 4)])
def test_transposed_conv_fan_in_counts_the_inputs_each_output_sums(in_channels, out_channels, kernel, groups):
    conv = nn.ConvTranspose2d(in_channels, out_channels, kernel, groups=groups, bias=False)
    nn.init.ones_(conv.weight)
    out = conv(torch.ones(1, in_channels, 9, 9))
    # an output away from the border sums every (input channel of its group, kernel tap) pair once
    expected = knowledge.transposed_conv_fan_in(in_channels, groups, conv.weight.shape)
    assert out.amax().item() == expected
    # what torch.nn.init reads from the weight's shape is another number
    kernel_taps = math.prod(conv.kernel_size)
    assert stats.fan_in_and_fan_out(conv.weight.shape)[0] == out_channels // groups * kernel_taps
    assert expected == in_channels // groups * kernel_taps


def test_audit_records_the_transposed_conv_fan():
    model = nn.Sequential(nn.ConvTranspose2d(64, 3, 4))
    (weight,) = [t for t in audit(model, torch.randn(2, 64, 5, 5)).recording.parameters if t.attr == "weight"]
    assert weight.fan_in == 48 and weight.layer_fan_in == 64 * 16


# cancellation ----------------------------------------------------------------------------------

def test_cancelled_variance():
    assert stats.cancelled(1e-4, 1.0)  # the mean's square took all but 1e-4 of the second moment
    assert not stats.cancelled(0.5, 1.0)
    assert not stats.cancelled(0.0, 0.0)  # all zeros: the variance 0 is exact
    assert stats.cancelled(1e-6, 1.0, limit=1e-3) and not stats.cancelled(1e-6, 1.0, limit=1e-9)
    # a float32 tensor far from zero with a small spread is redone exactly
    def fast(x):
        return stats.combine_fast(x.numel(), stats.fast_summary(x).tolist())

    x = 1000 + torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 1e-2
    assert stats.needs_exact(fast(x)) and not stats.needs_exact(fast(x - 1000))


# number cells ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, 0.0, 1.0, -2.5, 1234.5678, 1e-7, 123456789.0, math.nan, math.inf, -math.inf])
def test_short_number_matches_each_table_format(value):
    report = "" if value is None else f"{value:.4g}"  # the tensor table: NaN and Inf shown
    table = "" if value is None or not math.isfinite(value) else f"{value:.4g}"  # the fixer's
    profile = "" if value is None or not math.isfinite(value) else f"{value:.3g}"  # the profile's
    assert short_number(value, 4, non_finite=True) == report
    assert short_number(value) == table
    assert short_number(value, 3) == profile


def test_short_number_examples():
    assert short_number(1234.5678) == "1235" and short_number(1234.5678, 3) == "1.23e+03"
    assert short_number(math.nan) == "" and short_number(math.nan, non_finite=True) == "nan"
    assert short_number(-math.inf, non_finite=True) == "-inf" and short_number(None, non_finite=True) == ""


# atomic writes ---------------------------------------------------------------------------------

def test_write_text_atomically_replaces_the_file(tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("old\n")
    write_text_atomically(str(path), "new é\n")
    assert path.read_text(encoding="utf-8") == "new é\n"
    assert os.listdir(tmp_path) == ["report.txt"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"old")
    seen = []

    def half_then_fail(tmp):
        seen.append(tmp)
        with open(tmp, "wb") as handle:
            handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(str(path), half_then_fail)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.pt"]
    assert os.path.dirname(seen[0]) == str(tmp_path)  # beside the target: the rename stays on one file system


def test_interrupted_write_of_a_new_file_leaves_nothing(tmp_path):
    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(tmp_path / "new.txt"), interrupted)
    assert os.listdir(tmp_path) == []


def test_save_state_dict_refuses_to_overwrite_unless_forced(tmp_path):
    model = nn.Linear(3, 2)
    path = tmp_path / "fixed.pt"
    save_state_dict(model, str(path))
    loaded = torch.load(path)
    assert torch.equal(loaded["weight"], model.weight)
    with torch.no_grad():
        model.weight.zero_()
    with pytest.raises(FileExistsError):
        save_state_dict(model, str(path))
    assert not torch.equal(torch.load(path)["weight"], model.weight)  # untouched
    save_state_dict(model, str(path), force=True)
    assert torch.equal(torch.load(path)["weight"], model.weight)
    assert os.listdir(tmp_path) == ["fixed.pt"]

# the forward's calls ---------------------------------------------------------------------------

def test_forward_layers_in_order_split_at_average_pooling():
    shared = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), shared, nn.Tanh(), shared)
    rec = audit(model, torch.randn(16, 4)).recording
    assert [c.name for c in forward_layers(rec)] == ["0", "2", "2"]  # one entry a call
    assert [c.name for c in forward_calls(rec)] == ["0", "1", "2", "3", "2", ""]
    assert all(c.output is rec.call_outputs[c.index] for c in forward_calls(rec))

    pooled = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.AvgPool1d(2), nn.Conv1d(4, 4, 3), nn.ReLU())
    rec = audit(pooled, torch.randn(8, 2, 20)).recording
    calls = [(c.index, c.name) for c in forward_layers(rec)]
    assert split_at_average_pools(rec, calls) == [["0"], ["3"]]
    assert split_at_average_pools(rec, calls[1:]) == [["3"]]  # no empty segment before it
    assert split_at_average_pools(rec, []) == []
