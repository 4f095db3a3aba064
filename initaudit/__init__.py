"""initaudit: a linter for the initialization of PyTorch models."""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

# the public names, imported on first use: importing the package (as pytest does for its
# plugin in every project where initaudit is installed) must not cost a torch import
_EXPORTS = {
    "audit": ".api",
    "fix": ".api",
    "FixResult": ".fixing.fixer",
    "ForwardError": ".core.errors",
    "InitauditError": ".core.errors",
    "InputError": ".core.errors",
    "LoadError": ".core.errors",
    "Rule": ".rules.registry",
    "RuleContext": ".rules.registry",
    "Violation": ".rules.registry",
    "load_rules": ".rules.registry",
    "rule": ".rules.registry",
    "Finding": ".rules.engine",
    "Report": ".report.report",
}

if TYPE_CHECKING:
    from initaudit.api import audit, fix
    from initaudit.core.errors import ForwardError, InitauditError, InputError, LoadError
    from initaudit.fixing.fixer import FixResult
    from initaudit.report.report import Report
    from initaudit.rules.engine import Finding
    from initaudit.rules.registry import Rule, RuleContext, Violation, load_rules, rule


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'initaudit' has no attribute {name!r}")
    importlib.import_module("._quiet_torch", __name__)
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


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
