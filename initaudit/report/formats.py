"""Report formats for machines and CI: JSON, SARIF 2.1.0, GitHub workflow commands."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from initaudit import __version__
from initaudit.report.report import Report
from initaudit.rules.engine import Finding
from initaudit.rules.registry import Rule, load_rules

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note"}
GITHUB_COMMAND = {"error": "error", "warning": "warning", "info": "notice"}


def to_json(reports: Sequence[Report]) -> str:
    """One report: its document. Several: a JSON array of their documents."""
    if len(reports) == 1:
        return reports[0].to_json()
    return json.dumps([r.to_dict() for r in reports], indent=2, allow_nan=False)


def _uri(path: Optional[str]) -> Optional[str]:
    """A path relative to the working directory (the repository root in CI), with ``/``."""
    if not path:
        return None
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    if relative.startswith(".."):
        return "file://" + absolute.replace(os.sep, "/")
    return relative.replace(os.sep, "/")


def fingerprint(target: Optional[str], finding: Finding) -> str:
    """Stable identity of a finding across runs: target, code and location, not the numbers."""
    key = f"{target}\0{finding.code}\0{finding.location}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _sarif_result(report: Report, finding: Finding, rule_index: Dict[str, int], baseline_state: Optional[str]) -> Dict[str, Any]:
    text = finding.message if not finding.fix else f"{finding.message}\nfix: {finding.fix}"
    location: Dict[str, Any] = {
        "logicalLocations": [{"fullyQualifiedName": finding.location or "<model>", "kind": "member"}]
    }
    uri = _uri(report.source)
    if uri is not None:
        physical: Dict[str, Any] = {"artifactLocation": {"uri": uri}}
        if report.line:
            physical["region"] = {"startLine": report.line}
        location["physicalLocation"] = physical
    result: Dict[str, Any] = {
        "ruleId": finding.code,
        "level": SARIF_LEVEL[finding.severity],
        "message": {"text": text},
        "locations": [location],
        "partialFingerprints": {"initaudit/v1": fingerprint(report.target, finding)},
        "properties": {"locations": list(finding.locations), "fix": finding.fix},
    }
    if finding.code in rule_index:
        result["ruleIndex"] = rule_index[finding.code]
    if finding.suppressed_by is not None:
        kind = "inSource" if "__initaudit_ignore__" in finding.suppressed_by else "external"
        result["suppressions"] = [{"kind": kind, "justification": finding.suppressed_by}]
    if baseline_state is not None:
        result["baselineState"] = baseline_state
    return result


def sarif_rule(rule: Rule, options: Mapping[str, Any]) -> Dict[str, Any]:
    """The SARIF reporting descriptor of ``rule``: its description says the thresholds the
    audit ran with (``options``: the user's overrides), its properties how ``--fix`` treats it."""
    description = rule.describe(options)
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": description},
        "help": {"text": f"{description} See rules/{rule.code}-{rule.name}.md in initaudit."},
        "defaultConfiguration": {"level": SARIF_LEVEL[rule.severity]},
        "properties": {"fix": rule.fix},
    }


def sarif_run(report: Report, baseline_used: bool = False) -> Dict[str, Any]:
    """One SARIF run for one audited target."""
    rules = load_rules()
    codes = list(report.rules) or sorted({f.code for f in report.findings})
    descriptors = []
    for code in codes:
        rule = rules.get(code)
        if rule is not None:
            descriptors.append(sarif_rule(rule, report.options))
    rule_index = {d["id"]: i for i, d in enumerate(descriptors)}
    results = [
        _sarif_result(report, f, rule_index, "new" if baseline_used else None) for f in report.findings
    ]
    results += [_sarif_result(report, f, rule_index, "unchanged") for f in report.baselined]
    results += [_sarif_result(report, f, rule_index, None) for f in report.suppressed]
    run: Dict[str, Any] = {
        "tool": {"driver": {"name": "initaudit", "version": __version__, "semanticVersion": __version__, "rules": descriptors}},
        "results": results,
        "invocations": [{"executionSuccessful": True}],
        "properties": {"target": report.target, "device": report.device, "torch": report.torch_version},
    }
    if report.target:
        run["automationDetails"] = {"id": f"initaudit/{report.target}"}
    return run


def to_sarif(reports: Sequence[Report], baseline_used: bool = False) -> str:
    """A SARIF 2.1.0 log with one run per target."""
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [sarif_run(r, baseline_used) for r in reports],
    }
    return json.dumps(log, indent=2, allow_nan=False)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def to_github(reports: Sequence[Report]) -> str:
    """GitHub Actions workflow commands, one per finding, shown as annotations."""
    lines: List[str] = []
    for report in reports:
        for f in report.findings:
            props = []
            uri = _uri(report.source)
            if uri is not None and not uri.startswith("file://"):
                props.append(f"file={_escape_property(uri)}")
                if report.line:
                    props.append(f"line={report.line}")
            props.append(f"title={_escape_property(f'{f.code} {f.rule} ({f.location})')}")
            text = f.message if not f.fix else f"{f.message}\nfix: {f.fix}"
            lines.append(f"::{GITHUB_COMMAND[f.severity]} {','.join(props)}::{_escape_data(text)}")
    return "\n".join(lines)


def render(fmt: str, reports: Sequence[Report], baseline_used: bool = False, show_suppressed: bool = False) -> str:
    if fmt == "json":
        return to_json(reports)
    if fmt == "sarif":
        return to_sarif(reports, baseline_used)
    if fmt == "github":
        return to_github(reports)
    return "\n\n".join(r.table(show_suppressed=show_suppressed) for r in reports)
