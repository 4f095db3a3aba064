"""Assertions for test suites: ``assert_init_ok(model)`` fails a test with the findings table."""

from __future__ import annotations

from typing import Any

from torch import nn

from initaudit.api import audit
from initaudit.report.report import Report, fails

AUDIT_OPTIONS = (
    "loss", "device", "select", "ignore", "seed", "tied", "options",
    "per_parameter_ignores", "input_shape", "batch_size",
)


class InitAuditFailed(AssertionError):
    """An audit found something at or above the fail level; the message is the table."""

    def __init__(self, report: Report, fail_on: str) -> None:
        self.report = report
        failing = [f for f in report.findings if fails(f.severity, fail_on)]
        heading = (
            f"initaudit: {len(failing)} finding(s) at or above {fail_on!r}"
            + (f" in {report.target}" if report.target else "")
        )
        super().__init__(f"{heading}\n\n{report.table(width=110)}")


def assert_init_ok(
    model: nn.Module,
    example_input: Any = None,
    *,
    fail_on: str = "warning",
    **options: Any,
) -> Report:
    """Audit ``model`` and raise :class:`AssertionError` (with the table) if it fails.

    ``options`` are those of :func:`initaudit.audit` (``select``, ``ignore``, ``device``,
    ``seed``, ``tied``, ``options``, ``per_parameter_ignores``, ``loss``, ...). Returns the
    report when nothing is at or above ``fail_on``.
    """
    __tracebackhide__ = True
    unknown = sorted(set(options) - set(AUDIT_OPTIONS))
    if unknown:
        raise TypeError(f"assert_init_ok() got unknown option(s) {unknown}; known: fail_on, {', '.join(AUDIT_OPTIONS)}")
    report = audit(model, example_input, **options)
    if not report.ok(fail_on):
        raise InitAuditFailed(report, fail_on)
    return report
