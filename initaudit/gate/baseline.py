"""Baselines, as mypy and ruff offer: adopt the gate on an existing model, stop regressions.

``--write-baseline FILE`` records today's findings by (target, code, location);
``--baseline FILE`` then fails only on findings that are not in it. A baseline is JSON,
never a pickle: reading one cannot run code.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Optional, Sequence, Tuple

from initaudit.core.errors import InitauditError
from initaudit.core.files import write_text_atomically
from initaudit.report.report import Report

SCHEMA = "initaudit-baseline/1"
Key = Tuple[Optional[str], str, str]


class BaselineError(InitauditError):
    """A baseline file that cannot be read (exit code 2)."""


def key(target: Optional[str], code: str, location: str) -> Key:
    return (target, code, location)


def write(path: str, reports: Sequence[Report]) -> int:
    """Write every unsuppressed finding of ``reports``; returns how many."""
    entries = sorted(
        ({"target": r.target, "code": f.code, "location": f.location} for r in reports for f in r.findings),
        key=lambda e: (e["target"] or "", e["code"], e["location"]),
    )
    document = {"schema": SCHEMA, "findings": entries}
    write_text_atomically(path, json.dumps(document, indent=2) + "\n")
    return len(entries)


def load(path: str) -> Counter:
    """The baseline's findings as a multiset of keys."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except FileNotFoundError:
        raise BaselineError(f"baseline not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BaselineError(f"cannot read baseline {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise BaselineError(f"{path} is not an initaudit baseline (expected \"schema\": \"{SCHEMA}\")")
    entries = document.get("findings")
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("code"), str) and isinstance(e.get("location"), str) for e in entries
    ):
        raise BaselineError(f"{path}: 'findings' must be a list of {{target, code, location}}")
    return Counter(key(e.get("target"), e["code"], e["location"]) for e in entries)


def apply(report: Report, baseline: Counter) -> None:
    """Move the report's findings that the baseline accounts for into ``report.baselined``."""
    kept = []
    for f in report.findings:
        k = key(report.target, f.code, f.location)
        if baseline[k] > 0:
            baseline[k] -= 1
            report.baselined.append(f)
        else:
            kept.append(f)
    report.findings = kept
