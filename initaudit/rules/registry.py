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
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from initaudit.analysis.model import Analysis, analyze
from initaudit.core.options import CODE_PATTERN, SEVERITIES
from initaudit.core.records import Recording
from initaudit.rules import templates

NEEDS = ("values", "forward", "backward")
ENTRY_POINT_GROUP = "initaudit.rules"

# how the fixer repairs a rule's findings (see :func:`rule`)
FIX_SAFETIES = ("safe", "data", "unsafe", "none")
# why a finding gets no automatic fix, when its rule says nothing more precise
DEFAULT_WHY_NO_FIX = "the finding says what to change"


@dataclass
class Violation:
    """What a rule returns: where, what, and the call that fixes it (``None``: no fix)."""

    location: str
    message: str
    fix: Optional[str] = None
    severity: Optional[str] = None  # overrides the rule's default severity
    locations: Sequence[str] = ()  # every name involved, when more than one
    caused_by: Optional[str] = None  # "CODE location" of the finding this one is a consequence of


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
    """A registered rule and what the tools around the engine need to know about it."""

    code: str
    name: str
    severity: str
    summary: str  # a template: {option-key} placeholders, filled by describe()
    check: Callable[[RuleContext], Iterable[Violation]]
    options: Mapping[str, Any] = field(default_factory=dict)
    needs: str = "values"  # what it reads: "values" only, the "forward", or the "backward" too
    fix: str = "none"  # how the fixer repairs its findings: one of FIX_SAFETIES
    why_no_fix: str = DEFAULT_WHY_NO_FIX  # why a finding is not repaired, or how it is instead

    def describe(self, options: Optional[Mapping[str, Any]] = None) -> str:
        """The summary with its placeholders filled: the values in ``options`` (overrides by
        option key, as ``audit(options=...)`` takes them; keys of other rules are ignored),
        this rule's defaults for the rest."""
        overrides = options or {}
        values = {key: overrides.get(key, default) for key, default in self.options.items()}
        return templates.render(self.summary, values)


_RULES: Dict[str, Rule] = {}
_loaded = False


def rule(
    code: str,
    name: str,
    severity: str,
    summary: str,
    options: Optional[Mapping[str, Any]] = None,
    needs: str = "values",
    fix: Optional[str] = None,
    why_no_fix: Optional[str] = None,
) -> Callable[[Callable[[RuleContext], Iterable[Violation]]], Callable[[RuleContext], Iterable[Violation]]]:
    """Register the decorated function as rule ``code``.

    ``summary`` is one sentence; it may name the rule's options as ``{option-key}`` (or
    ``{option-key:share}`` for a fraction in words), filled by :meth:`Rule.describe` with
    the values an audit runs with.

    ``needs`` says what the rule reads: parameter ``"values"`` alone, the ``"forward"``
    (module outputs), or the ``"backward"`` (gradients); an audit that skips the forward
    (``params_only``) or the backward (``no_backward``) skips the rules that need it.

    ``fix`` says how ``--fix`` repairs the rule's findings: ``"safe"``, the finding's own
    ``fix`` line, which changes values only, is run; ``"data"``, LSUV rescales the layers on
    the example batch; ``"unsafe"``, a structural change, made only with ``--unsafe-fixes``;
    ``"none"``, no automatic fix. ``why_no_fix`` says why a finding is not repaired (for
    ``"safe"``: one that carries no fix line), or for ``"data"`` and ``"unsafe"`` what
    happens instead; it is required with an explicit ``fix="none"``, ``"data"`` or
    ``"unsafe"``. A rule that declares no ``fix`` has none, for the default reason.
    """
    if needs not in NEEDS:
        raise ValueError(f"rule {code}: needs must be one of {NEEDS}")
    if not CODE_PATTERN.match(code):
        raise ValueError(f"rule code {code!r} must be letters followed by three digits")
    if severity not in SEVERITIES:
        raise ValueError(f"rule {code}: severity must be one of {SEVERITIES}")
    fix_safety, reason = _fix_metadata(code, fix, why_no_fix)
    try:
        templates.check(summary, options or {})
    except ValueError as error:
        raise ValueError(f"rule {code}: {error}") from None

    def register(check: Callable[[RuleContext], Iterable[Violation]]) -> Callable[[RuleContext], Iterable[Violation]]:
        existing = _RULES.get(code)
        # re-importing a rule module registers the same function again; another one is a clash
        if existing is not None and existing.check.__qualname__ != check.__qualname__:
            raise ValueError(f"rule code {code} is registered twice")
        _RULES[code] = Rule(code, name, severity, summary, check, dict(options or {}), needs, fix_safety, reason)
        return check

    return register


def _fix_metadata(code: str, fix: Optional[str], why_no_fix: Optional[str]) -> Tuple[str, str]:
    """``(fix safety, why no fix)`` as declared, checked; an undeclared fix is ``"none"``."""
    if fix is None:
        return "none", why_no_fix or DEFAULT_WHY_NO_FIX
    if fix not in FIX_SAFETIES:
        raise ValueError(f"rule {code}: fix must be one of {FIX_SAFETIES}")
    if fix != "safe" and not why_no_fix:
        raise ValueError(f"rule {code}: fix={fix!r} needs why_no_fix, the reason the fixer gives (or what it does)")
    return fix, why_no_fix or DEFAULT_WHY_NO_FIX


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
