"""The ready-made gates: pre-commit hook definitions and the GitHub Actions example."""

import shlex

import yaml
from click.testing import CliRunner
from conftest import EXAMPLES, ROOT

from initaudit.cli import main


def test_pre_commit_hooks_run_initaudit_without_filenames():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    ids = {h["id"]: h for h in hooks}
    assert set(ids) == {"initaudit", "initaudit-system"}
    for hook in hooks:
        assert hook["entry"] == "initaudit"
        assert hook["pass_filenames"] is False  # the target comes from args, not file names
        assert hook["language"] in ("python", "system")


def test_pre_commit_invocation_as_pre_commit_builds_it():
    # pre-commit runs `entry + args`: with the target in args, that is an ordinary CLI call
    hook = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())[0]
    args = [f"{EXAMPLES / 'zero_hidden.py'}:build", "--fail-on", "error"]
    command = shlex.split(hook["entry"]) + args
    assert command[0] == "initaudit"
    assert CliRunner().invoke(main, command[1:]).exit_code == 1


def test_github_workflow_gates_training_on_the_audit(tmp_path, monkeypatch):
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    jobs = workflow["jobs"]
    assert jobs["train"]["needs"] == "initaudit"
    steps = jobs["initaudit"]["steps"]
    audit_step = next(s for s in steps if s.get("run", "").startswith("initaudit ") and "sarif" in s["run"])
    upload = next(s for s in steps if "upload-sarif" in s.get("uses", ""))
    assert upload["if"] == "always()"
    # the workflow's own command line works: run it against an example in a scratch repo
    (tmp_path / "model.py").write_text((EXAMPLES / "zero_hidden.py").read_text())
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(audit_step["run"])[1:]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1  # the gate closes
    assert upload["with"]["sarif_file"] in argv and (tmp_path / upload["with"]["sarif_file"]).exists()
