"""The rule registry: pages agree with it, selection works, plugins load through entry points."""

import re
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

from initaudit.rules.engine import rule_options
from initaudit.rules.registry import load_rules, resolve_selection

PAGES = ROOT / "rules"
SECTIONS = ["What it does", "Why is this bad?", "Example", "Use instead", "Fix safety", "References"]


def pages():
    return {p.name: p for p in PAGES.glob("IA*.md")}


def test_every_rule_has_its_page_and_every_page_a_rule():
    expected = {f"{r.code}-{r.name}.md" for r in load_rules().values()}
    assert set(pages()) == expected


@pytest.mark.parametrize("code", sorted(load_rules()))
def test_page_shape_matches_the_registry(code):
    rule = load_rules()[code]
    text = (PAGES / f"{rule.code}-{rule.name}.md").read_text()
    lines = text.splitlines()
    assert lines[0] == f"# {rule.code} {rule.name}"
    assert f"Default severity: **{rule.severity}**" in text
    headings = [l[3:].strip() for l in lines if l.startswith("## ")]
    required = [h for h in headings if h in SECTIONS]
    assert required == SECTIONS, headings
    if rule.options:
        assert "Options" in headings
        options_text = text.split("## Options", 1)[1].split("\n## ", 1)[0]
        for key in rule.options:
            assert f"`{key}`" in options_text, key
    else:
        assert "Options" not in headings


def test_rules_index_and_readme_list_every_rule():
    index = (PAGES / "README.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for rule in load_rules().values():
        page = f"{rule.code}-{rule.name}.md"
        assert page in index and f"rules/{page}" in readme, rule.code


def test_codes_are_stable_and_well_formed():
    for code, rule in load_rules().items():
        assert re.fullmatch(r"IA[1-9]\d\d", code) and rule.code == code
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name)
        assert rule.severity in ("error", "warning", "info")


def test_selection_by_prefix_and_ignore():
    assert [r.code for r in resolve_selection(["IA1"])] == ["IA101", "IA102", "IA103", "IA104", "IA105"]
    assert [r.code for r in resolve_selection(["ALL"], ["IA1", "IA2", "IA3", "IA5"])] == ["IA401", "IA402", "IA601"]
    assert [r.code for r in resolve_selection(["ia30"], ["IA301"])] == ["IA302", "IA303", "IA304", "IA305"]
    with pytest.raises(ValueError, match="IA9"):
        resolve_selection(["IA9"])
    with pytest.raises(ValueError, match="--ignore"):
        resolve_selection(None, ["XX1"])


def test_unknown_option_is_an_error():
    with pytest.raises(ValueError, match="variance-tolerence"):
        rule_options(load_rules().values(), {"variance-tolerence": 3})
    assert rule_options([load_rules()["IA201"]], {"variance-tolerance": 3})["IA201"]["variance-tolerance"] == 3


def test_plugin_rule_through_an_entry_point(tmp_path):
    """A third-party package registers a rule the way pytest plugins register: an entry point."""
    (tmp_path / "acme_rules.py").write_text(textwrap.dedent(
        """
        from initaudit import rule, Violation

        @rule("AC101", "bias-present", "info", "Reports every bias.")
        def bias_present(ctx):
            for t in ctx.recording.parameters:
                if t.attr == "bias":
                    yield Violation(t.name, "a bias")
        """
    ))
    dist = tmp_path / "acme_rules-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-rules\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[initaudit.rules]\nacme = acme_rules\n")
    script = textwrap.dedent(
        """
        import torch
        from initaudit import audit
        report = audit(torch.nn.Linear(3, 2), torch.randn(4, 3), select=["AC"])
        print([(f.code, f.location) for f in report.findings])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[('AC101', 'bias')]"
