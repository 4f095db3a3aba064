"""Imports torch without the warning it gives when NumPy is absent.

initaudit does not need NumPy, and that warning would break the CLI's promise of one line
on stderr. Imported first by the entry points that run models (the CLI, and the package's
API on first use); the pytest plugin does not import it until a test audits something, so
that a project with initaudit installed does not pay for torch on every pytest run.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch  # noqa: F401
