"""Settings from ``[tool.initaudit]`` in pyproject.toml, overridden by command-line flags.

```toml
[tool.initaudit]
select = ["IA"]
ignore = ["IA2"]
fail-on = "error"
device = "auto"
seed = 0
tied = [["encoder.weight", "decoder.weight"]]   # or "encoder.weight=decoder.weight"
variance-tolerance = 3.0                        # any rule option, by name
per-parameter-ignores = {"head.*" = ["IA101"]}
```

An unknown key, an unknown rule code or a value of the wrong type is an error naming the
key and the file: a misspelt setting must not be silently ignored.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from initaudit.core.errors import InitauditError
from initaudit.core.options import FAIL_LEVELS
from initaudit.rules.registry import load_rules, unknown_codes

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.9 and 3.10 only
    import tomli as tomllib

SECTION = "tool.initaudit"
KEYS = ("select", "ignore", "fail-on", "device", "seed", "tied", "per-parameter-ignores")


class ConfigError(InitauditError):
    """A configuration file or value that cannot be used (exit code 2)."""


@dataclass
class Settings:
    """Everything that decides how an audit runs and what fails it."""

    select: Optional[List[str]] = None
    ignore: List[str] = field(default_factory=list)
    fail_on: str = "warning"
    device: Optional[str] = None
    seed: int = 0
    tied: List[str] = field(default_factory=list)
    options: Dict[str, Any] = field(default_factory=dict)  # rule thresholds, by option name
    per_parameter_ignores: Dict[str, List[str]] = field(default_factory=dict)
    source: Optional[str] = None  # the file they came from

    def override(self, **values: Any) -> "Settings":
        """A copy with every value that is not ``None`` replaced (command-line flags win)."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    def audit_options(self) -> Dict[str, Any]:
        """The keyword arguments of :func:`initaudit.audit` that these settings decide."""
        return {
            "select": self.select,
            "ignore": self.ignore,
            "device": self.device,
            "seed": self.seed,
            "tied": self.tied,
            "options": self.options,
            "per_parameter_ignores": self.per_parameter_ignores,
        }


def find_pyproject(start: Optional[Path] = None) -> Optional[Path]:
    """The nearest pyproject.toml with a ``[tool.initaudit]`` table, searching upward."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
                continue  # someone else's broken file is not ours to report
            if "initaudit" in data.get("tool", {}):
                return candidate
    return None


def load_settings(path: Optional[os.PathLike] = None, start: Optional[Path] = None) -> Settings:
    """Settings from ``path`` (an explicit ``--config``), or from the nearest pyproject.toml.

    An explicit file may be a pyproject.toml (its ``[tool.initaudit]`` table) or a file
    whose top level is the table itself. No file: the defaults.
    """
    if path is None:
        found = find_pyproject(start)
        if found is None:
            return Settings()
        path = found
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML in {path}: {exc}") from exc
    table = data.get("tool", {}).get("initaudit") if path.name == "pyproject.toml" else data
    if table is None:
        raise ConfigError(f"{path} has no [{SECTION}] table")
    return settings_from_table(table, str(path))


def settings_from_table(table: Mapping[str, Any], source: str = "<config>") -> Settings:
    """Validate a ``[tool.initaudit]`` table and turn it into :class:`Settings`."""
    options = {key for rule in load_rules().values() for key in rule.options}
    where = f"[{SECTION}] in {source}"
    unknown = sorted(set(table) - set(KEYS) - options)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; "
            f"known: {', '.join(KEYS + tuple(sorted(options)))}"
        )
    settings = Settings(source=source)
    if "select" in table:
        settings.select = _codes(table["select"], "select", where)
    if "ignore" in table:
        settings.ignore = _codes(table["ignore"], "ignore", where)
    if "fail-on" in table:
        value = table["fail-on"]
        if value not in FAIL_LEVELS:
            raise ConfigError(f"'fail-on' in {where} must be one of {', '.join(FAIL_LEVELS)}, not {value!r}")
        settings.fail_on = value
    if "device" in table:
        settings.device = _typed(table["device"], str, "device", where)
    if "seed" in table:
        settings.seed = _typed(table["seed"], int, "seed", where)
    if "tied" in table:
        settings.tied = _ties(table["tied"], where)
    if "per-parameter-ignores" in table:
        settings.per_parameter_ignores = _per_parameter(table["per-parameter-ignores"], where)
    for key in options & set(table):
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' in {where} must be a number, not {value!r}")
        settings.options[key] = value
    return settings


def _typed(value: Any, kind: type, key: str, where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ConfigError(f"'{key}' in {where} must be a {kind.__name__}, not {value!r}")
    return value


def _codes(value: Any, key: str, where: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"'{key}' in {where} must be a list of rule codes, not {value!r}")
    check_codes(value, f"'{key}' in {where}")
    return list(value)


def check_codes(codes: List[str], what: str) -> None:
    """Every code or prefix matches a rule; else an error naming it."""
    bad = unknown_codes(codes)
    if bad:
        known = ", ".join(load_rules())
        raise ConfigError(f"{what}: {bad[0]!r} matches no rule code (known: {known})")


def _ties(value: Any, where: str) -> List[str]:
    if not isinstance(value, list):
        raise ConfigError(f"'tied' in {where} must be a list of name pairs, not {value!r}")
    ties = []
    for tie in value:
        if isinstance(tie, str) and "=" in tie:
            ties.append(tie)
        elif isinstance(tie, list) and len(tie) >= 2 and all(isinstance(n, str) for n in tie):
            ties.append("=".join(tie))
        else:
            raise ConfigError(f"'tied' in {where}: {tie!r} is not a pair of parameter names")
    return ties


def _per_parameter(value: Any, where: str) -> Dict[str, List[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"'per-parameter-ignores' in {where} must be a table of glob = [codes]")
    result = {}
    for pattern, codes in value.items():
        result[pattern] = _codes(codes, f"per-parameter-ignores.{pattern!r}", where)
    return result


def matches(name: str, pattern: str) -> bool:
    """Glob match of a qualified name (``head.*``, ``blocks.*.attn.*``), case-sensitive."""
    return fnmatch.fnmatchcase(name, pattern)
