"""Stage 7, the gate: settings from ``pyproject.toml``, suppressions declared in source or
configuration, and the baseline of accepted findings.
"""
