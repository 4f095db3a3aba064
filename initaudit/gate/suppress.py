"""Suppression: deliberate choices declared in the model's source or in the configuration.

- In source: a class attribute ``__initaudit_ignore__ = {"IA601": "zero-init residual,
  Goyal et al. 2017"}`` on an ``nn.Module`` subclass suppresses those codes for the
  parameters of every module of that class (its submodules' included). A reason is
  required.
- In configuration: ``per-parameter-ignores = {"head.*" = ["IA101"]}``, a glob on
  qualified names.

A finding is suppressed when its location, or any name it lists, is covered. Suppressed
findings are not lost: the report counts them and lists them on request.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

from initaudit.core.records import Recording
from initaudit.gate.config import matches
from initaudit.record.ignores import ATTRIBUTE
from initaudit.rules.engine import Finding


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def _code_matches(code: str, selectors: Sequence[str]) -> bool:
    return any(code.startswith(s.strip().upper()) for s in selectors)


def reason_for(
    finding: Finding,
    recording: Recording,
    per_parameter_ignores: Mapping[str, Sequence[str]],
) -> Optional[str]:
    """Why ``finding`` is suppressed, or ``None`` when it is not."""
    names = [finding.location, *finding.locations]
    for module in recording.modules:
        reason = module.ignore.get(finding.code)
        if reason and any(_under(n, prefix) for n in names for prefix in module.names):
            return f"{module.type}.{ATTRIBUTE}: {reason}"
    for pattern, codes in per_parameter_ignores.items():
        if _code_matches(finding.code, codes) and any(matches(n, pattern) for n in names):
            return f"per-parameter-ignores {pattern!r}"
    return None


def split(
    findings: List[Finding],
    recording: Recording,
    per_parameter_ignores: Optional[Mapping[str, Sequence[str]]] = None,
) -> Tuple[List[Finding], List[Finding]]:
    """``(kept, suppressed)``; each suppressed finding says why in ``suppressed_by``."""
    kept, suppressed = [], []
    for f in findings:
        reason = reason_for(f, recording, per_parameter_ignores or {})
        if reason is None:
            kept.append(f)
        else:
            f.suppressed_by = reason
            suppressed.append(f)
    return kept, suppressed
