"""The command line: examples, exit codes, JSON schema, selection, and every bad target."""

import json
import subprocess
import sys
import textwrap

import jsonschema
import pytest
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT

from initaudit.cli import main

SCHEMA = json.loads((ROOT / "initaudit" / "schema.json").read_text())


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run_json(*args):
    result = run(*args, "--format", "json")
    document = json.loads(result.stdout)
    jsonschema.validate(document, SCHEMA)
    return result, document


@pytest.mark.parametrize(
    "example, code, severity, exit_code",
    [
        ("zero_hidden", "IA101", "error", 1),
        ("shared_linear", "IA401", "warning", 1),
        ("lstm_forget", "IA501", "info", 0),
        ("deep_mlp", "IA201", "warning", 1),
    ],
)
def test_examples_report_their_finding(example, code, severity, exit_code):
    result, doc = run_json(EXAMPLES / f"{example}.py:build")
    assert result.exit_code == exit_code, result.output
    assert (code, severity) in {(f["code"], f["severity"]) for f in doc["findings"]}


def test_healthy_example_exits_zero():
    result, doc = run_json(EXAMPLES / "healthy_mlp.py:build")
    assert result.exit_code == 0
    assert not [f for f in doc["findings"] if f["severity"] in ("warning", "error")]


def test_table_output():
    result = run(EXAMPLES / "zero_hidden.py:build")
    assert result.exit_code == 1
    assert "IA101" in result.stdout and "error" in result.stdout
    assert "fix: nn.init.kaiming_normal_(model[2].weight" in result.stdout
    assert "1 error, " in result.stdout and " in 6 parameters (85.0K elements) on cpu" in result.stdout


def test_stats_lists_every_parameter():
    result = run(EXAMPLES / "healthy_mlp.py:build", "--stats")
    for i in range(0, 24, 2):
        assert f"{i}.weight" in result.stdout


def test_json_document_is_complete():
    _, doc = run_json(EXAMPLES / "lstm_forget.py:build")
    assert doc["schema"] == "initaudit/1"
    assert doc["target"].endswith("lstm_forget.py:build") and doc["device"] == "cpu"
    names = {n for p in doc["parameters"] for n in p["names"]}
    assert "lstm.bias_hh_l1" in names and "embed.weight" in names
    assert doc["summary"]["parameters"] == len(doc["parameters"]) == 11
    forget = [f for f in doc["findings"] if f["code"] == "IA501"]
    assert doc["summary"]["warnings"] == 0 and len(forget) == 2 and {f["severity"] for f in forget} == {"info"}
    head = next(m for m in doc["modules"] if m["names"] == ["head"])
    assert head["output"]["shape"] == [64, 16, 12]


def test_json_nan_is_null():
    result = run(EXAMPLES / "deep_mlp.py:build", "--format", "json", "--batch-size", "1")
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert all(m["output"] is None or m["output"]["feature_std"] is None for m in doc["modules"])


def test_select_ignore_and_fail_on():
    target = EXAMPLES / "zero_hidden.py:build"
    # the zero layer's consequences (IA2, IA3) are selected away: IA101 alone decides
    assert run(target, "--select", "IA1,IA4").exit_code == 1
    assert run(target, "--select", "IA1,IA4", "--ignore", "IA101").exit_code == 0
    _, doc = run_json(target, "--select", "IA201,IA4")
    assert doc["rules"] == ["IA201", "IA401", "IA402"] and doc["findings"] == []
    assert run(target, "--fail-on", "never").exit_code == 0
    assert run(EXAMPLES / "shared_linear.py:build", "--fail-on", "error").exit_code == 0
    assert run(EXAMPLES / "shared_linear.py:build", "--fail-on", "warning").exit_code == 1


def test_unknown_code_is_an_error():
    result = run(EXAMPLES / "zero_hidden.py:build", "--select", "IA999")
    assert result.exit_code == 2 and "IA999" in result.stderr


def test_tied_flag():
    target = EXAMPLES / "shared_linear.py:build"
    result = run(target, "--tied", "2.weight=4.weight", "--tied", "2.bias=4.bias")
    assert result.exit_code == 0, result.output


def test_factory_arg_and_input_shape():
    result, doc = run_json(EXAMPLES / "deep_mlp.py:build", "--factory-arg", "depth=3",
                           "--factory-arg", "inputs=5", "--input-shape", "7,5")
    assert len(doc["parameters"]) == 6
    first = next(m for m in doc["modules"] if m["names"] == ["0"])
    assert first["output"]["shape"] == [7, 256]


def test_seed_gives_the_same_report():
    def stable(seed):
        _, doc = run_json(EXAMPLES / "deep_mlp.py:build", "--factory-arg", "depth=4", "--seed", seed)
        doc["summary"].pop("seconds")
        return doc

    assert stable(3) == stable(3)
    assert stable(3)["parameters"] != stable(4)["parameters"]


def test_cuda_without_cuda_is_exit_2():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # the CUDA path is exercised by test_inspector
    result = run(EXAMPLES / "healthy_mlp.py:build", "--device", "cuda")
    assert result.exit_code == 2 and "CUDA is not available" in result.stderr


# bad targets: one line on stderr, exit 2, no traceback unless --verbose -------------------------

BAD = {
    "missing file": (None, "nowhere/missing.py:build", "file not found: nowhere/missing.py"),
    "syntax error": ("def build(:\n", "{path}:build", "syntax error"),
    "missing factory": ("from torch import nn\ndef other():\n    return nn.Linear(1, 1)\n", "{path}:build",
                        "has no attribute 'build'"),
    "factory raising": ("def build():\n    raise ValueError('bad width')\n", "{path}:build",
                        "build() raised ValueError: bad width"),
    "non-module": ("def build():\n    return 'a model'\n", "{path}:build", "returned str, expected an nn.Module"),
    "forward failing": (
        "import torch\nfrom torch import nn\n"
        "def build():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(5, 2)), torch.randn(3, 4)\n",
        "{path}:build", "forward of Sequential failed in module '2' (Linear)"),
    "no input": ("import torch\nfrom torch import nn\nclass M(nn.Module):\n    def forward(self, x):\n        return x\n"
                 "def build():\n    return M()\n", "{path}:build", "cannot infer an example input"),
    "bad input shape": ("from torch import nn\ndef build():\n    return nn.Linear(2, 2)\n", "{path}:build --input-shape 4,x",
                        "--input-shape '4,x'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_target_one_line_exit_2(write_target, case):
    source, target, expected = BAD[case]
    path = write_target(source) if source else ""
    args = target.format(path=path).split()
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("initaudit: error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


def test_verbose_shows_the_traceback(write_target):
    path = write_target("def build():\n    raise ValueError('bad width')\n")
    result = run(f"{path}:build", "--verbose")
    assert result.exit_code == 2 and "Traceback" in result.stderr and "bad width" in result.stderr


def test_real_process_entry_point(write_target):
    """The installed command, as a user runs it: stdout, stderr and exit code of a real process."""
    path = write_target("def build():\n    raise ValueError('bad width')\n")
    bad = subprocess.run([sys.executable, "-m", "initaudit", f"{path}:build"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "ValueError: bad width" in bad.stderr
    good = subprocess.run([sys.executable, "-m", "initaudit", f"{EXAMPLES / 'healthy_mlp.py'}:build"],
                          capture_output=True, text=True)
    assert good.returncode == 0 and "No findings." in good.stdout


def test_help_version_and_usage_errors_answer_without_importing_torch():
    # like ruff's, the CLI's help is instant: torch is imported once an audit is about to run
    code = textwrap.dedent(
        """
        import sys
        from click.testing import CliRunner
        from initaudit.cli import main
        runner = CliRunner()
        assert runner.invoke(main, ["--help"]).exit_code == 0
        assert "initaudit" in runner.invoke(main, ["--version"]).output
        assert runner.invoke(main, ["model.py:build", "--fail-on", "sometimes"]).exit_code == 2
        assert "torch" not in sys.modules, "imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
