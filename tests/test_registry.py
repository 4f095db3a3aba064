"""The rule registry: pages agree with it, selection works, plugins load through entry points."""

import re
import subprocess
import sys
import textwrap
from typing import List, Tuple

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


def table_rows(text: str, header: str) -> List[List[str]]:
    """The body rows of the markdown table whose header row starts with ``header``, as cells
    (stripped, escaped ``\\|`` read as ``|``)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line)[1:-1]
        rows.append([cell.strip().replace("\\|", "|") for cell in cells])
    return rows


def rule_row(cells: List[str], link_prefix: str) -> Tuple[str, List[str]]:
    """``(code, the other cells)`` of a table row whose first cell links the rule's page."""
    match = re.fullmatch(r"\[(\w+)\]\((.+)\)", cells[0])
    assert match, cells[0]
    code = match.group(1)
    rule = load_rules().get(code)
    assert rule is not None, f"the table lists {code}, which no rule has"
    assert match.group(2) == f"{link_prefix}{rule.code}-{rule.name}.md", cells[0]
    return code, cells[1:]


def test_rules_index_table_is_the_registry():
    """rules/README.md's table: every rule, in code order, with its name, default severity,
    fix safety and summary (rendered with the default options)."""
    rows = table_rows((PAGES / "README.md").read_text(), "| code | name | default severity | fix | summary |")
    listed = [rule_row(cells, "") for cells in rows]
    assert [code for code, _ in listed] == sorted(load_rules())
    for code, cells in listed:
        rule = load_rules()[code]
        assert cells == [rule.name, rule.severity, rule.fix, rule.describe()], code


def test_readme_table_lists_every_rule_with_name_and_severity():
    """README.md's table: every rule, in code order, with its name and default severity (the
    last column is prose, written for people)."""
    rows = table_rows((ROOT / "README.md").read_text(), "| code | name | default severity | what it finds |")
    listed = [rule_row(cells, "rules/") for cells in rows]
    assert [code for code, _ in listed] == sorted(load_rules())
    for code, cells in listed:
        rule = load_rules()[code]
        assert cells[:2] == [rule.name, rule.severity], code
        assert cells[2], code


# what each page's "Fix safety" says, by the rule's declared fix safety
FIX_SAFETY_PHRASES = {
    "safe": "safe to apply",
    "data": "LSUV",
    "unsafe": "--unsafe-fixes",
    "none": "Findings of this rule have no fix",
}


@pytest.mark.parametrize("code", sorted(load_rules()))
def test_fix_safety_section_says_the_declared_fix_safety(code):
    """The page's "Fix safety" section uses its category's phrase, and no other category's."""
    rule = load_rules()[code]
    text = (PAGES / f"{rule.code}-{rule.name}.md").read_text()
    section = text.split("\n## Fix safety\n", 1)[1].split("\n## ", 1)[0]
    said = {safety for safety, phrase in FIX_SAFETY_PHRASES.items() if phrase in section}
    assert said == {rule.fix}, (rule.fix, said)


def test_codes_are_stable_and_well_formed():
    for code, rule in load_rules().items():
        assert re.fullmatch(r"IA[1-9]\d\d", code) and rule.code == code
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*", rule.name)
        assert rule.severity in ("error", "warning", "info")


def test_selection_by_prefix_and_ignore():
    """Expectations come from the registry: a family (``IA1``) is every code that starts with it."""
    every = sorted(load_rules())
    families = sorted({code[:3] for code in every})
    assert len(families) >= 2, families  # ignoring one family must leave others to select
    for family in families:
        members = [code for code in every if code.startswith(family)]
        assert [r.code for r in resolve_selection([family])] == members
        assert [r.code for r in resolve_selection(["ALL"], [family])] == [c for c in every if c not in members]
    members = next(m for f in families if len(m := [c for c in every if c.startswith(f)]) >= 2)
    first, rest = members[0], members[1:]
    assert [r.code for r in resolve_selection([first[:4].lower()], [first])] == [
        c for c in rest if c.startswith(first[:4])]
    assert [r.code for r in resolve_selection([rest[-1], first])] == [first, rest[-1]]
    unused = next(f"IA{digit}" for digit in "987654321" if f"IA{digit}" not in families)
    with pytest.raises(ValueError, match=unused):
        resolve_selection([unused])
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
