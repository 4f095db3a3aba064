"""Rule summaries as templates of their options: the text says the thresholds that apply.

A summary names an option as ``{option-key}`` (option keys hold hyphens, which
``str.format`` does not take as names, hence a small pattern of its own), optionally with
a formatter: ``{dead-fraction:share}``. :func:`render` fills the placeholders with the
option values an audit runs with, so that a description never repeats a default the user
has overridden. Braces around anything else (``{a, b}``) stay as written; a placeholder
that names no option of its rule is an error when the rule registers (:func:`check`).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Mapping

# {option-key} or {option-key:formatter}; option keys are lower-case words joined by hyphens
PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?::([a-z]+))?\}")


def number(value: Any) -> str:
    """A threshold as the messages write it: ``10.0`` as ``10``, ``0.5`` as ``0.5``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def share(value: Any) -> str:
    """A fraction of a whole in words where it has a common one (``0.5``: ``half``), else a percentage."""
    fraction = float(value)
    if fraction == 0.5:
        return "half"
    return f"{fraction * 100:g}%"


FORMATTERS: Dict[str, Callable[[Any], str]] = {"number": number, "share": share}


def placeholders(template: str) -> List[str]:
    """The option keys ``template`` names, in order of appearance."""
    return [match.group(1) for match in PLACEHOLDER.finditer(template)]


def check(template: str, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` when ``template`` names an option not in ``options`` or an unknown formatter."""
    for match in PLACEHOLDER.finditer(template):
        key, formatter = match.group(1), match.group(2)
        if key not in options:
            raise ValueError(f"summary names option {{{key}}}, which the rule does not declare")
        if formatter is not None and formatter not in FORMATTERS:
            raise ValueError(f"summary formats {{{key}}} with unknown formatter {formatter!r} "
                             f"(known: {', '.join(FORMATTERS)})")


def render(template: str, values: Mapping[str, Any]) -> str:
    """``template`` with each ``{key}`` / ``{key:formatter}`` replaced by its formatted value."""

    def fill(match: "re.Match[str]") -> str:
        key, formatter = match.group(1), match.group(2) or "number"
        return FORMATTERS[formatter](values[key])

    return PLACEHOLDER.sub(fill, template)
