"""initaudit: a linter for the initialization of PyTorch models."""

from .api import audit
from .errors import ForwardError, InitauditError, InputError, LoadError
from .registry import Rule, RuleContext, Violation, load_rules, rule
from .report import Finding, Report

__version__ = "0.1.0"

__all__ = [
    "audit",
    "Report",
    "Finding",
    "rule",
    "Rule",
    "RuleContext",
    "Violation",
    "load_rules",
    "InitauditError",
    "LoadError",
    "InputError",
    "ForwardError",
    "__version__",
]
