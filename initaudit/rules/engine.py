"""The rule engine: runs the selected rules on a recording and turns violations into findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set

from initaudit.analysis.model import Analysis, analyze
from initaudit.core.options import SEVERITY_RANK
from initaudit.core.records import Recording
from initaudit.rules.registry import Rule, RuleContext, load_rules


@dataclass
class Finding:
    code: str
    rule: str
    severity: str
    location: str
    message: str
    fix: Optional[str] = None
    locations: List[str] = field(default_factory=list)
    suppressed_by: Optional[str] = None  # why it is suppressed, for suppressed findings only
    caused_by: Optional[str] = None  # "CODE location" of the finding it is a consequence of

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for key in ("suppressed_by", "caused_by"):
            if d[key] is None:
                del d[key]
        return d


def rule_options(rules: Iterable[Rule], overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Each rule's options: its defaults, with ``overrides`` (by option name) applied.

    An override that no rule declares is an error, not silently ignored.
    """
    overrides = dict(overrides or {})
    known = {key for r in load_rules().values() for key in r.options}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown rule option(s) {unknown}; known: {sorted(known)}")
    return {r.code: {k: overrides.get(k, v) for k, v in r.options.items()} for r in rules}


def run_rules(
    recording: Recording,
    rules: Sequence[Rule],
    options: Optional[Mapping[str, Any]] = None,
    tied: Optional[Set[FrozenSet[str]]] = None,
    analysis: Optional[Analysis] = None,
) -> List[Finding]:
    """Apply ``rules`` to a recording; findings most severe first, then by code.

    ``analysis`` is the recording's interpretation (:func:`~initaudit.analysis.model.analyze`),
    made here when not given; every rule reads the same one."""
    per_rule = rule_options(rules, options)
    analysis = analysis or analyze(recording)
    findings: List[Finding] = []
    for r in rules:
        ctx = RuleContext(recording=recording, options=per_rule[r.code], tied=set(tied or ()), analysis=analysis)
        for v in r.check(ctx):
            findings.append(
                Finding(
                    code=r.code,
                    rule=r.name,
                    severity=v.severity or r.severity,
                    location=v.location,
                    message=v.message,
                    fix=v.fix,
                    locations=list(v.locations) or [v.location],
                    caused_by=v.caused_by,
                )
            )
    findings.sort(key=lambda f: (-SEVERITY_RANK[f.severity], f.code))
    return after_their_roots(findings)


def after_their_roots(findings: List[Finding]) -> List[Finding]:
    """``findings`` in order, each consequence moved right after the finding it names in
    ``caused_by`` (one whose root is absent, deselected or suppressed, stays where it was)."""
    key = {id(f): f"{f.code} {f.location}" for f in findings}
    roots = set(key.values())
    consequences: Dict[str, List[Finding]] = {}
    for f in findings:
        if f.caused_by in roots and f.caused_by != key[id(f)]:
            consequences.setdefault(f.caused_by, []).append(f)
    placed = {id(c) for group in consequences.values() for c in group}
    ordered: List[Finding] = []
    emitted: Set[int] = set()

    def emit(f: Finding) -> None:
        emitted.add(id(f))
        ordered.append(f)
        for c in consequences.get(key[id(f)], []):
            if id(c) not in emitted:
                emit(c)

    for f in findings:
        if id(f) not in placed:
            emit(f)
    ordered.extend(f for f in findings if id(f) not in emitted)  # a cycle of causes: as they were
    return ordered
