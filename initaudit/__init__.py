"""initaudit: a linter for the initialization of PyTorch models."""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING, Any

# the public names, imported on first use: importing the package (as pytest does for its
# plugin in every project where initaudit is installed) must not cost a torch import
_EXPORTS = {
    "audit": ".api",
    "fix": ".fixer",
    "FixResult": ".fixer",
    "ForwardError": ".errors",
    "InitauditError": ".errors",
    "InputError": ".errors",
    "LoadError": ".errors",
    "Rule": ".registry",
    "RuleContext": ".registry",
    "Violation": ".registry",
    "load_rules": ".registry",
    "rule": ".registry",
    "Finding": ".report",
    "Report": ".report",
}

if TYPE_CHECKING:
    from .api import audit
    from .errors import ForwardError, InitauditError, InputError, LoadError
    from .fixer import FixResult, fix
    from .registry import Rule, RuleContext, Violation, load_rules, rule
    from .report import Finding, Report


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
