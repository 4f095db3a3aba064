"""The rule registry: every rule is a plugin to the engine.

A rule is a function from a :class:`RuleContext` (recorded statistics, never the model) to
an iterable of :class:`Violation`, registered with :func:`rule`. Built-in rules live in the
modules of :mod:`initaudit.rules`, each imported on first use; third-party rules register
the same way from a module named by an entry point in the ``initaudit.rules`` group::

    [project.entry-points."initaudit.rules"]
    mycompany = "mycompany.initaudit_rules"
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set

from initaudit.analysis.model import Analysis, analyze
from initaudit.core.options import CODE_PATTERN, SEVERITIES
from initaudit.core.records import Recording

NEEDS = ("values", "forward", "backward")
ENTRY_POINT_GROUP = "initaudit.rules"


@dataclass
class Violation:
    """What a rule returns: where, what, and the call that fixes it (``None``: no fix)."""

    location: str
    message: str
    fix: Optional[str] = None
    severity: Optional[str] = None  # overrides the rule's default severity
    locations: Sequence[str] = ()  # every name involved, when more than one


@dataclass
class RuleContext:
    """What a rule may look at: the recording, what it means (the analysis), the rule's
    options and the user's declarations."""

    recording: Recording
    options: Dict[str, Any] = field(default_factory=dict)
    tied: Set[FrozenSet[str]] = field(default_factory=set)
    analysis: Optional[Analysis] = None  # filled from the recording when not given

    def __post_init__(self) -> None:
        if self.analysis is None:
            self.analysis = analyze(self.recording)


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    severity: str
    summary: str
    check: Callable[[RuleContext], Iterable[Violation]]
    options: Mapping[str, Any] = field(default_factory=dict)
    needs: str = "values"  # what it reads: "values" only, the "forward", or the "backward" too


_RULES: Dict[str, Rule] = {}
_loaded = False


def rule(
    code: str,
    name: str,
    severity: str,
    summary: str,
    options: Optional[Mapping[str, Any]] = None,
    needs: str = "values",
) -> Callable[[Callable[[RuleContext], Iterable[Violation]]], Callable[[RuleContext], Iterable[Violation]]]:
    """Register the decorated function as rule ``code``.

    ``needs`` says what the rule reads: parameter ``"values"`` alone, the ``"forward"``
    (module outputs), or the ``"backward"`` (gradients); an audit that skips the forward
    (``params_only``) or the backward (``no_backward``) skips the rules that need it.
    """
    if needs not in NEEDS:
        raise ValueError(f"rule {code}: needs must be one of {NEEDS}")
    if not CODE_PATTERN.match(code):
        raise ValueError(f"rule code {code!r} must be letters followed by three digits")
    if severity not in SEVERITIES:
        raise ValueError(f"rule {code}: severity must be one of {SEVERITIES}")

    def register(check: Callable[[RuleContext], Iterable[Violation]]) -> Callable[[RuleContext], Iterable[Violation]]:
        existing = _RULES.get(code)
        # re-importing a rule module registers the same function again; another one is a clash
        if existing is not None and existing.check.__qualname__ != check.__qualname__:
            raise ValueError(f"rule code {code} is registered twice")
        _RULES[code] = Rule(code, name, severity, summary, check, dict(options or {}), needs)
        return check

    return register


def load_rules() -> Dict[str, Rule]:
    """All registered rules by code: built-ins, then entry-point plugins."""
    global _loaded
    if not _loaded:
        from initaudit.rules import builtin

        for info in pkgutil.iter_modules(builtin.__path__):
            importlib.import_module(f"{builtin.__name__}.{info.name}")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()
        _loaded = True
    return dict(sorted(_RULES.items()))


def unknown_codes(selectors: Iterable[str]) -> List[str]:
    """The selectors (codes, prefixes, ``ALL``) that match no registered rule."""
    rules = load_rules()
    return [
        raw
        for raw in selectors
        if raw.strip() and raw.strip().upper() != "ALL" and not any(c.startswith(raw.strip().upper()) for c in rules)
    ]


def _matching(selectors: Iterable[str], rules: Mapping[str, Rule]) -> Set[str]:
    codes: Set[str] = set()
    for raw in selectors:
        sel = raw.strip().upper()
        if sel:
            codes |= set(rules) if sel == "ALL" else {c for c in rules if c.startswith(sel)}
    return codes


def resolve_selection(
    select: Optional[Iterable[str]] = None, ignore: Optional[Iterable[str]] = None
) -> List[Rule]:
    """Rules enabled by ``select`` minus ``ignore`` (codes, prefixes such as ``IA2``, or ``ALL``).

    A selector that matches no rule is an error, not silently nothing.
    """
    rules = load_rules()
    for flag, selectors in (("--select", select or ()), ("--ignore", ignore or ())):
        bad = unknown_codes(selectors)
        if bad:
            raise ValueError(f"{flag} {bad[0]!r} matches no rule code (known: {', '.join(rules)})")
    chosen = _matching(select, rules) if select else set(rules)
    chosen -= _matching(ignore or (), rules)
    return [rules[c] for c in sorted(chosen)]
