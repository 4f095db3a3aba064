"""Rules on hand-made recordings: each case gives a rule the statistics it judges, no model runs."""

from recordings import filled, module_record, output_record, recording, run_rule, tensor_record


def mlp_recording(hidden_weight=None, head_weight=None):
    """Linear '0' -> ReLU '1' -> Linear '2' (the head: the last to start), each called once."""
    hidden = hidden_weight or tensor_record("0.weight", (8, 4))
    head = head_weight or tensor_record("2.weight", (3, 8))
    modules = [module_record("0", "Linear"), module_record("1", "ReLU"), module_record("2", "Linear")]
    return recording([hidden, head], modules)


# IA101 zero-weight ---------------------------------------------------------------------------

def test_ia101_reports_an_all_zero_hidden_weight_with_the_init_its_relu_asks_for():
    (finding,) = run_rule("IA101", mlp_recording(hidden_weight=tensor_record("0.weight", (8, 4), **filled(0.0))))
    assert (finding.code, finding.severity, finding.location) == ("IA101", "error", "0.weight")
    assert finding.fix.startswith("nn.init.kaiming_normal_(model[0].weight") and "relu" in finding.fix


def test_ia101_reports_a_zero_head_for_information_without_a_fix():
    (finding,) = run_rule("IA101", mlp_recording(head_weight=tensor_record("2.weight", (3, 8), **filled(0.0))))
    assert (finding.severity, finding.location, finding.fix) == ("info", "2.weight", None)


def test_ia101_passes_drawn_weights_and_zero_biases():
    assert run_rule("IA101", mlp_recording()) == []
    zero_bias = tensor_record("0.bias", (8,), **filled(0.0))
    assert run_rule("IA101", recording([zero_bias], [module_record("0", "Linear")])) == []


# IA501 forget-bias-unset ---------------------------------------------------------------------

def lstm_biases(ih_forget, hh_forget, hidden=4):
    """The two bias records of an LSTM 'lstm', gate means i, f, g, o with the given forget means."""
    return [
        tensor_record(f"lstm.bias_{kind}_l0", (4 * hidden,), module_type="LSTM", gate_means=[0.0, forget, 0.0, 0.0])
        for kind, forget in (("ih", ih_forget), ("hh", hh_forget))
    ]


def test_ia501_reports_a_forget_bias_below_the_minimum_with_the_slice_fix():
    (finding,) = run_rule("IA501", recording(lstm_biases(0.1, 0.1)))
    assert (finding.code, finding.location) == ("IA501", "lstm.bias_ih_l0")
    assert finding.locations == ["lstm.bias_ih_l0", "lstm.bias_hh_l0"]
    assert finding.fix == ("with torch.no_grad(): model.lstm.bias_ih_l0[4:8].fill_(1.0); "
                           "model.lstm.bias_hh_l0[4:8].fill_(0.0)")


def test_ia501_sums_both_biases_and_follows_its_option():
    rec = recording(lstm_biases(1.0, 0.0))
    assert run_rule("IA501", rec) == []
    assert [f.code for f in run_rule("IA501", rec, {"forget-bias-min": 1.5})] == ["IA501"]
    # the other gates' means do not count
    other_gates = tensor_record("lstm.bias_ih_l0", (16,), module_type="LSTM", gate_means=[5.0, 0.0, 5.0, 5.0])
    assert [f.code for f in run_rule("IA501", recording([other_gates]))] == ["IA501"]


# IA601 zero-norm-scale -----------------------------------------------------------------------

def norm_recording(gain_fill, residual=None):
    gain = tensor_record("1.weight", (8,), module_type="LayerNorm", **filled(gain_fill))
    modules = [module_record("0", "Linear"), module_record("1", "LayerNorm", residual=residual)]
    return recording([tensor_record("0.weight", (8, 4)), gain], modules)


def test_ia601_reports_a_zero_norm_gain_with_the_fix_to_one():
    (finding,) = run_rule("IA601", norm_recording(0.0))
    assert (finding.severity, finding.location, finding.fix) == ("warning", "1.weight", "nn.init.ones_(model[1].weight)")


def test_ia601_passes_a_unit_gain_and_reports_a_zero_residual_gain_as_info():
    assert run_rule("IA601", norm_recording(1.0)) == []
    (finding,) = run_rule("IA601", norm_recording(0.0, residual="residual"))
    assert (finding.severity, finding.fix) == ("info", None)


# IA204 dead-units: a forward rule, from the outputs' statistics ------------------------------

def relu_recording(dead_fraction):
    modules = [module_record("0", "Linear"), module_record("1", "ReLU")]
    outputs = {"0": output_record((8, 4)), "1": output_record((8, 4), dead_last=dead_fraction)}
    return recording([tensor_record("0.weight", (4, 4))], modules, outputs=outputs)


def test_ia204_reports_a_layer_whose_relu_units_are_mostly_dead():
    (finding,) = run_rule("IA204", relu_recording(0.75))
    assert (finding.code, finding.location) == ("IA204", "0")
    assert finding.message.startswith("75% of the units after '0' (1) are zero")


def test_ia204_passes_at_the_threshold_and_follows_its_option():
    assert run_rule("IA204", relu_recording(0.5)) == []
    assert [f.code for f in run_rule("IA204", relu_recording(0.5), {"dead-fraction": 0.4})] == ["IA204"]
