"""Option values that the CLI, the API and the configuration share, importable without torch.

The CLI declares its options (and answers ``--help`` and ``--version``) from these alone, so
that it imports torch only once it is about to audit.
"""

# --fail-on: the least severe finding that fails the run ("never": none does)
FAIL_LEVELS = ("error", "warning", "info", "never")

# examples in an inferred input (--batch-size)
DEFAULT_BATCH = 64
