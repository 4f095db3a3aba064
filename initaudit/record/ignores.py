"""``__initaudit_ignore__``: the rule codes a module's class declares deliberate, read and
validated as the model is recorded (:mod:`initaudit.gate.suppress` applies them).
"""

from __future__ import annotations

from typing import Dict, Mapping

from torch import nn

from initaudit.core.errors import InitauditError
from initaudit.core.options import CODE_PATTERN

ATTRIBUTE = "__initaudit_ignore__"


class SuppressionError(InitauditError):
    """A malformed ``__initaudit_ignore__`` declaration."""


def declared_ignores(module: nn.Module) -> Dict[str, str]:
    """The validated ``__initaudit_ignore__`` of a module's class (``{}`` when none)."""
    declared = getattr(type(module), ATTRIBUTE, None)
    if declared is None:
        return {}
    owner = type(module).__qualname__
    if not isinstance(declared, Mapping):
        raise SuppressionError(
            f"{owner}.{ATTRIBUTE} must be a dict of rule code -> reason, not {type(declared).__name__}"
        )
    for code, reason in declared.items():
        if not isinstance(code, str) or not CODE_PATTERN.match(code):
            raise SuppressionError(f"{owner}.{ATTRIBUTE}: {code!r} is not a rule code such as 'IA101'")
        if not isinstance(reason, str) or not reason.strip():
            raise SuppressionError(
                f"{owner}.{ATTRIBUTE}[{code!r}] has no reason: say why the choice is deliberate"
            )
    return dict(declared)
