"""initaudit: a linter for the initialization of PyTorch models."""

__version__ = "0.1.0"

import warnings

with warnings.catch_warnings():
    # torch warns on import when NumPy is absent; initaudit does not need NumPy, and the
    # warning would break the one-line error promise of the CLI
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401

from .api import audit
from .fixer import FixResult, fix
from .errors import ForwardError, InitauditError, InputError, LoadError
from .registry import Rule, RuleContext, Violation, load_rules, rule
from .report import Finding, Report

__all__ = [
    "audit",
    "fix",
    "FixResult",
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
