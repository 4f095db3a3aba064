"""pytest plugin (entry point ``pytest11``): the ``initaudit`` fixture, marker and option.

- ``def test_init(initaudit): initaudit.check(model, x)`` fails the test with the findings
  table; options come from ``[tool.initaudit]``, then ``@pytest.mark.initaudit(...)``, then
  the call, each overriding the one before.
- ``pytest --initaudit model.py:build [...]`` adds one test item per target.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest

MARKER = "initaudit"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("initaudit", "initialization audit")
    group.addoption(
        "--initaudit",
        dest="initaudit_targets",
        action="append",
        default=[],
        metavar="TARGET[,TARGET...]",
        help="audit TARGET (path/to/file.py:factory or pkg.mod:factory) as a test item; repeat the "
        "option or separate targets with commas (one value per option, so test paths after it stay paths)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(fail_on='warning', **options): options of the initaudit fixture for this test "
        "(select, ignore, device, seed, tied, options, per_parameter_ignores, ...)",
    )


def _settings(config: pytest.Config) -> Any:
    """``[tool.initaudit]`` of the nearest pyproject.toml above the rootdir, loaded once."""
    from initaudit.core.errors import InitauditError
    from initaudit.gate.config import load_settings

    cached = getattr(config, "_initaudit_settings", None)
    if cached is None:
        try:
            cached = load_settings(start=config.rootpath)
        except InitauditError as exc:
            raise pytest.UsageError(f"initaudit: {exc}") from exc
        config._initaudit_settings = cached  # type: ignore[attr-defined]
    return cached


class Checker:
    """What the ``initaudit`` fixture gives a test."""

    def __init__(self, defaults: Dict[str, Any]) -> None:
        self.defaults = defaults

    def check(self, model: Any, example_input: Any = None, **options: Any) -> Any:
        """Audit ``model``; fail the test with the findings table if anything is at or above
        ``fail_on``. Returns the report."""
        __tracebackhide__ = True
        from initaudit.testing import assert_init_ok

        merged = {**self.defaults, **options}
        if "options" in self.defaults and "options" in options:
            merged["options"] = {**self.defaults["options"], **options["options"]}
        return assert_init_ok(model, example_input, **merged)


@pytest.fixture
def initaudit(request: pytest.FixtureRequest) -> Checker:
    """Audit models in a test: ``initaudit.check(model, example_input=None, **options)``."""
    settings = _settings(request.config)
    defaults: Dict[str, Any] = {k: v for k, v in settings.audit_options().items() if v is not None}
    defaults["fail_on"] = settings.fail_on
    marker = request.node.get_closest_marker(MARKER)
    if marker is not None:
        if marker.args:
            raise pytest.UsageError(f"@pytest.mark.{MARKER} takes keyword arguments only")
        defaults.update(marker.kwargs)
    return Checker(defaults)


class InitauditItem(pytest.Item):
    """One ``--initaudit`` target: passes when the audit is clean at the configured level."""

    def __init__(self, *, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target

    def runtest(self) -> None:
        from initaudit.api import audit_target
        from initaudit.testing import InitAuditFailed

        settings = _settings(self.config)
        report = audit_target(self.target, settings)
        if not report.ok(settings.fail_on):
            raise InitAuditFailed(report, settings.fail_on)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Optional[str] = None) -> Any:
        from initaudit.core.errors import InitauditError
        from initaudit.testing import InitAuditFailed

        if isinstance(excinfo.value, InitAuditFailed):
            return str(excinfo.value)
        if isinstance(excinfo.value, InitauditError):
            return f"initaudit: error: {excinfo.value}"
        return super().repr_failure(excinfo)

    def reportinfo(self) -> Any:
        return self.path, None, f"initaudit {self.target}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: List[pytest.Item]) -> None:
    targets = [t.strip() for value in config.getoption("initaudit_targets") or [] for t in value.split(",")]
    for target in [t for t in targets if t]:
        name = f"initaudit[{target}]"
        items.append(InitauditItem.from_parent(session, name=name, nodeid=name, target=target))
