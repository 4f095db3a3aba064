"""The package's stages import one way: a stage uses the ones before it, never one after.

The pipeline is load -> stats -> record -> analysis -> rules -> report -> gate -> fixing,
conducted by ``initaudit.api`` and used by the front ends (CLI, pytest plugin, testing
helpers). ``initaudit.core`` (errors, the typed recording, model knowledge, numbers) comes
before all of them. A module may import its own stage and earlier ones; a backward import
(the recorder asking the suppression layer, a rule module imported by the profile, the fixer
calling the API) is what this test exists to catch.
"""

import ast
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
from conftest import ROOT

PACKAGE = ROOT / "initaudit"

# in pipeline order; the first entry whose prefix matches a module names its stage
STAGES: List[Tuple[str, Tuple[str, ...]]] = [
    ("core", ("initaudit.core", "initaudit._quiet_torch")),
    ("load", ("initaudit.load",)),
    ("stats", ("initaudit.stats",)),
    ("record", ("initaudit.record",)),
    ("analysis", ("initaudit.analysis",)),
    ("rules", ("initaudit.rules",)),
    ("report", ("initaudit.report",)),
    ("gate", ("initaudit.gate",)),
    ("fixing", ("initaudit.fixing",)),
    ("api", ("initaudit.api",)),
    ("front end", ("initaudit.cli", "initaudit.pytest_plugin", "initaudit.testing", "initaudit.__main__",
                   "initaudit.integrations")),
]
RANK = {name: i for i, (name, _) in enumerate(STAGES)}


def stage_of(module: str) -> Optional[str]:
    """The stage of a dotted module name; ``initaudit`` itself (its version, its lazy
    exports' names) counts as core when imported."""
    if module == "initaudit":
        return "core"
    for name, prefixes in STAGES:
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return name
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, importer: str, is_package: bool) -> List[Tuple[int, str]]:
    """``(line, module)`` of every ``initaudit`` module that ``source`` imports, at any depth
    (function-local imports and ``TYPE_CHECKING`` blocks included). ``from initaudit import x``
    names module ``initaudit.x`` where that is a module of the package."""
    found = []
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "initaudit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module.split(".")[0] != "initaudit":
                continue
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                path = ROOT.joinpath(*candidate.split("."))
                is_module = path.with_suffix(".py").exists() or (path / "__init__.py").exists()
                found.append((node.lineno, candidate if is_module else module))
    return found


def backward_imports(source: str, importer: str, is_package: bool = False) -> List[str]:
    """Each import of ``source`` that reaches a later stage than ``importer``'s own."""
    own = stage_of(importer)
    assert own is not None, f"{importer} belongs to no stage: add it to STAGES"
    problems = []
    for line, module in imported_modules(source, importer, is_package):
        target = stage_of(module)
        assert target is not None, f"{importer}:{line} imports {module}, which belongs to no stage"
        if RANK[target] > RANK[own]:
            problems.append(f"{importer}:{line} ({own}) imports {module} ({target}), a later stage")
    return problems


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_later_stage(path):
    assert backward_imports(path.read_text(), module_name(path), path.name == "__init__.py") == []


def test_every_module_belongs_to_a_stage():
    assert all(stage_of(module_name(p)) is not None for p in SOURCES)
    assert {stage_of(module_name(p)) for p in SOURCES} == set(RANK)


def test_a_backward_import_is_caught():
    """The check itself: an import from a later stage, at the top or inside a function, fails."""
    assert backward_imports("from initaudit.rules.registry import rule\n", "initaudit.stats.fans")
    assert backward_imports("def f():\n    from initaudit.api import audit\n", "initaudit.fixing.fixer")
    assert backward_imports("from ..gate import suppress\n", "initaudit.record.inspector")
    assert backward_imports("from initaudit import api\n", "initaudit.report.report")
    # the same stage, and earlier ones, are fine
    assert not backward_imports("from initaudit.record import staging\nfrom initaudit.stats import dense\n",
                                "initaudit.record.moments")
    assert not backward_imports("from initaudit import __version__\n", "initaudit.report.formats")


def test_the_recording_contract_imports_no_torch():
    """Records are plain data: the contract between the recorder and the rules (and what a
    report is made of) can be read and built without torch."""
    import subprocess
    import sys

    code = ("import sys, initaudit.core.records, initaudit.core.options, initaudit.core.numbers; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))[:3]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
