"""Levels, codes and option values that the CLI, the API and the configuration share, importable without torch.

The CLI declares its options (and answers ``--help`` and ``--version``) from these alone, so
that it imports torch only once it is about to audit.
"""

import re

# a finding's severity, least severe first
SEVERITIES = ("info", "warning", "error")
SEVERITY_RANK = {s: i for i, s in enumerate(SEVERITIES)}

# a rule code: letters, then three digits (IA101); also what ``__initaudit_ignore__`` keys are
CODE_PATTERN = re.compile(r"^[A-Z]+[0-9]{3}$")

# --fail-on: the least severe finding that fails the run ("never": none does)
FAIL_LEVELS = ("error", "warning", "info", "never")

# examples in an inferred input (--batch-size)
DEFAULT_BATCH = 64
